"""DCS-Attention benchmark (SPEC §6): forward, backward and forward+backward, median ms, TFLOP/s, GB/s.

Providers (θ per token ``[B, H, N, D]`` in the input dtype, training mode):
* ``triton``       ``dcs_attention(impl="triton", seed=...)``: fused kernels, noise made in-kernel.
* ``sdpa``         ``dcs_attention(impl="sdpa", noise=...)``: mask in PyTorch, SDPA on pre-masked q/k
                   (noise precomputed, so its generation is not timed: the strongest baseline).
* ``eager``        ``dcs_attention(impl="eager", noise=...)``: materialised scores (TransReID style).
* ``sdpa_nomask``  ``scaled_dot_product_attention(q, k, v)``: plain attention, the floor.

FLOPs: forward ``4·B·H·N²·D`` (QKᵀ and PV), backward 2.5× that (flash-attention's convention,
recomputing S), the same count for every provider. Bytes: the unavoidable traffic, forward
q, k, v, θ read + out written (5·BHND elements), backward q, k, v, θ, out, dout read + dq, dk, dv,
dθ written (10·BHND).

    python benchmarks/bench_dcs_attention.py            # CUDA: TransReID shapes, bf16 and fp16
    python benchmarks/bench_dcs_attention.py --cpu      # tiny shapes through the Triton interpreter
    python -m benchmarks.run --sections dcs_attention   # as a section of the full report
"""
import argparse
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``ribkernels`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROVIDERS = ("triton", "sdpa", "eager", "sdpa_nomask")
PASSES = ("fwd", "bwd", "fwd+bwd")


def _flops(B, H, N, D, pss: str) -> float:
    fwd = 4.0 * B * H * N * N * D
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[pss]


def _bytes(B, H, N, D, elt: int, pss: str) -> float:
    n = B * H * N * D * elt
    return {"fwd": 5 * n, "bwd": 10 * n, "fwd+bwd": 15 * n}[pss]


def _make_fn(provider: str, q, k, v, theta, noise, seed: int) -> Callable[[], torch.Tensor]:
    import torch.nn.functional as F

    import ribkernels as rk

    if provider == "triton":
        return lambda: rk.dcs_attention(q, k, v, theta, seed=seed, impl="triton", check_nan=False)
    if provider in ("sdpa", "eager"):
        return lambda: rk.dcs_attention(q, k, v, theta, noise=noise, impl=provider, check_nan=False)
    if provider == "sdpa_nomask":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    raise ValueError(f"unknown provider {provider!r}")


def bench_shape(B: int, H: int, N: int, D: int, dtype: torch.dtype, device: str,
                providers: Sequence[str] = PROVIDERS, reps: int = 100) -> List[Dict]:
    """Rows (one per provider and pass) for one shape and dtype."""
    from benchmarks.common import median_ms, peak_memory_mb

    import ribkernels as rk

    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, theta, grad_out = (torch.randn(B, H, N, D, generator=gen).to(device=device, dtype=dtype)
                                for _ in range(5))
    noise = rk.logistic_noise((B, H, N, D), 1234, device=device)
    leaves = [q, k, v, theta]
    for t in leaves:
        t.requires_grad_(True)
    rows = []
    shape = f"{B}x{H}x{N}x{D}"
    for provider in providers:
        fn = _make_fn(provider, q, k, v, theta, noise, seed=1234)
        reasons = rk.available_backends(q, k, v, theta, noise).get(provider, [])
        if reasons:
            rows.append({"name": "dcs_attention", "provider": provider, "pass": "all", "dtype": str(dtype)[6:],
                         "shape": shape, "ms": float("nan"), "note": "; ".join(reasons)})
            continue

        def zero_grads():
            for t in leaves:
                t.grad = None

        out = fn()
        timed: Dict[str, Callable[[], object]] = {
            "fwd": fn,
            "bwd": lambda: (zero_grads(), out.backward(grad_out, retain_graph=True)),
            "fwd+bwd": lambda: (zero_grads(), fn().backward(grad_out)),
        }
        for pss in PASSES:
            ms = median_ms(timed[pss], device, reps=reps)
            row = {"name": "dcs_attention", "provider": provider, "pass": pss, "dtype": str(dtype)[6:],
                   "shape": shape, "ms": ms,
                   "TFLOPs": _flops(B, H, N, D, pss) / (ms * 1e-3) / 1e12,
                   "GBps": _bytes(B, H, N, D, q.element_size(), pss) / (ms * 1e-3) / 1e9}
            if pss == "fwd+bwd":
                row["peak_mem_MB"] = peak_memory_mb(timed[pss], device)
            rows.append(row)
        del out
    return rows


def _shapes(device: str, quick: bool) -> List[Tuple[int, int, int, int, torch.dtype]]:
    if device == "cpu":  # the interpreter (triton) or PyTorch on CPU: tiny
        return [(1, 2, 53, 32, torch.float32)]
    if quick:
        return [(64, 12, 211, 64, torch.bfloat16), (64, 12, 129, 64, torch.bfloat16),
                (64, 12, 211, 64, torch.float16)]
    shapes = [(64, 12, n, 64, dt) for dt in (torch.bfloat16, torch.float16) for n in (53, 129, 211, 311)]
    shapes += [(8, 12, 1024, 64, torch.bfloat16), (2, 12, 4096, 64, torch.bfloat16),
               (8, 12, 1024, 128, torch.bfloat16)]
    return shapes


def run(device: str, quick: bool, providers: Optional[Sequence[str]] = None) -> List[Dict]:
    """Entry point of ``benchmarks.run``. On CPU the triton provider only runs under
    ``TRITON_INTERPRET=1`` (its timings then measure the interpreter, not the kernels)."""
    providers = list(providers or PROVIDERS)
    reps = 100 if device == "cuda" else (3 if quick else 5)
    rows: List[Dict] = []
    for B, H, N, D, dtype in _shapes(device, quick):
        rows += bench_shape(B, H, N, D, dtype, device, providers, reps=reps)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on CPU, Triton under the interpreter")
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
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
    print(" · ".join(f"{k} {v}" for k, v in env.items()))
    rows = run(device, args.quick or args.cpu, [p for p in args.providers.split(",") if p])
    print(markdown_table(rows, ["provider", "pass", "dtype", "shape", "ms", "TFLOPs", "GBps", "peak_mem_MB", "note"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
