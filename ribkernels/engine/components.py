"""What the trainer builds from the config: data, model, losses, the IBB, feature extraction and
evaluation. The binding between train.py and the ``ribkernels.models`` / ``ribkernels.reid`` /
``ribkernels.nn.ibb_loss`` APIs lives here and only here."""
import hashlib
import logging
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..reid import (CrossEntropyLabelSmooth, ImageDataset, RandomIdentitySampler, TripletLoss, build_dataset,
                    build_transforms, evaluate as reid_evaluate, occlusion_stress_test)
from . import data as D
from .reporting import no_progress

log = logging.getLogger("ribkernels.train")


def _seed(*parts) -> int:
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


# ---------------------------------------------------------------------------------------- data
@dataclass
class DataBundle:
    train: List[Tuple[str, int, int]]
    query: List[Tuple[str, int, int]]
    gallery: List[Tuple[str, int, int]]
    num_classes: int
    num_cams: int
    num_views: int
    train_transform: Callable
    test_transform: Callable
    num_workers: int
    pin_memory: bool
    sampler: object  # None when built for evaluation only
    name: str = ""
    bad_images: Tuple[Tuple[str, str], ...] = ()  # (path, reason) left out with data.skip_bad_images
    root: str = ""  # the folder the images were read from (the synthetic dataset's generated folder too)

    def train_loader(self, cfg: Dict, indices: Sequence[int], batch_size: int, seed: int, offset: int = 0):
        """Training batches of ``indices`` (which start at position ``offset`` of the epoch); each
        sample's augmentation is seeded from ``seed`` and its position (exact mid-epoch resume)."""
        return D.make_loader(ImageDataset(self.train, self.train_transform), indices, batch_size,
                             self.num_workers, seed=seed, drop_last=True, pin_memory=self.pin_memory,
                             sample_seed=seed, offset=offset)

    def train_eval_loader(self, cfg: Dict, rank: int, world: int):
        """This rank's share of the training set with test transforms (for the IBB refresh)."""
        return D.make_loader(ImageDataset(self.train, self.test_transform), D.shard(len(self.train), rank, world),
                             cfg["eval"]["eval_batch_size"], self.num_workers, pin_memory=self.pin_memory)

    def test_loader(self, cfg: Dict, items, transform: Optional[Callable] = None):
        return D.make_loader(ImageDataset(items, transform or self.test_transform), None,
                             cfg["eval"]["eval_batch_size"], self.num_workers, pin_memory=self.pin_memory)


def build_data(cfg: Dict, rank: int = 0, world: int = 1, *, train: bool = True) -> DataBundle:
    """The dataset, its transforms and (``train``) the PK sampler; ``train=False`` (evaluation only)
    builds no sampler, so a training split too small for one PK batch is no error."""
    d = cfg["data"]
    name = d["dataset"]
    kwargs = dict(d["dataset_kwargs"] or {})
    kwargs["skip_bad_images"] = d.get("skip_bad_images", False)  # a bool (checked by build_dataset)
    root = d["data_root"]
    if name == "synthetic":
        root = root if root not in (None, "", "data") else None
    # Rank 0 first: it generates the synthetic cache and decodes every image once (the verdicts are
    # cached), so the other ranks only read caches. Both are atomic; this just avoids duplicate work.
    from . import distributed as du

    if rank == 0:
        ds = build_dataset(name, root, **kwargs)
    du.barrier()
    if rank != 0:
        ds = build_dataset(name, root, **kwargs)
    if ds.bad_images:
        dropped = (f"; {len(ds.dropped_train_pids)} training identities left with no image dropped (labels "
                   "relabelled)") if ds.dropped_train_pids else ""
        log.warning("dataset %s: skipped %d unreadable image(s) (data.skip_bad_images), e.g. %s%s", ds.name,
                    len(ds.bad_images), ds.bad_images[0][0], dropped)
    h, w = cfg["model"]["img_size"]
    common = dict(mean=d["pixel_mean"], std=d["pixel_std"])
    train_tf = build_transforms(h, w, True, flip_prob=d["flip_prob"], padding=d["padding"],
                                re_prob=d["erasing_prob"], **common)
    test_tf = build_transforms(h, w, False, test_interpolation=d["test_interpolation"], **common)
    sampler = RandomIdentitySampler(ds.train, d["batch_size"], d["num_instances"],
                                    seed=_seed(cfg["solver"]["seed"], "pk")) if train else None
    return DataBundle(train=list(ds.train), query=list(ds.query), gallery=list(ds.gallery),
                      num_classes=ds.num_train_pids, num_cams=ds.num_train_cams, num_views=1,
                      train_transform=train_tf, test_transform=test_tf, num_workers=int(d["num_workers"]),
                      pin_memory=torch.cuda.is_available(), sampler=sampler, name=ds.name,
                      bad_images=tuple(ds.bad_images), root=str(ds.root or ""))


def epoch_indices(data: DataBundle, cfg: Dict, seed: int, epoch: int, rank: int, world: int,
                  min_len: int = 0) -> List[int]:
    """This rank's training indices for ``epoch`` (PK batches, P/world identities × K per batch), a
    function of (seed, epoch) only; extended with further PK rounds up to ``min_len``."""
    return D.pk_epoch_indices(data.sampler, epoch, rank, world, min_len)


def unpack(batch, device: torch.device):
    """(images, pids, camids, viewids) on ``device`` from a loader batch (tuple/list or dict)."""
    if isinstance(batch, dict):
        imgs, pids = batch["img"], batch["pid"]
        cams, views = batch.get("camid"), batch.get("viewid")
    else:
        imgs, pids, cams = batch[0], batch[1], batch[2]
        views = batch[3] if len(batch) > 3 else None
    nb = device.type == "cuda"
    to = lambda t: None if t is None else torch.as_tensor(t).to(device, non_blocking=nb)
    return to(imgs), to(pids).long(), to(cams).long(), (to(views).long() if views is not None else None)


# ---------------------------------------------------------------------------------------- model
def build_model(cfg: Dict, data: DataBundle) -> torch.nn.Module:
    from ..models import build_model as _build

    m = cfg["model"]
    kwargs = dict(attn_impl=m["attn_impl"], img_size=tuple(m["img_size"]), pretrained=m["pretrained"],
                  neck_feat=m["neck_feat"])
    if m["attn_impl"] == "dcs":
        kwargs["dcs_kwargs"] = {"mask_mode": m["dcs_mask_mode"], "tau": m["tau"], "impl": m["dcs_impl"],
                                "init_logit": m["dcs_init_logit"], "mask_per": m["dcs_mask_per"]}
    kwargs.update(m["model_kwargs"] or {})
    return _build(m["name"], data.num_classes, data.num_cams if m["sie_camera"] else 0,
                  data.num_views if m["sie_view"] else 0, **kwargs)


def _labels(model_cfg: Dict, cams, views):
    return dict(cam_label=cams if model_cfg["sie_camera"] else None,
                view_label=views if model_cfg["sie_view"] else None)


_warned_slice = False


@torch.no_grad()
def global_features(model: torch.nn.Module, images, cams, views, model_cfg: Dict) -> torch.Tensor:
    """The global feature the IBB clusters, [B, feat_dim], eval mode: before the BNNeck, or after it
    when ``model_cfg["ibb_after_neck"]`` (set by the trainer from ``ibb.ibb_feature``)."""
    global _warned_slice
    model.eval()
    labels = _labels(model_cfg, cams, views)
    if hasattr(model, "forward_global"):
        f = model.forward_global(images, **labels)
        return model.neck.bn(f) if model_cfg.get("ibb_after_neck") else f
    out = model(images, **labels)
    if isinstance(out, dict):
        return out["global_feat"]
    if model_cfg["neck_feat"] != "before" or out.shape[1] != model.feat_dim:
        if not _warned_slice:
            log.warning("model has no forward_global(): using the first feat_dim columns of the eval feature "
                        "for the IBB refresh")
            _warned_slice = True
    return out[:, : model.feat_dim]


@torch.no_grad()
def extract_global_features(model, loader, device, autocast, model_cfg: Dict, progress=None):
    """(features [N, dim], pids [N]) of ``loader`` (eval mode); ``progress``: a TaskProgress counting images."""
    was_training = model.training
    feats, labels = [], []
    try:
        for batch in loader:
            imgs, pids, cams, views = unpack(batch, device)
            with autocast():
                f = global_features(model, imgs, cams, views, model_cfg)
            feats.append(f.float())
            labels.append(pids)
            if progress is not None:
                progress.update(len(pids))
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def extract_features(model, loader, device, autocast, model_cfg: Dict, image_fn: Optional[Callable] = None,
                     progress=None):
    """Retrieval features (eval mode) with pids and camids of a query/gallery loader; ``progress``: a
    TaskProgress counting images."""
    was_training = model.training
    model.eval()
    feats, pids_all, cams_all = [], [], []
    try:
        for batch in loader:
            imgs, pids, cams, views = unpack(batch, device)
            if image_fn is not None:
                imgs = image_fn(imgs, pids)
            with autocast():
                f = model(imgs, **_labels(model_cfg, cams, views))
            feats.append(f.float())
            pids_all.append(pids.cpu())
            cams_all.append(cams.cpu())
            if progress is not None:
                progress.update(len(pids))
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(pids_all).numpy(), torch.cat(cams_all).numpy()


# ---------------------------------------------------------------------------------------- losses
class _Triplet(torch.nn.Module):
    """``ribkernels.reid.TripletLoss`` returning the loss only."""

    def __init__(self, margin: Optional[float]):
        super().__init__()
        self.inner = TripletLoss(margin)

    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        return self.inner(feats, pids)[0]


def build_losses(cfg: Dict, num_classes: int):
    l = cfg["loss"]
    return CrossEntropyLabelSmooth(num_classes, float(l["label_smoothing"] or 0.0)), _Triplet(l["triplet_margin"])


# ---------------------------------------------------------------------------------------- IBB
def build_ibb(cfg: Dict, data: DataBundle, model: torch.nn.Module):
    c = cfg["ibb"]
    if not c["use_ibb"]:
        return None
    from ..nn.ibb_loss import IBBLoss

    kwargs = dict(kmeans_iters=int(c["kmeans_iters"]), seed=int(cfg["solver"]["seed"]),
                  input_size=tuple(c["input_size"]), target_entropy=float(c["target_entropy"]),
                  q_smoothing=float(c["q_smoothing"]), progress=cfg["output"]["progress"])
    if c["input_clusters"] is not None:
        kwargs["num_input_clusters"] = int(c["input_clusters"])
    beta = "auto" if c["beta"] == "auto" else float(c["beta"])
    return IBBLoss(data.num_classes, int(model.feat_dim), c["ibb_clusters"], beta, **kwargs)


def input_cluster_images(data: DataBundle, cfg: Dict, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's share of a fixed random subset of training images (test transform), already
    area-down-sampled to ``ibb.input_size`` (what ``IBBLoss.set_input_clusters`` down-samples to, so
    it is unchanged there) to keep thousands of them small. Every rank draws the same subset, then
    takes its strided share."""
    n = min(len(data.train), int(cfg["ibb"]["input_samples"]))
    idx = sorted(random.Random(_seed(seed, "input-clusters")).sample(range(len(data.train)), n))
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
    g = torch.Generator().manual_seed(_seed(seed, "shuffled-q", epoch, rank))
    return labels[torch.randperm(len(labels), generator=g).to(labels.device)]


# ---------------------------------------------------------------------------------------- evaluation
def _rank_result(qf, gf, qp, gp, qc, gc, cfg: Dict, progress: Callable = no_progress) -> Dict[str, float]:
    e = cfg["eval"]
    rerank_kwargs = dict(k1=int(e["rerank_k1"]), k2=int(e["rerank_k2"]), lambda_value=float(e["rerank_lambda"]),
                         progress=progress)
    res = reid_evaluate(qf, gf, qp, gp, qc, gc, metric=e["distance"], normalize=True, max_rank=int(e["max_rank"]),
                        rerank=bool(e["rerank"]), rerank_kwargs=rerank_kwargs)
    cmc = res.cmc
    nq = max(int(res.num_valid_queries), 1)
    # standard errors over queries: of the mean AP, and binomial for Rank-1
    ap_se = float(res.all_AP.std(ddof=1) / nq ** 0.5) if len(res.all_AP) > 1 else float("nan")
    return {"mAP": float(res.mAP), "rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
            "rank10": float(cmc[min(9, len(cmc) - 1)]), "mINP": float(res.mINP),
            "num_valid_queries": int(res.num_valid_queries), "mAP_se": ap_se,
            "rank1_se": float((cmc[0] * (1 - cmc[0]) / nq) ** 0.5)}


def evaluate(model, data: DataBundle, cfg: Dict, device, autocast, progress: Callable = no_progress) -> Dict[str, float]:
    """mAP / CMC / mINP of ``model`` on the query/gallery split. ``progress(desc, total, unit=...)``: a
    :class:`~ribkernels.engine.reporting.TaskProgress` factory (feature passes and re-ranking)."""
    with progress("evaluation: query features", len(data.query)) as p:
        qf, qp, qc = extract_features(model, data.test_loader(cfg, data.query), device, autocast, cfg["model"],
                                      progress=p)
    with progress("evaluation: gallery features", len(data.gallery)) as p:
        gf, gp, gc = extract_features(model, data.test_loader(cfg, data.gallery), device, autocast, cfg["model"],
                                      progress=p)
    return _rank_result(qf, gf, qp, gp, qc, gc, cfg, progress)


def occlusion_table(model, data: DataBundle, cfg: Dict, device, autocast,
                    progress: Callable = no_progress) -> List[Dict]:
    """``ribkernels.reid.occlusion_stress_test``: query images with a synthetic occluder covering each
    of ``eval.occlusion_ratios`` of the body (plus 0), against the clean gallery. ``progress``: as in
    :func:`evaluate` (one count per image: the gallery once, the queries at every level)."""
    mcfg = cfg["model"]
    levels = [0.0] + [float(r) for r in cfg["eval"]["occlusion_ratios"] if float(r) > 0]
    bar = progress(f"occlusion test ({len(levels)} levels)", len(data.gallery) + len(levels) * len(data.query))

    @torch.no_grad()
    def extract(images, camids):
        was_training = model.training
        model.eval()
        try:
            feats = []
            bs = int(cfg["eval"]["eval_batch_size"])
            for s in range(0, len(images), bs):
                x = torch.stack([data.test_transform(im) for im in images[s:s + bs]]).to(device)
                cams = torch.as_tensor(camids[s:s + bs], dtype=torch.long, device=device)
                with autocast():
                    f = model(x, **_labels(mcfg, cams, None))
                feats.append(f.float().cpu())
                bar.update(len(x))
            return torch.cat(feats).numpy()
        finally:
            model.train(was_training)

    with bar:
        rows = occlusion_stress_test(extract, data.query, data.gallery, levels, seed=int(cfg["solver"]["seed"]),
                                     metric=cfg["eval"]["distance"], max_rank=int(cfg["eval"]["max_rank"]))
    for r in rows:
        r["ratio"] = r["occlusion"]
    return rows
