"""DCS-Attention benchmark (docs/performance.md): forward, backward and forward+backward, median ms, TFLOP/s, GB/s.

Every provider makes its own noise inside the timed region (training mode, θ per token ``[B, H, N, D]``
in the input dtype, no seed given):

* ``triton``          ``dcs_attention(impl="triton")``: device-tensor seed drawn, mask pre-pass, forward,
                      the one-launch backward (one program per head, deterministic).
* ``compile_sdpa``    ``torch.compile`` of ``dcs_attention(impl="sdpa")`` (torch.rand noise + mask + SDPA):
                      the strongest composite a user can write.
* ``sdpa``            the same composite, eager.
* ``eager``           ``dcs_attention(impl="eager")``: materialised scores, TransReID style.
* ``triton_nomask``   the Triton kernels with the mask compiled out (what the mask costs on top).
* ``sdpa_nomask``     ``scaled_dot_product_attention(q, k, v)``: plain attention, the floor.

FLOPs: forward ``4·B·H·N²·D`` (QKᵀ and PV), backward 2.5× that (flash-attention's convention), the
same count for every provider. Bytes: the unavoidable traffic, forward q, k, v, θ read + out written
(5·BHND elements), backward q, k, v, θ, out, dout read + dq, dk, dv, dθ written (10·BHND).

    python -m benchmarks.bench_dcs_attention [--quick] [--json PATH] [--md PATH]
    python -m benchmarks.bench_dcs_attention --warmup --dtypes bf16      # compile only (gpu_check.sh)
    python -m benchmarks.bench_dcs_attention --cpu                       # tiny shapes, interpreter
"""
import argparse
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``ribkernels`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROVIDERS = ("triton", "compile_sdpa", "sdpa", "eager", "triton_nomask", "sdpa_nomask")
# Environment each provider runs under (set for its whole section: forward, backward, warm-up).
PROVIDER_ENV: Dict[str, Dict[str, str]] = {}
PASSES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The GPU targets (fwd+bwd; docs/performance.md): ratio of a provider's time to triton's, and its bound.
TARGETS = {"sdpa_nomask": ("triton / sdpa_nomask", "<=", 1.2), "eager": ("eager / triton", ">=", 3.0),
           "compile_sdpa": ("compile_sdpa / triton", ">=", 1.3)}


def _flops(B, H, N, D, pss: str) -> float:
    fwd = 4.0 * B * H * N * N * D
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[pss]


def _bytes(B, H, N, D, elt: int, pss: str) -> float:
    n = B * H * N * D * elt
    return {"fwd": 5 * n, "bwd": 10 * n, "fwd+bwd": 15 * n}[pss]


_COMPILED: Dict[str, Callable] = {}


def make_fn(provider: str, q, k, v, theta) -> Callable[[], torch.Tensor]:
    import torch.nn.functional as F

    import ribkernels as rk

    if provider == "triton":
        return lambda: rk.dcs_attention(q, k, v, theta, impl="triton", check_nan=False)
    if provider in ("sdpa", "eager"):
        return lambda: rk.dcs_attention(q, k, v, theta, impl=provider, check_nan=False)
    if provider == "compile_sdpa":
        if "fn" not in _COMPILED:  # one compiled function; N is marked dynamic (one graph for all N)
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False  # the "bwd" pass replays backward (retain_graph)
            _COMPILED["fn"] = torch.compile(
                lambda q, k, v, t: rk.dcs_attention(q, k, v, t, impl="sdpa", check_nan=False), dynamic=True)
        fn = _COMPILED["fn"]
        return lambda: fn(q, k, v, theta)
    if provider == "triton_nomask":
        from ribkernels.dcs.triton.backend import attention_unmasked

        return lambda: attention_unmasked(q, k, v)
    if provider == "sdpa_nomask":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")


def bench_shape(B: int, H: int, N: int, D: int, dtype: torch.dtype, device: str,
                providers: Sequence[str] = PROVIDERS, reps: int = 100, warmup_only: bool = False) -> List[Dict]:
    """Rows (one per provider and pass) for one shape and dtype."""
    from benchmarks.common import median_ms, peak_memory_mb

    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, theta, grad_out = (torch.randn(B, H, N, D, generator=gen).to(device=device, dtype=dtype)
                                for _ in range(5))
    leaves = [q, k, v, theta]
    for t in leaves:
        t.requires_grad_(True)
    rows = []
    shape = f"{B}x{H}x{N}x{D}"
    for provider in providers:
        base = {"name": "dcs_attention", "provider": provider, "dtype": str(dtype)[6:], "shape": shape}
        saved_env = {key: os.environ.get(key) for key in PROVIDER_ENV.get(provider, {})}
        os.environ.update(PROVIDER_ENV.get(provider, {}))
        try:
            fn = make_fn(provider, q, k, v, theta)

            def zero_grads():
                for t in leaves:
                    t.grad = None

            out = fn()
            out.backward(grad_out, retain_graph=True)  # compiles / autotunes every pass before timing
            if warmup_only:
                rows.append({**base, "pass": "warmup", "ms": float("nan")})
                continue
            timed: Dict[str, Callable[[], object]] = {
                "fwd": fn,
                "bwd": lambda: (zero_grads(), out.backward(grad_out, retain_graph=True)),
                "fwd+bwd": lambda: (zero_grads(), fn().backward(grad_out)),
            }
            for pss in PASSES:
                ms = median_ms(timed[pss], device, reps=reps)
                row = {**base, "pass": pss, "ms": ms,
                       "TFLOPs": _flops(B, H, N, D, pss) / (ms * 1e-3) / 1e12,
                       "GBps": _bytes(B, H, N, D, q.element_size(), pss) / (ms * 1e-3) / 1e9}
                if pss == "fwd+bwd":
                    row["peak_mem_MB"] = peak_memory_mb(timed[pss], device)
                rows.append(row)
            del out
        except Exception as exc:  # one provider failing must not hide the others
            rows.append({**base, "pass": "all", "ms": float("nan"), "note": f"{type(exc).__name__}: {exc}"[:300]})
        finally:
            for key, val in saved_env.items():
                if val is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = val
    return rows


def shapes(device: str, quick: bool, dtypes: Sequence[str] = ("bf16", "fp16"),
           ns: Sequence[int] = (53, 129, 211)) -> List[Tuple[int, int, int, int, torch.dtype]]:
    if device == "cpu":  # the interpreter (triton) or PyTorch on CPU: tiny
        return [(1, 2, 53, 32, torch.float32)]
    out = [(64, 12, n, 64, DTYPES[dt]) for dt in dtypes for n in ns]
    if not quick:
        out += [(8, 12, 1024, 64, torch.bfloat16), (8, 12, 1024, 128, torch.bfloat16)]
    return out


def ratio_rows(rows: List[Dict]) -> List[Dict]:
    """fwd+bwd ratios against the targets, one row per (dtype, shape)."""
    ms = {(r["dtype"], r["shape"], r["provider"]): r["ms"] for r in rows if r.get("pass") == "fwd+bwd"}
    out = []
    for dtype, shape in sorted({(d, s) for d, s, _ in ms}):
        nan = float("nan")
        t = ms.get((dtype, shape, "triton"), nan)
        row = {"dtype": dtype, "shape": shape, "triton_ms": t}
        for prov, (label, op, bound) in TARGETS.items():
            other = ms.get((dtype, shape, prov), nan)
            if not (t == t and other == other):  # NaN: not measured
                row[label] = nan
                continue
            val = t / other if prov == "sdpa_nomask" else other / t
            row[label] = val
            row[label + " ok"] = (val <= bound) if op == "<=" else (val >= bound)
        row["mask cost (triton / triton_nomask)"] = t / ms.get((dtype, shape, "triton_nomask"), nan)
        # our attention core against PyTorch's at equal work (no mask on either side): the
        # "equal core efficiency" the performance model (docs/performance.md) assumes
        row["core (triton_nomask / sdpa_nomask)"] = (ms.get((dtype, shape, "triton_nomask"), nan)
                                                     / ms.get((dtype, shape, "sdpa_nomask"), nan))
        out.append(row)
    return out


def run(device: str, quick: bool, providers: Optional[Sequence[str]] = None) -> List[Dict]:
    """Entry point of ``benchmarks.run``. On CPU the triton providers only run under
    ``TRITON_INTERPRET=1`` (their timings then measure the interpreter, not the kernels)."""
    providers = list(providers or PROVIDERS)
    reps = 100 if device == "cuda" else (3 if quick else 5)
    rows: List[Dict] = []
    for B, H, N, D, dtype in shapes(device, quick):
        rows += bench_shape(B, H, N, D, dtype, device, providers, reps=reps)
    return rows


def profile_kernels(B: int, H: int, N: int, D: int, dtype: torch.dtype, providers: Sequence[str],
                    reps: int = 20) -> List[Dict]:
    """Per-kernel GPU time of one fwd+bwd step (torch profiler, ``reps`` steps after a warm-up): one
    row per (provider, kernel) with its launches per step and µs per step."""
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, theta, grad_out = (torch.randn(B, H, N, D, generator=gen).to(device="cuda", dtype=dtype)
                                for _ in range(5))
    for t in (q, k, v, theta):
        t.requires_grad_(True)
    rows = []
    for provider in providers:
        fn = make_fn(provider, q, k, v, theta)
        for _ in range(3):
            fn().backward(grad_out)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn().backward(grad_out)
            torch.cuda.synchronize()
        for ev in prof.key_averages():
            us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if us <= 0 or ev.count < reps:  # host-side ranges and one-off events
                continue
            rows.append({"provider": provider, "dtype": str(dtype)[6:], "shape": f"{B}x{H}x{N}x{D}",
                         "kernel": ev.key[:60], "launches_per_step": ev.count / reps, "us_per_step": us / reps})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on CPU, Triton under the interpreter")
    ap.add_argument("--quick", action="store_true", help="TransReID shapes only")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--ns", default="53,129,211")
    ap.add_argument("--warmup", action="store_true", help="compile/autotune every pass, time nothing")
    ap.add_argument("--profile", action="store_true",
                    help="per-kernel GPU time of one fwd+bwd step (torch profiler) at 64x12x211x64, no timing table")
    ap.add_argument("--json", help="write the rows (and the ratio rows) here")
    ap.add_argument("--md", help="write the Markdown tables here")
    args = ap.parse_args(argv)
    if args.cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before ribkernels defines its kernels
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print("bench_dcs_attention: needs a CUDA device (or --cpu for tiny shapes under the Triton "
              "interpreter); nothing measured.")
        return 0
    from benchmarks.common import environment, markdown_table

    env = environment(device)
    print(" · ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    providers = [p for p in args.providers.split(",") if p]
    dts = [d for d in args.dtypes.split(",") if d]
    ns = [int(n) for n in args.ns.split(",") if n]
    if args.profile:
        if device != "cuda":
            print("bench_dcs_attention --profile: needs a CUDA device; nothing measured.")
            return 0
        prof_rows = []
        for dt in dts:
            prof_rows += profile_kernels(64, 12, 211, 64, DTYPES[dt], providers)
        table = markdown_table(prof_rows)
        print(table)
        if args.md:
            with open(args.md, "w") as f:
                f.write(f"# Per-kernel GPU time per fwd+bwd step (torch profiler)\n\n{table}\n")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"environment": env, "kernels": prof_rows}, f, indent=1, default=str)
        return 0
    rows: List[Dict] = []
    t0 = time.time()
    for B, H, N, D, dtype in shapes(device, args.quick or args.cpu, dts, ns):
        rows += bench_shape(B, H, N, D, dtype, device, providers, reps=100 if device == "cuda" else 3,
                            warmup_only=args.warmup)
        print(f"[bench_dcs_attention] {B}x{H}x{N}x{D} {dtype} done at {time.time() - t0:.0f}s", flush=True)
    if args.warmup:
        failed = [r for r in rows if r.get("note")]
        for r in failed:
            print(f"warm-up failed: {r['provider']} {r['dtype']} {r['shape']}: {r['note']}")
        return 1 if failed else 0
    table = markdown_table(rows, ["provider", "pass", "dtype", "shape", "ms", "TFLOPs", "GBps", "peak_mem_MB",
                                  "note"])
    ratios = ratio_rows(rows)
    ratio_table = markdown_table(ratios)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows, "ratios": ratios}, f, indent=1, default=str)
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"# DCS-Attention, {env.get('device')}\n\n{' · '.join(f'{k} {v}' for k, v in env.items())}\n\n"
                    f"{table}\n\n## fwd+bwd ratios against the targets of docs/performance.md\n\n{ratio_table}\n")
    print(table)
    print("\nfwd+bwd ratios (targets: triton ≤ 1.2× sdpa_nomask, eager ≥ 3× triton, "
          "compile_sdpa ≥ 1.3× triton)")
    print(ratio_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
