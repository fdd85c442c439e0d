"""The launcher's GPU path for sm_90 without a GPU: ``ribkernels.dcs.triton.launch`` (autotuned, as on
the H200) driven against a stand-in Triton driver that reports an sm_90 device. Every launch binds
its arguments, specialises, runs the autotuner over the shipped configs and compiles for sm_90 with
the installed Triton; the launch itself is recorded (grid, warps, stages, shared bytes), not run.

What ``benchmarks.sm90_static`` does not cover: the launcher's own calls (argument lists, keyword
meta-parameters, grids, ``do_not_specialize``, ``triton.autotune`` with ``reset_to_zero``) under the
Triton at hand — e.g. the GPU machine's triton 3.6 on a CPU machine before a lent GPU runs
``gpu_check.sh``. It leans on Triton's driver interface (``driver.set_active``, ``launcher_cls``,
``utils.load_binary``), checked with triton 3.6.0 and 3.8.0. Nothing is measured.

    python -m benchmarks.launch_dryrun_sm90      # ~1 min on 2 cores; exit 1 on any failure

Shapes: B=2, H=3, N=53 (not a multiple of 16), D in {32, 64, 128}, fp16 and bf16; per shape the
pre-pass (Philox, q⊙M, k⊙M or k⊙M alone; and with dθ's saved factor), the forward (on q⊙M, or on raw
q with the mask multiplied in), the backward (one program
per head) with a per-token and a per-channel θ, dθ's factor regenerated or saved, and mask-off, and
the flat noise kernel. CPU tensors stand in for device memory.
"""
import os
import sys
import time
import traceback

H200_SHARED_BYTES = 232448  # max dynamic shared memory per block on sm_90 (227 KB)


def _fake_driver(launches):
    import torch
    from triton.backends.compiler import GPUTarget

    class Utils:
        def get_device_properties(self, device):
            return {"max_shared_mem": H200_SHARED_BYTES, "multiprocessor_count": 132, "max_num_regs": 65536,
                    "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 3201000, "mem_bus_width": 6144}

        def load_binary(self, name, kernel, shared, device):
            return None, name, 0, 0, 1024  # module, function, registers, spills, max threads per block

    class Sm90Driver:
        """The driver calls Triton's JIT, compiler and autotuner make, for one sm_90 device."""
        utils = Utils()

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def set_current_device(self, device):
            pass

        def get_benchmarker(self):
            def bench(fn, quantiles=None, **_):
                fn()  # the autotuner's trial: compiles and records the config's launch
                return [1.0, 1.0, 1.0] if quantiles else 1.0
            return bench

        def get_empty_cache_for_benchmark(self):
            return torch.empty(16, dtype=torch.int8)

        def clear_cache(self, cache):
            cache.zero_()

        def get_device_interface(self):
            return torch.cuda

        def get_active_torch_device(self):
            return torch.device("cpu")

        def launcher_cls(self, src, metadata):
            fn = src.fn

            def launch(g0, g1, g2, stream, function, packed_metadata, launch_metadata, enter, exit_, *args):
                if len(args) != len(fn.params):
                    raise TypeError(f"{fn.__name__}: launched with {len(args)} arguments, "
                                    f"the kernel has {len(fn.params)}")
                launches.append(dict(kernel=fn.__name__, grid=(g0, g1, g2), num_warps=metadata.num_warps,
                                     num_stages=metadata.num_stages, shared=metadata.shared))
            return launch

    return Sm90Driver()


def run() -> list:
    """Every launch the DCS-Attention kernels make at the shapes above, as dicts."""
    os.environ.pop("TRITON_INTERPRET", None)  # compile for real (before ribkernels defines its kernels)
    os.environ.pop("RIBKERNELS_DCS_AUTOTUNE", None)
    import torch
    from triton.runtime import driver

    launches = []
    driver.set_active(_fake_driver(launches))
    from ribkernels.dcs.triton import launch
    from ribkernels.dcs.triton import noise as NZ

    if not launch.autotune_enabled():
        raise RuntimeError("launch.autotune_enabled() is False: the autotuned GPU path would not run")
    B, H, N = 2, 3, 53
    for dtype in (torch.float16, torch.bfloat16):
        for D in (32, 64, 128):
            q, k, v, theta = (torch.randn(B, H, N, D, dtype=dtype) for _ in range(4))
            theta_channel = torch.randn(1, H, 1, D, dtype=dtype)
            rng = launch.rng_state(5, 0, "cpu")
            scale = D ** -0.5
            mask, qm, km = launch.masked_qk_prepass(q, k, theta, None, rng, NZ.MODE_PHILOX)
            out, lse = launch.forward(qm, km, v, scale=scale)
            # the pre-pass without q⊙M, the forward multiplying the mask into raw q
            mask_k, _, km_only = launch.masked_qk_prepass(q, k, theta, None, rng, NZ.MODE_PHILOX, mask_q=False)
            launch.forward(q, km_only, v, scale=scale, q_mask=mask_k)
            for th in (theta, theta_channel):
                launch.backward(out, q, k, v, mask, out, lse, th, None, rng, scale=scale, tau=1.0,
                                mode=NZ.MODE_PHILOX, need_dmask_logits=True)
                # the public op's path when θ needs a gradient: the pre-pass saves dθ's factor
                mask2, qm2, km2, dsoft = launch.masked_qk_prepass(q, k, th, None, rng, NZ.MODE_PHILOX, tau=0.7)
                launch.masked_qk_prepass(q, k, th, None, rng, NZ.MODE_PHILOX, tau=0.7, mask_q=False)
                launch.backward(out, q, k, v, mask2, out, lse, th, None, rng, scale=scale, tau=0.7,
                                mode=NZ.MODE_PHILOX, need_dmask_logits=True, dsoft=dsoft)
            launch.backward(out, q, k, v, None, out, lse, q, None, None, scale=scale, tau=1.0, mode=0,
                            need_dmask_logits=False, masked=False)
            launch.flat_noise(1000, rng, "cpu")
    return launches


def main() -> int:
    import torch
    import triton

    t0 = time.time()
    try:
        launches = run()
    except Exception:
        traceback.print_exc()
        print(f"launch_dryrun_sm90: FAILED (triton {triton.__version__}, torch {torch.__version__})")
        return 1
    configs = sorted({(r["kernel"], r["num_warps"], r["num_stages"]) for r in launches})
    over = [r for r in launches if r["shared"] > H200_SHARED_BYTES]
    for kernel, w, s in configs:
        print(f"  {kernel}: num_warps={w} num_stages={s}")
    print(f"launch_dryrun_sm90: {len(launches)} launches of {len({r['kernel'] for r in launches})} kernels bound "
          f"and compiled for sm_90 in {time.time() - t0:.0f} s; max shared memory "
          f"{max(r['shared'] for r in launches)} B (limit {H200_SHARED_BYTES}); "
          f"triton {triton.__version__}, torch {torch.__version__}")
    return 1 if over or not launches else 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
