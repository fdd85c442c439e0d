"""The IBB term of training: the :class:`~ribkernels.nn.ibb_loss.IBBLoss` train.py builds from the
config (``ibb`` section), its input-cluster images, its per-batch terms, and the controls that test it
(cosine prototypes with a matched gradient scale, shuffled labels)."""
import random
from typing import Dict

import torch
import torch.nn.functional as F

from ..reid import ImageDataset
from .data import DataBundle, derived_seed


def build_ibb(cfg: Dict, data: DataBundle, model: torch.nn.Module):
    c = cfg["ibb"]
    if not c["enabled"]:
        return None
    from ..nn.ibb_loss import IBBLoss

    kwargs = dict(kmeans_iters=int(c["kmeans_iters"]), seed=int(cfg["solver"]["seed"]),
                  input_size=tuple(c["input_size"]), target_entropy=float(c["target_entropy"]),
                  q_smoothing=float(c["q_smoothing"]), progress=cfg["output"]["progress"])
    if c["input_clusters"] is not None:
        kwargs["num_input_clusters"] = int(c["input_clusters"])
    beta = "auto" if c["beta"] == "auto" else float(c["beta"])
    return IBBLoss(data.num_classes, int(model.feat_dim), c["clusters"], beta, **kwargs)


def input_cluster_images(data: DataBundle, cfg: Dict, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's share of a fixed random subset of training images (test transform), already
    area-down-sampled to ``ibb.input_size`` (what ``IBBLoss.set_input_clusters`` down-samples to, so
    it is unchanged there) to keep thousands of them small. Every rank draws the same subset, then
    takes its strided share."""
    n = min(len(data.train), int(cfg["ibb"]["input_samples"]))
    idx = sorted(random.Random(derived_seed(seed, "input-clusters")).sample(range(len(data.train)), n))
    idx = idx[rank::world]
    ds = ImageDataset([data.train[i] for i in idx], data.test_transform)
    size = tuple(int(v) for v in cfg["ibb"]["input_size"])
    return torch.stack([F.interpolate(ds[i]["img"][None], size=size, mode="area")[0] for i in range(len(ds))])


def ibb_terms(ibb, feats: torch.Tensor, pids: torch.Tensor, images: torch.Tensor):
    """(bound with gradient, input-entropy term, label term) for a batch."""
    ent = ibb.input_entropy(images)
    bound = ibb(feats, pids, input_entropy=ent)
    t = ibb.last_terms
    return bound, t.get("input_entropy"), t.get("label_term")


PROTOTYPE_SCALE = 16.0  # the cosine-prototype control's logit scale (a cosine-softmax's usual range)


def control_prototypes(ibb) -> torch.Tensor:
    """Identity prototypes [K, D] (unit norm) from the IBB's refreshed centroids c_a [A, D] and label table
    Q(y|a): ``P_y ∝ sum_a p(a|y) c_a`` with ``p(a|y) ∝ Q(y|a)`` (uniform p(a)), after undoing Q's
    uniform smoothing; the same clusters the IBB uses, without its information-bottleneck form."""
    q = ibb.log_q.double().exp()
    k = q.shape[1]
    lam = float(getattr(ibb, "q_smoothing", 0.0) or 0.0)
    if lam:
        q = ((q - lam / k) / (1.0 - lam)).clamp_min(0.0)
    w = q / q.sum(0, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)  # [A, K]
    return F.normalize((w.T @ ibb.centroids.double()).float(), dim=1)


def prototype_loss(ibb, feats: torch.Tensor, pids: torch.Tensor, scale: float = PROTOTYPE_SCALE) -> torch.Tensor:
    """The non-IB control: cross-entropy of ``scale * cos(F_i, P_y)`` over the identities, with the
    prototypes of :func:`control_prototypes` (no gradient into them); ``feats`` [B, D], ``pids`` [B]."""
    protos = control_prototypes(ibb).to(feats.device)
    logits = scale * F.normalize(feats.float(), dim=1) @ protos.T
    return F.cross_entropy(logits, pids)


def matched_scale(target: torch.Tensor, control: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """``||d target/dF|| / ||d control/dF||`` (0-d, detached; 0 when the control has no gradient): the
    factor that gives ``control`` the gradient norm of ``target`` on the feature F. Graphs are kept."""
    g_t, = torch.autograd.grad(target, feature, retain_graph=True, allow_unused=True)
    g_c, = torch.autograd.grad(control, feature, retain_graph=True, allow_unused=True)
    if g_t is None or g_c is None:
        return torch.zeros((), device=feature.device)
    n_c = g_c.float().norm()
    return torch.where(n_c > 0, g_t.float().norm() / n_c.clamp_min(1e-30), torch.zeros_like(n_c)).detach()


def shuffled_labels(labels: torch.Tensor, seed: int, epoch: int, rank: int) -> torch.Tensor:
    """``labels`` permuted by a permutation fixed by (seed, epoch, rank): the label-shuffled Q control."""
    g = torch.Generator().manual_seed(derived_seed(seed, "shuffled-q", epoch, rank))
    return labels[torch.randperm(len(labels), generator=g).to(labels.device)]
