"""IBB benchmarks: the paths a training step takes, the C++/CUDA extension (provider
``ext``) against eager PyTorch.

* ``IBBLoss train`` (forward + backward of ``IBBLoss`` in training mode, as ``train.py`` calls it):
  with ``beta="auto"`` (every shipped config) the per-batch β fit is included; also with a fixed β
  (``ibb.beta: <number>``). Providers: ``ext`` (``IBBLoss(impl="ext")``: ``ribkernels::ibb_fit_beta``,
  ``ibb_forward`` / ``ibb_backward``), ``eager`` (``IBBLoss(impl="eager")``: the package's fallback
  without the extension: the eager β fit over the whole grid, the bound with a gather of log Q) and
  ``eager-ltm`` (the same β fit and the bound written with broadcast n x A x K tensors: phi ⊗ log Q ⊗
  one-hot(y), the way the authors' LTM code computes it). n in {64, 256}, A = K in {751, 1041},
  D in {768, 2048} (CPU and --quick: n = 64, A = K = 751, D = 768, plus n = 256 without eager-ltm);
* the refresh, once per epoch: ``soft_counts`` and one Lloyd step ``kmeans_step`` over Market-1501's
  training set size (12,936 x 751 x 768; also MSMT17's 32,621 x 1041 x 2048 on a GPU without
  --quick), and one ``IBBLoss.refresh`` at Market-1501 size: k-means++ init + Lloyd steps + Q.

TFLOP/s and GB/s (refresh rows) use the nominal work: the GEMM flops plus the elementwise ones, and
the bytes of the tensors each pass must read and write once (float32).

    python -m benchmarks.bench_ibb [--device cpu|cuda] [--quick]   # prints a table
    (or as the ``ibb`` section of ``python -m benchmarks.run``, which writes the result files)
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from benchmarks.common import markdown_table, median_ms
from ribkernels.ibb import extension_status, kmeans_step, soft_counts
from ribkernels.ibb.calibrate import calibrate_beta_batch_eager
from ribkernels.nn.ibb_loss import IBBLoss

PROVIDERS = ("ext", "eager")
TRAIN_PROVIDERS = ("ext", "eager", "eager-ltm")
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


def _reid_like(n: int, K: int, D: int, device: str, seed: int):
    """Features around K identity centres (unit vectors) with labels: [n, D], [n]."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(K, D, generator=g), dim=1)
    y = torch.randint(0, K, (n,), generator=g)
    x = centres[y] + 0.8 * torch.randn(n, D, generator=g) / D ** 0.5
    return x.to(device), y.to(device)


class LTMStyle:
    """The training-mode bound as eager code with broadcast n x A x K tensors: the batch β fit (the
    package's eager fit, EMA of log β as IBBLoss does), phi by a softmax over distances, and
    ``-(phi[:, :, None] * log_q[None] * onehot[:, None, :]).sum((1, 2))``."""

    def __init__(self, m: IBBLoss):
        self.c, self.log_q, self.K = m.centroids, m.log_q, m.num_classes
        self.auto, self.beta, self.target = m.beta == "auto", m._beta, m._target(m.num_clusters)
        self.momentum, self.ema = m.beta_momentum, None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        beta = self.beta
        if self.auto:
            b = calibrate_beta_batch_eager(x.detach(), self.c, target_entropy=self.target).log()
            self.ema = b if self.ema is None else self.momentum * self.ema + (1 - self.momentum) * b
            beta = self.ema.exp()
        f = F.normalize(x, dim=1)
        d2 = (f * f).sum(1, keepdim=True) + (self.c * self.c).sum(1) - 2.0 * f @ self.c.T
        phi = torch.softmax(-beta * d2, dim=1)
        onehot = F.one_hot(y, self.K).to(phi.dtype)
        return -(phi[:, :, None] * self.log_q[None] * onehot[:, None, :]).sum((1, 2)).mean()


def bench_train(n: int, A: int, D: int, device: str, reps: int, ltm: bool) -> List[Dict]:
    """IBBLoss in training mode, forward + backward, with beta "auto" (batch fit) and fixed."""
    x_ref, y_ref = _reid_like(2 * A, A, D, device, seed=1)  # the refresh's features
    x, y = _reid_like(n, A, D, device, seed=2)
    rows: List[Dict] = []
    for beta in ("auto", 8.0):
        base = IBBLoss(A, D, beta=beta, kmeans_iters=2, impl="ext").to(device)
        base.refresh(x_ref, y_ref)
        fns: Dict[str, Callable] = {}
        for p in TRAIN_PROVIDERS if ltm else PROVIDERS:
            if p == "eager-ltm":
                loss_fn = LTMStyle(base)
            else:
                m = IBBLoss(A, D, beta=beta, impl=p).to(device)
                m.load_state_dict(base.state_dict())
                loss_fn = m.train()
            xp = x.clone().requires_grad_()

            def step(xp=xp, loss_fn=loss_fn):
                xp.grad = None
                loss_fn(xp, y).backward()

            fns[p] = step
        if device == "cuda":
            times = {k: median_ms(fn, device, reps=reps) for k, fn in fns.items()}
        else:
            times = interleaved_medians(fns, reps)
        label = "IBBLoss train (beta auto: batch fit)" if beta == "auto" else f"IBBLoss train (beta {beta:g})"
        rows += [_row(label, p, "fwd+bwd", f"n={n} A=K={A} D={D}", ms) for p, ms in times.items()]
    return rows


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
        shapes = [(n, A, D, True) for n in (64, 256) for A in (751, 1041) for D in (768, 2048)]
    else:  # eager-ltm's n x A x K tensors at n = 256 take 0.6 GB each on a CPU
        shapes = [(64, 751, 768, True), (256, 751, 768, gpu)]
    reps = 100 if gpu else (15 if quick else 30)
    rows: List[Dict] = []
    for n, A, D, ltm in shapes:
        rows += bench_train(n, A, D, device, reps, ltm)
    for N, A, D in [MARKET] + ([MSMT] if gpu and not quick else []):
        rows += bench_refresh(N, A, D, device, reps=20 if gpu else 3, iters=10 if gpu else 3)
    by = {(r["name"], r["shape"], r["pass"], r["provider"]): r["ms"] for r in rows}
    for r in rows:
        if r["provider"] == "ext":
            for other, col in (("eager", "speedup_vs_eager"), ("eager-ltm", "speedup_vs_eager_ltm")):
                ms = by.get((r["name"], r["shape"], r["pass"], other))
                if ms is not None:
                    r[col] = ms / r["ms"]
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="IBB benchmarks: extension vs eager PyTorch")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rows = run(args.device, args.quick)
    print(markdown_table(rows, ["name", "pass", "shape", "provider", "ms", "TFLOPs", "GBps", "speedup_vs_eager",
                                "speedup_vs_eager_ltm"]))

if __name__ == "__main__":
    main()
