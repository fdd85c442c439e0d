"""Evaluation of train.py: mAP / CMC / mINP on the query/gallery split (with standard errors over
queries), and the occlusion stress table."""
from typing import Callable, Dict, List

import torch

from ..reid import evaluate as reid_evaluate, occlusion_stress_test
from .data import DataBundle
from .features import extract_features
from .model import model_inputs
from .reporting import no_progress


def rank_result(qf, gf, qp, gp, qc, gc, cfg: Dict, progress: Callable = no_progress) -> Dict[str, float]:
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
    return rank_result(qf, gf, qp, gp, qc, gc, cfg, progress)


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
            bs = int(cfg["eval"]["batch_size"])
            for s in range(0, len(images), bs):
                x = torch.stack([data.test_transform(im) for im in images[s:s + bs]]).to(device)
                cams = torch.as_tensor(camids[s:s + bs], dtype=torch.long, device=device)
                with autocast():
                    f = model(x, **model_inputs(mcfg, cams, None))
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
