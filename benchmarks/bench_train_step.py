"""End to end (docs/performance.md): images/s and peak memory of one TransReID training step — forward, ID +
triplet (+ η·IBB) losses, backward, SGD step — baseline vs RIB-DCS.

CUDA: ViT-B/16 TransReID* (stride 12, 211 tokens, SIE, JPM), batch 64 = 16 ids × 4, 256×128, bf16
autocast. Providers: ``baseline (sdpa)`` (plain attention, no IBB), ``rib_dcs eager`` (DCS-Attention
the way TransReID writes attention + the eager IBB), ``rib_dcs sdpa`` (PyTorch composite) and
``rib_dcs ribkernels`` (the Triton kernels + the IBB extension). ``--device cpu --quick``: the same
on a tiny ViT at 64×32 (no Triton provider).

    python -m benchmarks.bench_train_step --device cuda
    python -m benchmarks.bench_train_step --device cpu --quick
"""
import argparse
import statistics
import time
from typing import Dict, List

import torch

from benchmarks.common import markdown_table
from ribkernels.engine.losses import TripletLossOnly
from ribkernels.models import build_model
from ribkernels.nn.ibb_loss import IBBLoss
from ribkernels.reid import CrossEntropyLabelSmooth

# provider -> (attn_impl, DCS backend, IBB backend or None)
PROVIDERS = {
    "baseline (sdpa)": ("sdpa", None, None),
    "rib_dcs eager": ("dcs", "eager", "eager"),
    "rib_dcs sdpa": ("dcs", "sdpa", "auto"),
    "rib_dcs ribkernels": ("dcs", "triton", "ext"),
}


def _setup(device: str, quick: bool) -> Dict:
    if device == "cuda":
        return dict(model="vit_base_transreid", img=(256, 128), batch=64, ids=751, cams=6, dtype=torch.bfloat16,
                    warmup=3, reps=5 if quick else 15)
    return dict(model="vit_tiny_cpu" if quick else "vit_small_cpu", img=(64, 32) if quick else (128, 64),
                batch=16 if quick else 32, ids=60, cams=6, dtype=None, warmup=1, reps=3 if quick else 5)


def _one(provider: str, device: str, s: Dict) -> Dict:
    attn, dcs_impl, ibb_impl = PROVIDERS[provider]
    torch.manual_seed(0)
    dcs_kwargs = {"impl": dcs_impl} if attn == "dcs" else None
    model = build_model(s["model"], s["ids"], s["cams"], attn_impl=attn, dcs_kwargs=dcs_kwargs,
                        img_size=s["img"]).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    ce, tri = CrossEntropyLabelSmooth(s["ids"], 0.1), TripletLossOnly(None)
    B, (H, W) = s["batch"], s["img"]
    x = torch.randn(B, 3, H, W, device=device)
    pids = torch.arange(B // 4, device=device).repeat_interleave(4)
    cams = torch.randint(0, s["cams"], (B,), device=device)
    ibb = None
    if ibb_impl is not None:
        ibb = IBBLoss(s["ids"], model.feat_dim, impl=ibb_impl, kmeans_iters=2).to(device)
        ibb.set_input_clusters(torch.randn(max(256, s["ids"]), 3, H, W, device=device))
        ibb.refresh(torch.randn(4 * s["ids"], model.feat_dim, device=device),
                    torch.arange(s["ids"], device=device).repeat(4))
    autocast = (torch.autocast("cuda", dtype=s["dtype"]) if s["dtype"] is not None
                else torch.autocast("cpu", enabled=False))

    def step():
        with autocast:
            out = model(x, cam_label=cams)
            mix = lambda xs: xs[0] if len(xs) == 1 else 0.5 * xs[0] + 0.5 * torch.stack(xs[1:]).mean()
            loss = mix([ce(z.float(), pids) for z in out["logits"]]) + mix([tri(f.float(), pids) for f in out["feats"]])
            if ibb is not None:
                loss = loss + ibb(out["global_feat"].float(), pids, input_entropy=ibb.input_entropy(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(s["warmup"]):
        step()
    times: List[float] = []
    peak = float("nan")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(s["reps"]):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        for _ in range(s["reps"]):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    tokens = model.patch_embed.num_patches + 1 if hasattr(model, "patch_embed") else None
    return {"name": "train_step", "provider": provider, "model": s["model"], "pass": "fwd+bwd+step",
            "dtype": str(s["dtype"]).replace("torch.", "") if s["dtype"] else "float32",
            "shape": f"B={B} {H}x{W} N={tokens}", "ms": ms, "images_per_s": B / (ms * 1e-3), "peak_mem_MB": peak}


def run(device: str, quick: bool) -> List[Dict]:
    """One row per provider (providers that cannot run on ``device`` are skipped)."""
    s = _setup(device, quick)
    rows = []
    for provider, (_, dcs_impl, ibb_impl) in PROVIDERS.items():
        if dcs_impl == "triton" and device != "cuda":
            continue
        rows.append(_one(provider, device, s))
        if device == "cuda":
            torch.cuda.empty_cache()
    base = next((r["ms"] for r in rows if r["provider"].startswith("baseline")), None)
    for r in rows:
        r["vs_baseline"] = base / r["ms"] if base else float("nan")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rows = run(args.device, args.quick)
    print(markdown_table(rows, ["provider", "model", "dtype", "shape", "ms", "images_per_s", "peak_mem_MB", "vs_baseline"]))

if __name__ == "__main__":
    main()
