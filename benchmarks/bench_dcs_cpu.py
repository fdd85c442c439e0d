"""CPU benchmark of the PyTorch DCS-Attention backends (against the CPU target in docs/performance.md), fwd+bwd median ms.

Providers, all on the same inputs (θ per token ``[B, H, N, D]`` with grad, training mode; every
provider's noise is made inside the timed region):
* ``sdpa`` / ``eager`` with ``seed=None`` and with an explicit seed (``..._seed``);
* ``sdpa_nomask``: ``scaled_dot_product_attention(q, k, v)``, plain attention, the floor.

The providers are timed interleaved (round-robin, one call each per round) so a shared, loaded
machine slows them alike; each figure is the median over the rounds. Ratios are printed last.

    PYTHONPATH=$PWD python benchmarks/bench_dcs_cpu.py               # B=8 H=12 N=211 D=64 fp32
    PYTHONPATH=$PWD python benchmarks/bench_dcs_cpu.py --rounds 30 --threads 2
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``ribkernels`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ribkernels as rk  # noqa: E402
from benchmarks.common import markdown_table  # noqa: E402


def make_step(provider: str, q, k, v, theta, grad_out) -> Callable[[], None]:
    """One fwd+bwd of ``provider`` (gradients accumulate into the leaves; that costs every provider alike)."""
    if provider == "sdpa_nomask":
        return lambda: F.scaled_dot_product_attention(q, k, v).backward(grad_out)
    impl, _, seeded = provider.partition("_")
    seed = 1234 if seeded else None
    return lambda: rk.dcs_attention(q, k, v, theta, impl=impl, seed=seed).backward(grad_out)


def run(B: int, H: int, N: int, D: int, rounds: int, warmup: int, providers: List[str]) -> Dict[str, float]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, requires_grad=True) for _ in range(3))
    theta = torch.randn(B, H, N, D, requires_grad=True)
    grad_out = torch.randn(B, H, N, D)
    steps = {p: make_step(p, q, k, v, theta, grad_out) for p in providers}
    times: Dict[str, List[float]] = {p: [] for p in providers}
    for r in range(warmup + rounds):
        for p in providers:
            t0 = time.perf_counter()
            steps[p]()
            if r >= warmup:
                times[p].append((time.perf_counter() - t0) * 1e3)
            for t in (q, k, v, theta):
                t.grad = None
    return {p: statistics.median(ts) for p, ts in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=4, default=[8, 12, 211, 64], metavar=("B", "H", "N", "D"))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ribkernels.dcs.cpu_prepass import cpu_prepass_available

    providers = ["sdpa_nomask", "sdpa", "sdpa_seed", "eager", "eager_seed"]
    med = run(*args.shape, rounds=args.rounds, warmup=args.warmup, providers=providers)
    B, H, N, D = args.shape
    print(f"# DCS-Attention CPU fwd+bwd, B={B} H={H} N={N} D={D} fp32, θ per token with grad; "
          f"{args.rounds} interleaved rounds, median ms; torch threads {torch.get_num_threads()}, "
          f"C++ pre-pass: {cpu_prepass_available()}")
    print(markdown_table([{"provider": p, "fwd+bwd ms": round(med[p], 2),
                           "vs sdpa_nomask": round(med[p] / med["sdpa_nomask"], 2)} for p in providers]))
    for tag in ("", "_seed"):
        print(f"sdpa{tag}: {med['eager' + tag] / med['sdpa' + tag]:.2f}x faster than eager{tag} (target >= 1.3), "
              f"{med['sdpa' + tag] / med['sdpa_nomask']:.2f}x plain SDPA's time (target <= 1.4)")


if __name__ == "__main__":
    main()
