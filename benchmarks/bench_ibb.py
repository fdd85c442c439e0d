"""IBB benchmarks (docs/performance.md): the C++/CUDA extension (provider ``ext``, through the public functions,
argument checks included) against eager PyTorch (``eager``: the same math written with torch ops,
float32; for the batch loss the bare expression a user would write, without checks).

* ``ibb_loss``: forward, backward and forward+backward for a batch; n in {64, 256}, A = K in
  {751, 1041}, D in {768, 2048} (quick: A = K = 751, D = 768);
* ``soft_counts`` and one Lloyd step ``kmeans_step`` over Market-1501's training set size
  (12,936 x 751 x 768; also MSMT17's 32,621 x 1041 x 2048 on a GPU without --quick);
* one ``IBBLoss.refresh`` at Market-1501 size: k-means++ init + Lloyd steps + Q.

TFLOP/s and GB/s use the nominal work: the GEMM flops plus the elementwise ones, and the bytes of
the tensors each pass must read and write once (float32).

    python -m benchmarks.bench_ibb [--device cpu|cuda] [--quick]   # prints a table
    (or as the ``ibb`` section of ``python -m benchmarks.run``)
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from benchmarks.common import markdown_table, median_ms
from ribkernels.ibb import extension_status, ibb_loss, kmeans_step, soft_counts
from ribkernels.ibb.reference import ibb_eager
from ribkernels.nn.ibb_loss import IBBLoss

PROVIDERS = ("ext", "eager")
MARKET = (12936, 751, 768)
MSMT = (32621, 1041, 2048)


def _row(name, provider, pas, shape, ms, flops=None, nbytes=None) -> Dict:
    row = {"name": name, "provider": provider, "pass": pas, "dtype": "float32", "shape": shape,
           "ms": ms}
    if flops:
        row["TFLOPs"] = flops / (ms * 1e-3) / 1e12
    if nbytes:
        row["GBps"] = nbytes / (ms * 1e-3) / 1e9
    return row


def bench_loss(n: int, A: int, D: int, device: str, reps: int) -> List[Dict]:
    f = torch.randn(n, D, device=device)
    c = F.normalize(torch.randn(A, D, device=device), dim=1)
    lq = torch.log_softmax(torch.randn(A, A, device=device), 1)
    y = torch.randint(0, A, (n,), device=device)
    work = {
        "fwd": (2 * n * A * D + 10 * n * A, 4 * (n * D + A * D + 3 * n * A)),
        "bwd": (2 * n * A * D + 8 * n * A + 8 * n * D, 4 * (2 * n * A + A * D + 3 * n * D)),
    }
    work["fwd+bwd"] = tuple(a + b for a, b in zip(work["fwd"], work["bwd"]))
    shape = f"n={n} A=K={A} D={D}"
    fns = {}
    for p in PROVIDERS:
        x = f.clone().requires_grad_()
        # ext: the public function (argument checks included); eager: the bare math, as a user
        # would write it (no checks)
        loss_fn = (lambda x: ibb_loss(x, y, c, lq, impl="ext")) if p == "ext" else \
            (lambda x: ibb_eager(x, y, c, lq, 1.0, True).mean())
        out = loss_fn(x)

        def fwd(x=x, loss_fn=loss_fn):
            with torch.no_grad():
                loss_fn(x)

        def bwd(out=out):
            out.backward(retain_graph=True)

        def fwd_bwd(x=x, loss_fn=loss_fn):
            x.grad = None
            loss_fn(x).backward()

        for pas, fn in (("fwd", fwd), ("bwd", bwd), ("fwd+bwd", fwd_bwd)):
            fns[(p, pas)] = fn
    if device == "cuda":
        times = {k: median_ms(fn, device, reps=reps) for k, fn in fns.items()}
    else:
        times = interleaved_medians(fns, reps)
    return [_row("ibb_loss", p, pas, shape, ms, *work[pas]) for (p, pas), ms in times.items()]


def interleaved_medians(fns: Dict, reps: int, warmup: int = 2) -> Dict:
    """CPU timing on a shared machine: every repetition runs each function once, in turn, so load
    from other processes hits all providers alike; medians in ms."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_refresh(N: int, A: int, D: int, device: str, reps: int, iters: int) -> List[Dict]:
    x = torch.randn(N, D, device=device)
    y = torch.randint(0, A, (N,), device=device)
    c = F.normalize(torch.randn(A, D, device=device), dim=1)
    shape = f"N={N} A=K={A} D={D}"
    rows = []
    for p in PROVIDERS:
        ms = median_ms(lambda: soft_counts(x, y, c, num_classes=A, impl=p), device, warmup=1, reps=reps)
        rows.append(_row("soft_counts", p, "fwd", shape, ms, 2 * N * A * D + 10 * N * A,
                         4 * (N * D + A * D + 2 * N * A)))
        ms = median_ms(lambda: kmeans_step(x, c, impl=p), device, warmup=1, reps=reps)
        rows.append(_row("kmeans_step", p, "fwd", shape, ms, 2 * N * A * D + 2 * N * D,
                         4 * (2 * N * D + 2 * A * D + N * A)))
    for p in PROVIDERS:
        m = IBBLoss(A, D, kmeans_iters=iters, impl=p).to(device)
        m.refresh(x[: 4 * A], y[: 4 * A]) if device == "cuda" else None  # warm-up (GPU only)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        m.refresh(x, y)
        if device == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        rows.append(_row(f"refresh (k-means++, {iters} iters, Q)", p, "fwd", shape, ms))
    return rows


def run(device: str, quick: bool) -> List[Dict]:
    """Rows for ``benchmarks.run`` (see its docstring)."""
    st = extension_status()
    if device not in st["devices"]:
        raise RuntimeError(f"the ribkernels extension does not serve {device}: {st}")
    gpu = device == "cuda"
    if gpu and not quick:
        loss_shapes = [(n, A, D) for n in (64, 256) for A in (751, 1041) for D in (768, 2048)]
    else:
        loss_shapes = [(64, 751, 768), (256, 751, 768)]
    reps = 100 if gpu else (15 if quick else 30)
    rows: List[Dict] = []
    for n, A, D in loss_shapes:
        rows += bench_loss(n, A, D, device, reps)
    for N, A, D in [MARKET] + ([MSMT] if gpu and not quick else []):
        rows += bench_refresh(N, A, D, device, reps=20 if gpu else 3, iters=10 if gpu else 3)
    by = {(r["name"], r["shape"], r["pass"], r["provider"]): r["ms"] for r in rows}
    for r in rows:
        if r["provider"] == "ext":
            r["speedup_vs_eager"] = by[(r["name"], r["shape"], r["pass"], "eager")] / r["ms"]
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="IBB benchmarks: extension vs eager PyTorch")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rows = run(args.device, args.quick)
    print(markdown_table(rows, ["name", "pass", "shape", "provider", "ms", "TFLOPs", "GBps", "speedup_vs_eager"]))

if __name__ == "__main__":
    main()
