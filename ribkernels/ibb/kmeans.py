"""k-means for the IBB cluster refresh: one Lloyd step (``kmeans_step``, the O(n·A·D)
part, in the extension) and the loop around it (``kmeans``): k-means++ or random init, empty
clusters re-seeded, deterministic for a seed, sums and counts all-reduced under torch.distributed.
"""
from __future__ import annotations

import numbers
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .. import _extension as _ext
from .progress import StepProgress, check_mode
from ._dispatch import no_autocast, use_extension
from .checks import check_features_centroids, check_finite, check_floating_matrix, compute_dtype
from .reference import kmeans_step_eager

from .._distributed import all_reduce, resolve_group

INITS = ("k-means++", "random")


class KMeansStep(NamedTuple):
    assignments: torch.Tensor  # [n] int64, nearest centroid (lowest index on ties)
    sums: torch.Tensor  # [A, D], per-cluster sums of the rows assigned to it
    counts: torch.Tensor  # [A] int64
    min_dist: torch.Tensor  # [n], squared distance to the assigned centroid


class KMeansResult(NamedTuple):
    centroids: torch.Tensor  # [k, D]
    assignments: torch.Tensor  # [n] of the (local) data, against the final centroids
    counts: torch.Tensor  # [k] int64, global cluster sizes against the final centroids
    objective: List[float]  # sum of squared distances (global), one per centroid set, first = init
    reseeded: List[int]  # empty clusters re-seeded at each update


@torch.no_grad()
def kmeans_step(features: torch.Tensor, centroids: torch.Tensor, *, impl: str = "auto") -> KMeansStep:
    """One Lloyd step on ``features`` [n, D] against ``centroids`` [A, D] (squared Euclidean)."""
    check_features_centroids(features, centroids)
    ext = use_extension(impl, features.device)
    dtype = compute_dtype(features, centroids)
    with no_autocast(features.device):
        x, c = features.to(dtype), centroids.to(dtype)
        out = _ext.ops().kmeans_step(x, c) if ext else kmeans_step_eager(x, c)
    return KMeansStep(*out)


def check_magnitude(name: str, x: torch.Tensor) -> None:
    """Squared norms and distances of ``x``'s rows must stay finite in its dtype: max |x|^2 * D
    below the dtype's largest value (else every distance is inf and every row lands in one
    cluster). One device->host copy."""
    if x.numel() == 0:
        return
    amax = float(x.detach().abs().max())
    limit = (torch.finfo(x.dtype).max / (4.0 * x.shape[1])) ** 0.5
    if amax > limit:
        raise ValueError(f"{name} holds values too large for k-means in {x.dtype}: max |{name}| = "
                         f"{amax:.3g}, but squared distances overflow above {limit:.3g} (D = "
                         f"{x.shape[1]}); rescale {name} (e.g. L2-normalise its rows) or pass float64 "
                         f"({name}: shape {tuple(x.shape)})")


def _all_gather_rows(x: torch.Tensor, group) -> torch.Tensor:
    """Concatenation of every rank's ``x`` (rows may differ per rank), in rank order."""
    if group is None:
        return x
    import torch.distributed as dist

    world = dist.get_world_size(group)
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def _kmeanspp(x: torch.Tensor, k: int, gen: torch.Generator, progress="off") -> torch.Tensor:
    """k-means++ seeding (D² sampling). Random numbers come from the CPU generator ``gen``; the
    sampling itself stays on x's device (inverse CDF by searchsorted, no sync per centre)."""
    n = x.shape[0]
    xsq = (x * x).sum(1)
    first = torch.randint(n, (1,), generator=gen).to(x.device)
    u = torch.rand(k, generator=gen, dtype=torch.float64).to(x.device)
    chosen = [first]
    c = x[first[0]]
    d = (xsq + xsq[first[0]] - 2.0 * (x @ c)).clamp_min(0)
    prog = StepProgress(k, f"IBB k-means++ init ({k} centres, {n} rows)", progress)
    prog.step()
    for j in range(1, k):
        cdf = torch.cumsum(d.double(), 0)
        # right=True: a zero-probability point (already a centre) is never drawn unless all are zero
        idx = torch.searchsorted(cdf, (u[j] * cdf[-1]).reshape(1), right=True).clamp_max(n - 1)
        chosen.append(idx)
        c = x[idx[0]]
        d = torch.minimum(d, (xsq + (c * c).sum() - 2.0 * (x @ c)).clamp_min(0))
        prog.step()
    prog.close()
    return x[torch.cat(chosen)].clone()


def _reseed_candidates(x: torch.Tensor, min_dist: torch.Tensor, e: int, group) -> torch.Tensor:
    """The ``e`` rows farthest from their centroid (largest min_dist) over all ranks, farthest first."""
    take = min(e, x.shape[0])
    vals, idx = min_dist.topk(take)
    rows = x[idx]
    if group is not None:
        pad = e - take
        vals = torch.cat([vals, vals.new_full((pad,), -float("inf"))])
        rows = torch.cat([rows, rows.new_zeros(pad, x.shape[1])])
        vals = _all_gather_rows(vals[:, None], group).flatten()
        rows = _all_gather_rows(rows, group)
    best = vals.topk(min(e, vals.numel())).indices
    return rows[best]


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, *, init="k-means++",
           normalize: bool = False, tol: float = 0.0, impl: str = "auto",
           distributed: Optional[bool] = None, process_group=None, progress=None) -> KMeansResult:
    """Lloyd's k-means of ``x`` [n, D] into ``k`` clusters.

    Args:
        iters: at most this many updates; stops earlier once an update improves the objective by
            no more than ``tol`` (relative) and re-seeds nothing.
        seed: the same seed gives the same centroids (same device, same data).
        init: ``"k-means++"`` (D² sampling), ``"random"`` (k distinct rows) or a ``[k, D]`` tensor
            of starting centroids (e.g. the previous refresh's; the same on every rank).
        normalize: spherical k-means for L2-normalised features (the IBB's case): rows of ``x`` and
            the centroids after every update are L2-normalised.
        distributed: ``None`` = all-reduce when torch.distributed is initialised with more than one
            process; every rank passes its own rows and ends with the same centroids, equal to a
            single-process run on the union of the rows in rank order.
        progress: ``None`` / ``"off"`` (default), ``"auto"``, ``"bar"`` or ``"log"``: one progress
            step per Lloyd iteration with the objective (a tqdm bar, or log lines on the
            ``ribkernels.ibb`` logger), on rank 0 only.

    Empty clusters are re-seeded with the rows farthest from their centroid, which never increases
    the objective. NaN/Inf in ``x``, and values so large that squared distances overflow x's dtype,
    raise a ValueError (a sync; refresh time only).
    """
    check_floating_matrix("x", x, "[n, D]")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    progress = check_mode(progress)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be a non-negative int, got {iters!r}")
    if isinstance(init, torch.Tensor):
        check_features_centroids(x, init)
        if init.shape[0] != k:
            raise ValueError(f"init centroids must have shape [{k}, {x.shape[1]}], got {tuple(init.shape)}")
    elif init not in INITS:
        raise ValueError(f"init must be one of {INITS} or a [k, D] tensor, got {init!r}")
    check_finite("x", x)
    group = resolve_group(distributed, process_group)
    x = x.to(compute_dtype(x))
    check_magnitude("x", x)
    if normalize:
        x = F.normalize(x, dim=1)

    gen = torch.Generator().manual_seed(int(seed))
    union = _all_gather_rows(x, group)
    if union.shape[0] < k:
        raise ValueError(f"k = {k} clusters need at least k rows, got {union.shape[0]} (x: "
                         f"shape {tuple(x.shape)}, summed over processes)")
    if isinstance(init, torch.Tensor):
        centroids = init.to(x.dtype).clone()
        if normalize:
            centroids = F.normalize(centroids, dim=1)
    elif init == "k-means++":
        centroids = _kmeanspp(union, k, gen, progress)
    else:
        centroids = union[torch.randperm(union.shape[0], generator=gen)[:k].to(x.device)].clone()
    union_rows = union.shape[0]
    del union

    objective, reseeded = [], []
    prog = StepProgress(iters + 1, f"IBB k-means ({k} clusters, {union_rows} rows)", progress)
    for it in range(iters + 1):
        assign, sums, counts, min_dist = kmeans_step(x, centroids, impl=impl)
        all_reduce(sums, group)
        all_reduce(counts, group)
        obj = float(all_reduce(min_dist.sum().reshape(1), group))
        objective.append(obj)
        stop = it == iters or (it > 0 and not reseeded[-1] and objective[-2] - obj <= tol * abs(objective[-2]))
        if prog.mode != "off":  # (the count of empty clusters is a sync on CUDA)
            prog.step(last=stop, objective=obj, empty=int((counts == 0).sum()))
        if stop:
            break
        nonempty = counts > 0
        means = sums / counts.clamp_min(1).to(sums.dtype)[:, None]
        centroids = torch.where(nonempty[:, None], means, centroids)
        if normalize:
            centroids = F.normalize(centroids, dim=1)
        empty = (~nonempty).nonzero().flatten()
        if empty.numel():
            centroids[empty] = _reseed_candidates(x, min_dist, empty.numel(), group)
        reseeded.append(int(empty.numel()))
    prog.close()
    return KMeansResult(centroids, assign, counts, objective, reseeded)
