"""Evaluation of train.py: mAP / CMC / mINP on the query/gallery split (with standard errors over
queries), and the occlusion stress table."""
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

from ..reid import evaluate as reid_evaluate, occlusion_stress_test
from .data import DataBundle
from .features import extract_features
from .model import model_inputs
from .reporting import no_progress


# per-query AP is stored with this many decimals: its mean then matches mAP to 5e-6, and metrics.json
# stays small (about 8 bytes a query)
PER_QUERY_DECIMALS = 5


def per_query_record(res, q_pids: Sequence[int]) -> Dict[str, List]:
    """The valid queries of a :class:`~ribkernels.reid.evaluation.RankResult` (query order), as
    metrics.json stores them: ``{"query_pids": [int], "AP": [float, PER_QUERY_DECIMALS decimals],
    "rank1": [0 or 1]}``; ``q_pids``: the identity of every query [num_query]."""
    pids = np.asarray(q_pids)
    if pids.shape != res.valid.shape:
        raise ValueError(f"q_pids: expected one identity per query ({res.valid.shape[0]}), got shape {pids.shape}")
    return {"query_pids": [int(p) for p in pids[res.valid]],
            "AP": [round(float(a), PER_QUERY_DECIMALS) for a in res.all_AP],
            "rank1": [int(h) for h in res.all_rank1_hit]}


def rank_result(qf, gf, qp, gp, qc, gc, cfg: Dict, progress: Callable = no_progress,
                per_query: bool = False) -> Dict:
    """The metrics of the query features ``qf`` [num_q, dim] against the gallery ``gf`` [num_g, dim]
    (pids ``qp``/``gp``, cameras ``qc``/``gc``); with ``per_query`` also ``"per_query"``
    (:func:`per_query_record`)."""
    e = cfg["eval"]
    rerank_kwargs = dict(k1=int(e["rerank_k1"]), k2=int(e["rerank_k2"]), lambda_value=float(e["rerank_lambda"]),
                         progress=progress)
    res = reid_evaluate(qf, gf, qp, gp, qc, gc, metric=e["distance"], normalize=True, max_rank=int(e["max_rank"]),
                        rerank=bool(e["rerank"]), rerank_kwargs=rerank_kwargs)
    cmc = res.cmc
    nq = max(int(res.num_valid_queries), 1)
    # standard errors over queries: of the mean AP, and binomial for Rank-1
    ap_se = float(res.all_AP.std(ddof=1) / nq ** 0.5) if len(res.all_AP) > 1 else float("nan")
    out = {"mAP": float(res.mAP), "rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
           "rank10": float(cmc[min(9, len(cmc) - 1)]), "mINP": float(res.mINP),
           "num_valid_queries": int(res.num_valid_queries), "mAP_se": ap_se,
           "rank1_se": float((cmc[0] * (1 - cmc[0]) / nq) ** 0.5)}
    if per_query:
        out["per_query"] = per_query_record(res, qp)
    return out


def evaluate(model, data: DataBundle, cfg: Dict, device, autocast, progress: Callable = no_progress,
             per_query: bool = False) -> Dict:
    """mAP / CMC / mINP of ``model`` on the query/gallery split (with ``per_query``: also each query's
    AP and rank-1 hit, see :func:`rank_result`). ``progress(desc, total, unit=...)``: a
    :class:`~ribkernels.engine.reporting.TaskProgress` factory (feature passes and re-ranking)."""
    with progress("evaluation: query features", len(data.query)) as p:
        qf, qp, qc = extract_features(model, data.test_loader(cfg, data.query), device, autocast, cfg["model"],
                                      progress=p)
    with progress("evaluation: gallery features", len(data.gallery)) as p:
        gf, gp, gc = extract_features(model, data.test_loader(cfg, data.gallery), device, autocast, cfg["model"],
                                      progress=p)
    return rank_result(qf, gf, qp, gp, qc, gc, cfg, progress, per_query=per_query)


def occlusion_table(model, data: DataBundle, cfg: Dict, device, autocast,
                    progress: Callable = no_progress, per_query: bool = False) -> List[Dict]:
    """``ribkernels.reid.occlusion_stress_test``: query images with a synthetic occluder covering each
    of ``eval.occlusion_ratios`` of the body (plus 0), against the clean gallery. ``progress``: as in
    :func:`evaluate` (one count per image: the gallery once, the queries at every level). With
    ``per_query`` each level's row also holds ``"per_query"`` (:func:`per_query_record`)."""
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
                                     metric=cfg["eval"]["distance"], max_rank=int(cfg["eval"]["max_rank"]),
                                     per_query=per_query)
    q_pids = [pid for _, pid, _ in data.query]
    for r in rows:
        r["ratio"] = r["occlusion"]
        if per_query:
            r["per_query"] = per_query_record(r.pop("rank_result"), q_pids)
    return rows


def occlusion_per_query(rows: List[Dict], query_pids: List[int]) -> Dict[str, Dict[str, List]]:
    """Take ``"per_query"`` out of :func:`occlusion_table`'s ``rows`` (made with ``per_query``):
    ``{str(ratio): {"AP": [...], "rank1": [...]}}``, each level's ``query_pids`` kept only where they
    differ from the clean evaluation's ``query_pids`` (they do not when both saw the same query list)."""
    out = {}
    for r in rows:
        rec = r.pop("per_query")
        if rec["query_pids"] == query_pids:
            del rec["query_pids"]
        out[str(float(r["ratio"]))] = rec
    return out
