"""``dcs_attention(impl="auto")`` against every backend it chooses from, on the same inputs.

For each N and mode (``train``: fwd+bwd, θ per token with grad, seed=None as DCSAttention calls it;
``eval``: forward under no_grad), the first ``auto`` call measures (its cost is printed: it is paid
once per key and then read from the cache file); then ``auto`` and every explicit backend are timed
interleaved (one call each per round in a shuffled order, so a shared machine slows them alike),
medians over the rounds.
The verdict: ``auto`` / the fastest explicit backend (the smallest median) <= 1.10, as the median over
the rounds of the two calls' time ratio (each round times both, close together, under the same load;
the ratio of the two medians is printed too). On CUDA the explicit
providers are the Triton backend(s), sdpa (PyTorch's own kernel pick), sdpa with each SDPA kernel
forced, and eager; the per-backend timings ``auto`` chose from are printed per row.

The cache file goes to a fresh temporary ``RIBKERNELS_CACHE`` (so the first call really measures)
unless ``--user-cache``.

    PYTHONPATH=$PWD python benchmarks/bench_dcs_auto.py --threads 1 \\
        --md benchmarks/results/<date>-cpu-dcs-auto/bench_dcs_auto.md        # CPU: B=2 H=12 D=64, N 211, 1024
    PYTHONPATH=$PWD python benchmarks/bench_dcs_auto.py --dtype bf16 --batch 64  # CUDA (device chosen automatically)
"""
import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``ribkernels`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ribkernels as rk  # noqa: E402
from benchmarks.common import environment, markdown_table  # noqa: E402
from ribkernels.dcs import attention  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def inputs(B: int, H: int, N: int, D: int, dtype, device, train: bool):
    g = torch.Generator(device="cpu").manual_seed(N)
    q, k, v, theta = (torch.randn(B, H, N, D, generator=g).to(device=device, dtype=dtype) for _ in range(4))
    if train:
        for t in (q, k, v, theta):
            t.requires_grad_(True)
    return q, k, v, theta


def step(impl: str, q, k, v, theta, train: bool, grad_out) -> Callable[[], None]:
    if train:
        def run():
            rk.dcs_attention(q, k, v, theta, impl=impl, training=True).backward(grad_out)
            for t in (q, k, v, theta):
                t.grad = None
    else:
        def run():
            with torch.no_grad():
                rk.dcs_attention(q, k, v, theta, impl=impl, training=False)
    return run


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def bench_row(B, H, N, D, dtype, device, mode: str, rounds: int, warmup: int) -> Dict:
    train = mode == "train"
    q, k, v, theta = inputs(B, H, N, D, dtype, device, train)
    grad_out = torch.randn_like(q) if train else None
    explicit = attention.auto_candidates(q, k, v, theta, None)
    if device.type == "cuda" and "sdpa:flash" in explicit:
        explicit.insert(explicit.index("sdpa:flash"), "sdpa")  # also PyTorch's own SDPA kernel pick
    first_ms = timed(step("auto", q, k, v, theta, train, grad_out), device)  # measures (cache is empty)
    with torch.no_grad() if not train else torch.enable_grad():
        report = rk.available_backends(q, k, v, theta, report=True, training=train)
    steps: Dict[str, Callable[[], None]] = {}
    skipped: Dict[str, str] = {}
    for p in ["auto"] + explicit:  # one untimed call each: a forced SDPA kernel may refuse the input
        if p in report.failed:
            skipped[p] = report.failed[p]
            continue
        try:
            steps[p] = step(p, q, k, v, theta, train, grad_out)
            steps[p]()
        except Exception as exc:  # noqa: BLE001 -- reported in the row, the others still run
            skipped[p] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            del steps[p]
    providers = list(steps)
    times: Dict[str, List[float]] = {p: [] for p in providers}  # round by round
    order = random.Random(N)
    for r in range(warmup + rounds):
        for p in order.sample(providers, len(providers)):  # a fresh order each round: no provider always first
            ms = timed(steps[p], device)
            if r >= warmup:
                times[p].append(ms)
    med = {p: statistics.median(t) for p, t in times.items()}
    ok = {p: m for p, m in med.items() if p != "auto"}
    best = min(ok, key=ok.get)
    paired = statistics.median(a / b for a, b in zip(times["auto"], times[best]))
    return {"N": N, "mode": mode, "auto_choice": report.choice, "choice_source": report.source,
            "key": report.key, "chose_from_ms": report.timings_ms, "failed": report.failed, "skipped": skipped,
            "first_auto_call_ms": first_ms, "median_ms": med, "fastest_explicit": best,
            "auto_vs_fastest": paired, "auto_vs_fastest_medians": med["auto"] / med[best],
            "auto_vs_its_choice": med["auto"] / med[report.choice] if report.choice in med else float("nan"),
            "rounds": rounds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--ns", default="211,1024", help="comma-separated sequence lengths")
    ap.add_argument("--modes", default="train,eval", help="train (fwd+bwd) and/or eval (fwd)")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="default fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--device", default=None, help="default cuda when available, else cpu")
    ap.add_argument("--rounds", type=int, default=0, help="timed rounds (0: 31 at N <= 256, 15 above)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--user-cache", action="store_true", help="use $RIBKERNELS_CACHE / ~/.cache/ribkernels")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--md", default=None, help="write the Markdown table (and the command) here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if not args.user_cache:
        os.environ["RIBKERNELS_CACHE"] = tempfile.mkdtemp(prefix="bench-dcs-auto-")
    os.environ["RIBKERNELS_DCS_AUTOTUNE_BACKEND"] = "1"
    rows = []
    for n in (int(x) for x in args.ns.split(",")):
        for mode in args.modes.split(","):
            rounds = args.rounds or (31 if n <= 256 else 15)
            row = bench_row(args.batch, args.heads, n, args.head_dim, dtype, device, mode, rounds, args.warmup)
            rows.append(row)
            print(f"N={n} {mode}: auto chose {row['auto_choice']} ({row['choice_source']}) from "
                  + ", ".join(f"{p} {t:.3g} ms" for p, t in row["chose_from_ms"].items())
                  + "".join(f"; {p} failed: {why}" for p, why in row["failed"].items())
                  + f"; first auto call {row['first_auto_call_ms']:.3g} ms", flush=True)
    env = environment(device.type)
    head = (f"# dcs_attention impl='auto' vs each backend: B={args.batch} H={args.heads} D={args.head_dim} "
            f"{str(dtype).replace('torch.', '')}, {device.type} ({env['device']}), torch {env['torch']}, "
            f"threads {torch.get_num_threads()}; train = fwd+bwd (θ per token, grads), eval = fwd; interleaved "
            "rounds, median ms")
    table = []
    for r in rows:
        cells = {"N": r["N"], "mode": r["mode"], "auto chose": r["auto_choice"]}
        cells.update({f"{p} ms": r["median_ms"][p] for p in r["median_ms"]})
        cells.update({"auto / fastest": round(r["auto_vs_fastest"], 3),
                      "(of medians)": round(r["auto_vs_fastest_medians"], 3), "fastest": r["fastest_explicit"],
                      "rounds": r["rounds"], "first auto call ms": r["first_auto_call_ms"]})
        table.append(cells)
    verdict = all(r["auto_vs_fastest"] <= 1.10 for r in rows)
    ratios = ", ".join(f"{r['auto_vs_fastest']:.3f}" for r in rows)
    text = "\n".join([head, "", markdown_table(table), "",
                      f"auto within 10% of the fastest explicit backend in every row: {'ok' if verdict else 'FAIL'} "
                      f"({ratios})"])
    print(text)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        with open(args.md, "w") as f:
            cmd = " ".join(sys.argv[1:] if argv is None else argv)
            f.write(f"{text}\n\ncommand: PYTHONPATH=$PWD python benchmarks/bench_dcs_auto.py {cmd}\n")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=1)
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
