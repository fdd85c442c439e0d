"""Re-ID evaluation (docs/training.md): CMC, mAP and mINP under the Market-1501 protocol, chunked distances,
chunked evaluation from features, and k-reciprocal re-ranking.

Protocol, for each query q:
* gallery images with the same pid **and** the same camera as q are removed (as are junk images,
  pid −1, if any reach the evaluator: loaders drop them);
* the remaining gallery is ranked by increasing distance with a **stable** sort (ties keep gallery
  order); queries with no remaining true match are skipped;
* CMC[r] = 1 if a true match is within the first r+1; AP is non-interpolated,
  ``AP = mean_k (k+1) / (rank_k + 1)`` over the true matches sorted by rank (0-based ranks);
  INP = ``num_matches / (rank_of_hardest_match + 1)`` (Ye et al., AGW).
mAP, mINP and CMC are means over valid queries, returned as fractions.

Implementation: the stable rank of each true match is found without sorting the gallery: a match
p ranks after every kept item j with ``(d_j, j) < (d_p, p)``, which ``searchsorted`` of the
negatives into the (few) sorted match distances counts in O(G log m) per query. Ties are resolved
exactly by gallery index, so the result is identical to a stable ``argsort``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

__all__ = ["RankResult", "evaluate_rank", "evaluate", "compute_distance_matrix", "re_ranking", "METRICS"]

METRICS = ("euclidean", "sqeuclidean", "cosine")


@dataclass
class RankResult:
    """Result of :func:`evaluate_rank`. ``cmc``: float64 [max_rank] fractions; ``mAP``, ``mINP``:
    fractions in [0, 1]; ``all_AP`` / ``all_INP``: float64 [num_valid_queries], per valid query in query
    order (their means are ``mAP`` / ``mINP``); ``all_first_rank``: int64 [num_valid_queries], the 0-based
    rank of each valid query's first true match; ``valid``: bool [num_q]."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    all_AP: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    all_INP: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    valid: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))
    all_first_rank: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))

    @property
    def rank1(self) -> float:
        return float(self.cmc[0])

    @property
    def all_rank1_hit(self) -> np.ndarray:
        """bool [num_valid_queries]: whether each valid query's first match is at rank 1 (mean: ``cmc[0]``)."""
        return self.all_first_rank == 0

    def summary(self, ranks: Sequence[int] = (1, 5, 10)) -> str:
        parts = [f"mAP {100 * self.mAP:.1f}%", f"mINP {100 * self.mINP:.1f}%"]
        parts += [f"R{r} {100 * self.cmc[r - 1]:.1f}%" for r in ranks if r <= len(self.cmc)]
        return " | ".join(parts) + f" ({self.num_valid_queries} valid queries)"


def _to_numpy_1d(x: ArrayLike, name: str, n: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name}: expected a 1-D array of length {n}, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise TypeError(f"{name}: expected integer ids, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _check_distmat(distmat) -> tuple:
    if isinstance(distmat, torch.Tensor):
        if distmat.dim() != 2:
            raise ValueError(f"distmat: expected a 2-D [num_query, num_gallery] matrix, got shape {tuple(distmat.shape)}")
        if not distmat.is_floating_point():
            raise TypeError(f"distmat: expected a floating dtype, got {distmat.dtype}")
        return tuple(distmat.shape)
    if not isinstance(distmat, np.ndarray):
        raise TypeError(f"distmat: expected a numpy array or torch tensor, got {type(distmat).__name__}")
    if distmat.ndim != 2:
        raise ValueError(f"distmat: expected a 2-D [num_query, num_gallery] matrix, got shape {distmat.shape}")
    if not np.issubdtype(distmat.dtype, np.floating):
        raise TypeError(f"distmat: expected a floating dtype, got {distmat.dtype}")
    return distmat.shape


def _rows(distmat, start: int, stop: int) -> np.ndarray:
    block = distmat[start:stop]
    if isinstance(block, torch.Tensor):
        block = block.detach()
        if block.dtype in (torch.float16, torch.bfloat16):
            block = block.float()
        block = block.cpu().numpy()
    return np.ascontiguousarray(block)


class _Accumulator:
    """Per-query statistics, filled row block by row block."""

    def __init__(self, q_pids, g_pids, q_camids, g_camids, max_rank: int):
        if max_rank < 1:
            raise ValueError(f"max_rank: expected >= 1, got {max_rank}")
        self.q_pids, self.g_pids, self.q_camids, self.g_camids = q_pids, g_pids, q_camids, g_camids
        self.max_rank = max_rank
        nq = len(q_pids)
        self.first = np.full(nq, -1, np.int64)  # rank of the first true match, -1 = invalid query
        self.ap = np.zeros(nq, np.float64)
        self.inp = np.zeros(nq, np.float64)
        self.g_kept = g_pids != -1
        self.g_index = np.arange(len(g_pids), dtype=np.int64)
        # gallery positions of each pid, so the per-query work on matches is O(m)
        order = np.argsort(g_pids, kind="stable")
        uniq, starts = np.unique(g_pids[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        self.pid_slices = {int(p): order[s:e] for p, s, e in zip(uniq, starts, ends)}

    def add_rows(self, start: int, block: np.ndarray) -> None:
        if not np.all(np.isfinite(block)):
            bad = start + int(np.argwhere(~np.isfinite(block))[0, 0])
            raise ValueError(f"distmat: non-finite distance in query row {bad}")
        for r in range(block.shape[0]):
            self._one(start + r, block[r])

    def _one(self, qi: int, d: np.ndarray) -> None:
        qpid, qcam = self.q_pids[qi], self.q_camids[qi]
        same_pid = self.pid_slices.get(int(qpid), np.zeros(0, np.int64))
        if qpid == -1 or same_pid.size == 0:
            return
        pos = same_pid[self.g_camids[same_pid] != qcam]  # ascending gallery index
        if pos.size == 0:
            return
        # negatives: kept items that are not true matches (other pid, not junk)
        neg_mask = self.g_kept.copy()
        neg_mask[same_pid] = False
        d_neg = d[neg_mask]
        # true matches in stable order: by distance, then gallery index
        d_pos = d[pos]
        o = np.argsort(d_pos, kind="stable")
        pd, pi = d_pos[o], pos[o]
        m = pd.shape[0]
        left = np.searchsorted(pd, d_neg, side="left")
        right = np.searchsorted(pd, d_neg, side="right")
        tied = np.flatnonzero(left != right)
        if tied.size:
            # negative j tied with matches p (d_j == d_p) comes after those with p < j
            neg_idx = self.g_index[neg_mask][tied]
            uniq, grp = np.unique(pd, return_inverse=True)
            stride = d.shape[0] + 1
            key_p = grp.astype(np.int64) * stride + pi
            g_of_neg = np.searchsorted(uniq, d_neg[tied])
            left[tied] = np.searchsorted(key_p, g_of_neg * stride + neg_idx)
        counts = np.bincount(left, minlength=m + 1)[:m]
        ranks = np.arange(m) + np.cumsum(counts)  # 0-based rank of each match in the kept list
        self.first[qi] = ranks[0]
        self.ap[qi] = np.mean((np.arange(m) + 1.0) / (ranks + 1.0))
        self.inp[qi] = m / (ranks[-1] + 1.0)

    def result(self) -> RankResult:
        valid = self.first >= 0
        nv = int(valid.sum())
        if nv == 0:
            warnings.warn("evaluate_rank: no query has a true match in the gallery (after removing "
                          "same-pid same-camera images); returning zeros", RuntimeWarning, stacklevel=3)
            return RankResult(np.zeros(self.max_rank), 0.0, 0.0, 0, np.zeros(0), np.zeros(0), valid,
                              np.zeros(0, np.int64))
        hits = np.bincount(np.minimum(self.first[valid], self.max_rank), minlength=self.max_rank + 1)
        cmc = np.cumsum(hits[: self.max_rank]) / nv
        ap, inp = self.ap[valid], self.inp[valid]
        return RankResult(cmc.astype(np.float64), float(ap.mean()), float(inp.mean()), nv, ap, inp, valid,
                          self.first[valid])


def _check_ids(q_pids, g_pids, q_camids, g_camids, nq: int, ng: int):
    return (_to_numpy_1d(q_pids, "q_pids", nq), _to_numpy_1d(g_pids, "g_pids", ng),
            _to_numpy_1d(q_camids, "q_camids", nq), _to_numpy_1d(g_camids, "g_camids", ng))


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, *,
                  chunk_rows: int = 1024) -> RankResult:
    """CMC, mAP and mINP of a [num_query, num_gallery] distance matrix (numpy, memmap or torch, any
    device) under the Market-1501 protocol (module docstring). ``cmc`` always has ``max_rank``
    entries (it stays at its last value past the gallery size). Rows are read ``chunk_rows`` at a time,
    so a float16/CUDA matrix is never copied whole."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an int >= 1 (query rows read at a time), got {chunk_rows!r}")
    nq, ng = _check_distmat(distmat)
    ids = _check_ids(q_pids, g_pids, q_camids, g_camids, nq, ng)
    acc = _Accumulator(*ids, max_rank=max_rank)
    for s in range(0, nq, chunk_rows):
        acc.add_rows(s, _rows(distmat, s, min(nq, s + chunk_rows)))
    return acc.result()


def _as_features(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D [n, dim] feature matrix, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected floating features, got {x.dtype}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def _distance_block(q: torch.Tensor, g: torch.Tensor, g_sq: Optional[torch.Tensor], metric: str) -> torch.Tensor:
    if metric == "cosine":
        return 1.0 - q @ g.t()
    d2 = (q * q).sum(1, keepdim=True) + g_sq[None, :] - 2.0 * (q @ g.t())
    d2.clamp_(min=0.0)
    return d2.sqrt_() if metric == "euclidean" else d2


def _prepare(qf, gf, metric: str, normalize: Optional[bool]):
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    qf, gf = _as_features(qf, "qf"), _as_features(gf, "gf")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"qf {tuple(qf.shape)} and gf {tuple(gf.shape)}: feature dims differ")
    if qf.device != gf.device:
        raise ValueError(f"qf on {qf.device} and gf on {gf.device}: expected the same device")
    dtype = torch.promote_types(qf.dtype, gf.dtype)
    qf, gf = qf.to(dtype), gf.to(dtype)
    if normalize is None:
        normalize = True
    if normalize or metric == "cosine":
        qf = torch.nn.functional.normalize(qf, dim=1)
        gf = torch.nn.functional.normalize(gf, dim=1)
    g_sq = None if metric == "cosine" else (gf * gf).sum(1)
    return qf, gf, g_sq


def compute_distance_matrix(qf, gf, metric: str = "euclidean", *, normalize: Optional[bool] = True,
                            chunk_size: int = 4096, out_dtype=np.float32) -> np.ndarray:
    """[num_query, num_gallery] distances as a numpy array, computed ``chunk_size`` query rows at a
    time on the features' device (so temporaries stay O(chunk_size × num_gallery)).

    metric: ``"euclidean"`` ‖q̂ − ĝ‖₂, ``"sqeuclidean"`` ‖q̂ − ĝ‖₂² (TransReID's and torchreid's),
    ``"cosine"`` 1 − q̂·ĝ; q̂, ĝ are L2-normalised when ``normalize`` (always for cosine). On
    normalised features all three give the same ranking."""
    qf, gf, g_sq = _prepare(qf, gf, metric, normalize)
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
    out = np.empty((qf.shape[0], gf.shape[0]), dtype=out_dtype)
    with torch.no_grad():
        for s in range(0, qf.shape[0], chunk_size):
            blk = _distance_block(qf[s:s + chunk_size], gf, g_sq, metric)
            out[s:s + blk.shape[0]] = blk.cpu().numpy()
    return out


def evaluate(qf, gf, q_pids, g_pids, q_camids, g_camids, *, metric: str = "euclidean",
             normalize: Optional[bool] = True, max_rank: int = 50, chunk_size: int = 1024,
             rerank: bool = False, rerank_kwargs: Optional[dict] = None) -> RankResult:
    """Evaluate query features ``qf`` [num_q, dim] against gallery features ``gf`` [num_g, dim]
    without ever holding the full distance matrix: distances are computed and ranked ``chunk_size``
    queries at a time (peak memory O(chunk_size × num_g)), which is how an MSMT17-sized evaluation
    (11,659 × 82,161) fits. With ``rerank`` the k-reciprocal re-ranked matrix is built in full
    (O((num_q + num_g)²) memory; see :func:`re_ranking`)."""
    if rerank:
        dist = re_ranking(qf, gf, **(rerank_kwargs or {}))
        return evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
    qf, gf, g_sq = _prepare(qf, gf, metric, normalize)
    ids = _check_ids(q_pids, g_pids, q_camids, g_camids, qf.shape[0], gf.shape[0])
    acc = _Accumulator(*ids, max_rank=max_rank)
    with torch.no_grad():
        for s in range(0, qf.shape[0], chunk_size):
            blk = _distance_block(qf[s:s + chunk_size], gf, g_sq, metric).cpu().numpy()
            acc.add_rows(s, blk)
    return acc.result()


class _Silent:
    def __init__(self, *args, **kwargs):
        pass

    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def re_ranking(qf, gf, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
               max_memory_gb: float = 16.0, progress: Optional[Callable] = None) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017), as TransReID/fast-reid apply it: squared
    Euclidean distances of the L2-normalised features over query+gallery, each column scaled by its
    max, Jaccard distance of the (k1, k2) k-reciprocal neighbourhoods, and the blend
    ``(1 − λ)·jaccard + λ·original``. Returns float32 [num_q, num_g]. Needs O((num_q+num_g)²) memory
    (about 12 bytes per pair); ``max_memory_gb`` refuses inputs that would exceed it. The defaults
    (20, 6, 0.3) are the paper's; TransReID evaluates with k1=50, k2=15 (the trainer's ``eval.rerank_*``).

    progress: ``progress(desc, total, unit=...)`` returning a context manager with ``update(n)``
    (e.g. ``ribkernels.engine.reporting.TaskProgress``): called for the two long loops, the
    k-reciprocal sets (num_q + num_g rows) and the Jaccard distances (num_q rows)."""
    progress = progress or _Silent
    qf, gf, _ = _prepare(qf, gf, "sqeuclidean", True)
    nq, ng = qf.shape[0], gf.shape[0]
    n = nq + ng
    need_gb = 12.0 * n * n / 2**30
    if need_gb > max_memory_gb:
        raise ValueError(f"re_ranking: {nq} queries + {ng} gallery need about {need_gb:.1f} GB "
                         f"(O((num_q+num_g)^2)); max_memory_gb={max_memory_gb}. Evaluate without re-ranking "
                         "or raise max_memory_gb.")
    if not (k1 >= 1 and k2 >= 1 and 0.0 <= lambda_value <= 1.0):
        raise ValueError(f"re_ranking: expected k1 >= 1, k2 >= 1, 0 <= lambda_value <= 1; got {k1}, {k2}, {lambda_value}")
    k1 = min(k1, n - 1) if n > 1 else 1
    feat = torch.cat([qf, gf]).float()
    sq = (feat * feat).sum(1)
    with torch.no_grad():
        dist = (sq[:, None] + sq[None, :] - 2.0 * feat @ feat.t()).clamp_(min=0).cpu().numpy()
    original_dist = dist / np.maximum(dist.max(axis=0, keepdims=True), 1e-12)
    original_dist = original_dist.T.astype(np.float32)
    del dist
    V = np.zeros_like(original_dist, dtype=np.float32)
    initial_rank = np.argsort(original_dist, axis=1, kind="stable").astype(np.int32)
    with progress("re-ranking: k-reciprocal sets", n, unit="rows") as bar:
        for i in range(n):
            bar.update(1)
            forward_k = initial_rank[i, : k1 + 1]
            backward_k = initial_rank[forward_k, : k1 + 1]
            k_recip = forward_k[np.where(backward_k == i)[0]]
            k_recip_exp = k_recip
            half = int(np.around(k1 / 2.0))
            for cand in k_recip:
                c_forward = initial_rank[cand, : half + 1]
                c_backward = initial_rank[c_forward, : half + 1]
                c_recip = c_forward[np.where(c_backward == cand)[0]]
                if len(np.intersect1d(c_recip, k_recip)) > 2.0 / 3.0 * len(c_recip):
                    k_recip_exp = np.append(k_recip_exp, c_recip)
            k_recip_exp = np.unique(k_recip_exp)
            weight = np.exp(-original_dist[i, k_recip_exp])
            V[i, k_recip_exp] = weight / weight.sum()
    original_dist = original_dist[:nq]
    if k2 > 1:
        V = np.stack([V[initial_rank[i, :k2]].mean(axis=0) for i in range(n)]).astype(np.float32)
    del initial_rank
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(n)]
    jaccard = np.zeros((nq, n), dtype=np.float32)
    with progress("re-ranking: Jaccard distances", nq, unit="rows") as bar:
        for i in range(nq):
            bar.update(1)
            temp_min = np.zeros(n, dtype=np.float32)
            nz = np.where(V[i] != 0)[0]
            for j in nz:
                others = inv_index[j]
                temp_min[others] += np.minimum(V[i, j], V[others, j])
            jaccard[i] = 1.0 - temp_min / (2.0 - temp_min)
    final = jaccard * (1.0 - lambda_value) + original_dist * lambda_value
    return final[:, nq:].astype(np.float32)
