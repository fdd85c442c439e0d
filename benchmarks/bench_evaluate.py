"""Benchmark of Re-ID evaluation (docs/training.md) at Market-1501 size (3,368 × 15,913) and MSMT17 size
(11,659 × 82,161): time and peak memory of

* ``distances``: :func:`ribkernels.reid.compute_distance_matrix` (chunked, on ``--device``),
* ``evaluate_rank``: CMC/mAP/mINP from the full distance matrix (numpy, CPU),
* ``evaluate``: chunked distances + ranking straight from features (never holds the full matrix),
* ``argsort``: the usual full-``argsort`` implementation (torchreid/TransReID style, stable sort), as
  the baseline (Market size only: at MSMT17 size its index matrices alone need 15 GB).

    python -m benchmarks.bench_evaluate [--quick] [--device cpu|cuda]

Inputs are synthetic features with each dataset's id/camera/distractor statistics (768-d, noisy
identity centres), so mAP is meaningful but arbitrary. Peak memory is the process's peak RSS above
its RSS before the call (Linux ``VmHWM`` after a ``clear_refs`` reset; tracemalloc's numpy peak where
that is unavailable); on CUDA also the peak CUDA memory of the distance computation.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from benchmarks.common import markdown_table
from ribkernels.reid import compute_distance_matrix, evaluate, evaluate_rank

NOISE = 2.6  # per-dimension noise around unit-variance identity centres: mAP ~ 0.6, not saturated

SIZES = {  # name: (num_query, num_gallery, test ids, cameras, distractors)
    "market1501": (3368, 15913, 750, 6, 2793),
    "msmt17": (11659, 82161, 3060, 15, 0),
}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kb("VmHWM")
        return True
    except OSError:
        return False
    except KeyError:
        return False


def measure(fn: Callable[[], object], device: str) -> Tuple[object, float, float, float]:
    """(result, seconds, peak host MB above the starting RSS, peak CUDA MB or NaN)."""
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    use_hwm = _can_reset_hwm()
    if use_hwm:
        base = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    else:
        tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    if use_hwm:
        peak = (_status_kb("VmHWM") - base) / 1024
    else:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    peak_cuda = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if cuda else float("nan")
    return out, secs, max(peak, 0.0), peak_cuda


def make_case(name: str, dim: int = 768, seed: int = 0):
    nq, ng, n_ids, n_cams, n_distr = SIZES[name]
    rng = np.random.default_rng(seed)
    q_pids = np.sort(rng.integers(1, n_ids + 1, nq))
    g_pids = np.concatenate([rng.integers(1, n_ids + 1, ng - n_distr), np.zeros(n_distr, np.int64)])
    q_cams, g_cams = rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng)
    centres = rng.standard_normal((n_ids + 1, dim), dtype=np.float32)
    qf = centres[q_pids] + NOISE * rng.standard_normal((nq, dim), dtype=np.float32)
    gf = centres[g_pids] + NOISE * rng.standard_normal((ng, dim), dtype=np.float32)
    gf[g_pids == 0] = rng.standard_normal((n_distr, dim), dtype=np.float32)
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def argsort_baseline(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """torchreid's eval_market1501 (full argsort of the matrix), with a stable sort and mINP."""
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(distmat.shape[0]):
        order = indices[i]
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw = matches[i][keep]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        pos_max = np.where(raw == 1)[0].max()
        all_inp.append(cmc[pos_max] / (pos_max + 1.0))
        c = np.minimum(cmc, 1)
        all_cmc.append(c[:max_rank])
        all_ap.append(((cmc / (np.arange(len(cmc)) + 1.0)) * raw).sum() / raw.sum())
    return np.mean(all_cmc, 0), float(np.mean(all_ap)), float(np.mean(all_inp))


def run(device: str, quick: bool) -> List[Dict]:
    """Rows for benchmarks.run: Market-1501 size always; MSMT17 size unless ``quick``."""
    rows: List[Dict] = []
    for name in (["market1501"] if quick else ["market1501", "msmt17"]):
        qf, gf, qp, gp, qc, gc = make_case(name)
        shape = f"{qf.shape[0]}x{gf.shape[0]}x{qf.shape[1]}"
        tq, tg = torch.from_numpy(qf).to(device), torch.from_numpy(gf).to(device)

        dist, s, mem, mem_cuda = measure(lambda: compute_distance_matrix(tq, tg, "euclidean"), device)
        rows.append({"name": f"distances {name}", "provider": "ribkernels", "shape": shape, "ms": 1e3 * s,
                     "peak_mem_MB": mem, "peak_cuda_MB": mem_cuda, "out_MB": dist.nbytes / 2**20})
        res, s, mem, _ = measure(lambda: evaluate_rank(dist, qp, gp, qc, gc), "cpu")
        rows.append({"name": f"evaluate_rank {name}", "provider": "ribkernels", "shape": shape, "ms": 1e3 * s,
                     "peak_mem_MB": mem, "mAP": res.mAP, "rank1": res.rank1, "mINP": res.mINP})
        if name == "market1501":
            (cmc, mAP, mINP), s, mem, _ = measure(lambda: argsort_baseline(dist, qp, gp, qc, gc), "cpu")
            if abs(mAP - res.mAP) > 1e-9 or abs(mINP - res.mINP) > 1e-9 or not np.allclose(cmc, res.cmc):
                raise AssertionError(f"argsort baseline disagrees: mAP {mAP} vs {res.mAP}")
            rows.append({"name": f"evaluate_rank {name}", "provider": "argsort", "shape": shape, "ms": 1e3 * s,
                         "peak_mem_MB": mem, "mAP": mAP, "rank1": float(cmc[0]), "mINP": mINP})
        del dist
        res2, s, mem, mem_cuda = measure(lambda: evaluate(tq, tg, qp, gp, qc, gc, chunk_size=1024), device)
        if abs(res2.mAP - res.mAP) > 1e-4:
            raise AssertionError(f"chunked evaluate disagrees: mAP {res2.mAP} vs {res.mAP}")
        rows.append({"name": f"evaluate (chunked) {name}", "provider": "ribkernels", "shape": shape, "ms": 1e3 * s,
                     "peak_mem_MB": mem, "peak_cuda_MB": mem_cuda, "mAP": res2.mAP, "rank1": res2.rank1, "mINP": res2.mINP})
        del tq, tg
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Re-ID evaluation benchmark (time, peak memory)")
    ap.add_argument("--quick", action="store_true", help="Market-1501 size only")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where distances are computed")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible")
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    rows = run(args.device, args.quick)
    print(markdown_table(rows, ["name", "provider", "shape", "ms", "peak_mem_MB", "peak_cuda_MB", "mAP", "rank1", "mINP"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
