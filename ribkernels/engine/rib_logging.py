"""What the trainer logs about RIB itself: the IBB refresh diagnostics (β used, mean max
phi, mean H(Q(·|a)), both terms, the IBB/task gradient ratio on the feature), the per-block keep
fraction of the DCS masks in training and in eval, how the eval mask varies over tokens vs channels,
and the ``rib.png`` plot. (The τ schedule, behaviour rather than logging, is in ``tau_schedule.py``.)

Keep-fraction logging uses the ``DCSAttention`` interface: the flag ``track_keep_fraction`` (set only
around the steps that log) and the detached 0-d tensor ``last_keep_fraction`` of each module.
"""
from typing import Dict, Optional, Tuple

import torch

from .model import dcs_modules
from .tau_schedule import TAU_SCHEDULES, set_tau, tau_at  # noqa: F401 (their old home)


# ------------------------------------------------------------------------------------------- IBB
def refresh_record(ibb) -> Dict[str, float]:
    """The last ``IBBLoss.refresh`` diagnostics as epoch-record keys (``ibb_refresh_*``)."""
    r = getattr(ibb, "last_refresh", None) or {}
    keys = ("beta", "mean_max_phi", "mean_phi_entropy", "mean_q_entropy", "label_term", "log_num_classes")
    out = {f"ibb_refresh_{k}": float(r[k]) for k in keys if k in r}
    if getattr(ibb, "input_ready", None) is not None and bool(ibb.input_ready):
        out["ibb_refresh_input_beta"] = float(ibb.input_beta_used)
    return out


def grad_ratio(task_loss: torch.Tensor, ibb_weighted: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """``||d(η·IBB)/dF|| / ||d(task loss)/dF||`` on the global feature F [B, D] of the batch (0-d
    tensor, no host sync); the graph is kept for the backward that follows."""
    g_task, = torch.autograd.grad(task_loss, feature, retain_graph=True, allow_unused=True)
    g_ibb, = torch.autograd.grad(ibb_weighted, feature, retain_graph=True, allow_unused=True)
    if g_ibb is None:
        return torch.zeros((), device=feature.device)
    if g_task is None:
        return torch.full((), float("inf"), device=feature.device)
    return (g_ibb.float().norm() / g_task.float().norm().clamp_min(1e-30)).detach()


# ------------------------------------------------------------------------------------------- DCS mask
def set_tracking(model: torch.nn.Module, on: bool) -> None:
    for m in dcs_modules(model):
        m.track_keep_fraction = on


def block_keep_fractions(model: torch.nn.Module, prefix: str) -> Dict[str, torch.Tensor]:
    """``{prefix}_b{i}``: the keep fraction of block i's last forward (0-d tensors, no sync), and
    ``{prefix}`` their mean."""
    vals = [getattr(m, "last_keep_fraction", None) for m in dcs_modules(model)]
    out = {f"{prefix}_b{i}": v.detach().float() for i, v in enumerate(vals) if v is not None}
    if out:
        out[prefix] = torch.stack(list(out.values())).mean()
    return out


def mask_variation(theta: torch.Tensor) -> Dict[str, torch.Tensor]:
    """How much a DCS mask varies over tokens vs over channels, from its logits ``theta`` [B, H, N, d]
    (token mode) or [1, H, 1, d] (channel mode). With p = sigmoid(theta), the keep probability:
    ``var_tokens``: variance of p over the N tokens, averaged over images, heads and channels;
    ``var_channels``: variance of p over the d channels, averaged over images, heads and tokens;
    ``token_varying_bits``: share of the eval mask's (image, head, channel) bits ``1[theta > 0]`` that are
    not the same for all tokens of the image (0: every token keeps the same channels). 0-d tensors."""
    if theta.dim() != 4:
        raise ValueError(f"theta: expected [B, H, N, d], got shape {tuple(theta.shape)}")
    p = torch.sigmoid(theta.float())
    bits = theta > 0
    zero = p.new_zeros(())
    return {"var_tokens": p.var(dim=2, unbiased=False).mean() if p.shape[2] > 1 else zero,
            "var_channels": p.var(dim=3, unbiased=False).mean() if p.shape[3] > 1 else zero,
            "token_varying_bits": (bits.any(dim=2) & ~bits.all(dim=2)).float().mean()}


@torch.no_grad()
def eval_keep_fractions(model: torch.nn.Module, images: torch.Tensor, **labels) -> Dict[str, float]:
    """Per-block keep fraction of the eval mask (``1[θ > 0]``) on ``images`` (one forward, eval mode),
    ``eval_keep_fraction_b{i}``, and from the same forward the mask's variation per block
    (:func:`mask_variation`): ``mask_var_tokens_b{i}``, ``mask_var_channels_b{i}``,
    ``mask_token_varying_bits_b{i}``; each key without ``_b{i}`` is the mean over blocks."""
    mods = dcs_modules(model)
    if not mods:
        return {}
    was = model.training
    model.eval()
    set_tracking(model, True)
    variation: Dict[int, Dict[str, torch.Tensor]] = {}

    def hook(i):
        def fn(mod, args, out):
            variation[i] = mask_variation(mod.compute_mask_logits(args[0]))
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(mods)]
    try:
        model(images, **labels)
        out = {k: float(v) for k, v in block_keep_fractions(model, "eval_keep_fraction").items()}
        for key in ("var_tokens", "var_channels", "token_varying_bits"):
            vals = {i: float(v[key]) for i, v in sorted(variation.items())}
            out.update({f"mask_{key}_b{i}": v for i, v in vals.items()})
            if vals:
                out[f"mask_{key}"] = sum(vals.values()) / len(vals)
        return out
    finally:
        for h in handles:
            h.remove()
        set_tracking(model, False)
        model.train(was)


def _block_attention(attn: torch.nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(eval attention probabilities [B, H, N, N], eval DCS mask [B, H, N, d] or None) of a ViT attention
    module (timm ``Attention`` or ``DCSAttention``) on its input tokens ``x`` [B, N, C], recomputed the
    way the module computes them: ``softmax(scale (q⊙M)(k⊙M)ᵀ)`` with ``M = 1[θ > 0]`` under DCS."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    mask = None
    if hasattr(attn, "compute_mask_logits"):
        mask = (attn.compute_mask_logits(x) > 0).to(q.dtype).expand(B, -1, N, -1)
        q, k = q * mask, k * mask
    return ((q.float() @ k.float().transpose(-2, -1)) * attn.scale).softmax(-1), mask


@torch.no_grad()
def nuisance_token_stats(model: torch.nn.Module, images: torch.Tensor, occluder: torch.Tensor,
                         background: torch.Tensor, **labels) -> Dict[str, float]:
    """Where the eval-mode model looks and what its DCS masks keep, against per-patch ground truth
    (``ribkernels.reid.synthetic.load_ground_truth``): ``images`` [B, 3, H, W], ``occluder`` and
    ``background`` [B, gh, gw] (pixel shares per patch; the rest is the target person), on a model with
    ``blocks`` of timm-style attention over ``[CLS] + gh*gw`` patch tokens (row-major). Per block i:

    * ``attn_{part}_b{i}``: share of the CLS token's attention over the patches (mean over heads) that
      lands on ``part`` pixels (occluder / background / person), pooled over images, beside
      ``share_{part}``, the part's share of all patch pixels (what uniform attention would give);
    * with DCS, ``keep_{part}_b{i}``: the eval mask's keep fraction (over heads and channels) of the
      patch tokens, weighted by their ``part`` pixels: the keep rate of occluder / background / person.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "forward_global"):
        raise ValueError("model: expected a ViT Re-ID model with blocks and forward_global()")
    occ, bg = occluder.float().flatten(1), background.float().flatten(1)
    if occ.shape != bg.shape or occ.shape[0] != images.shape[0]:
        raise ValueError(f"occluder, background: expected [B, gh, gw] for B = {images.shape[0]}, got "
                         f"{tuple(occluder.shape)} and {tuple(background.shape)}")
    parts = {"occluder": occ, "background": bg, "person": (1.0 - occ - bg).clamp_min(0.0)}
    inputs: Dict[int, torch.Tensor] = {}
    handles = [blk.attn.register_forward_hook(lambda mod, args, out, i=i: inputs.__setitem__(i, args[0]))
               for i, blk in enumerate(blocks)]
    was = model.training
    model.eval()
    try:
        model.forward_global(images, **labels)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out: Dict[str, float] = {}
    for name, w in parts.items():
        out[f"share_{name}"] = float(w.sum() / (occ.numel()))
    for i in sorted(inputs):
        probs, mask = _block_attention(blocks[i].attn, inputs[i])
        if probs.shape[-1] - 1 != occ.shape[1]:
            raise ValueError(f"occluder: {occ.shape[1]} patches per image, but block {i} has {probs.shape[-1] - 1} "
                             "patch tokens (the ground truth's patch grid must be the model's)")
        cls = probs[:, :, 0, 1:].mean(1)  # [B, P]
        cls = cls / cls.sum(1, keepdim=True)
        keep = mask[:, :, 1:].float().mean(dim=(1, 3)) if mask is not None else None  # [B, P]
        for name, w in parts.items():
            out[f"attn_{name}_b{i}"] = float((cls * w).sum() / w.shape[0])
            if keep is not None:
                out[f"keep_{name}_b{i}"] = float((keep * w).sum() / w.sum().clamp_min(1e-12))
    return out


# ------------------------------------------------------------------------------------------- plot
def plot_rib(metrics: Dict, out_dir: str) -> Optional[str]:
    """``rib.png``: β and the assignment diagnostics per refresh, the prediction term against log K,
    the IBB/task gradient ratio, and the per-block keep fractions (train and eval) per epoch."""
    epochs = metrics.get("epochs") or []
    has_ibb = any("ibb_refresh_beta" in r for r in epochs)
    has_kf = any(any(k.startswith("keep_fraction_b") for k in r) for r in epochs)
    if not (has_ibb or has_kf):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .reporting import save_figure, legend_outside

    def series(key):
        pts = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(2, 2, figsize=(11, 9))
    ax = axes[0, 0]
    if has_ibb:
        ax.plot(*series("ibb_refresh_beta"), marker="o", label="β (refresh features)")
        if any("ibb_beta_train" in r for r in epochs):
            ax.plot(*series("ibb_beta_train"), marker="^", label="β (training batches, epoch mean)")
        if any("ibb_refresh_input_beta" in r for r in epochs):
            ax.plot(*series("ibb_refresh_input_beta"), marker="s", label="β (input clusters)")
        ax.set_yscale("log")
        legend_outside(ax)
    ax.set_title("β used at each refresh")
    ax = axes[0, 1]
    for key, label in (("ibb_refresh_mean_max_phi", "mean max φ"), ("ibb_refresh_mean_phi_entropy", "mean H(φ)"),
                       ("ibb_refresh_mean_q_entropy", "mean H(Q(·|a))")):
        if any(key in r for r in epochs):
            ax.plot(*series(key), marker="o", label=label)
    ax.set_title("refresh: assignments and label table")
    if has_ibb:
        legend_outside(ax)
    ax = axes[1, 0]
    for key, label in (("ibb_term2", "prediction term (batches)"), ("ibb_refresh_label_term", "prediction term (refresh)"),
                       ("ibb_refresh_log_num_classes", "log K"), ("ibb_term1", "input term")):
        if any(key in r for r in epochs):
            ax.plot(*series(key), marker="o", ms=3, label=label, ls="--" if "log_num" in key else "-")
    handles, labels = ax.get_legend_handles_labels()
    if any("ibb_grad_ratio" in r for r in epochs):
        ax2 = ax.twinx()
        ax2.plot(*series("ibb_grad_ratio"), color="black", marker="x", label="|∇IBB| / |∇task| on F (right axis)")
        ax2.set_ylabel("gradient ratio")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.set_title("IBB terms (nats)")
    if handles:
        legend_outside(ax, handles, labels)
    ax = axes[1, 1]
    blocks = sorted({k for r in epochs for k in r if k.startswith("keep_fraction_b")}, key=lambda k: int(k.rsplit("b", 1)[1]))
    for i, k in enumerate(blocks):
        line, = ax.plot(*series(k), label=f"block {k.rsplit('b', 1)[1]} train")
        ev = "eval_" + k
        if any(ev in r for r in epochs):
            ax.plot(*series(ev), ls="--", color=line.get_color(), label=f"block {k.rsplit('b', 1)[1]} eval")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("kept DCS channels per block")
    if blocks:
        legend_outside(ax, ncol=3, fontsize=7)
    from matplotlib.ticker import MaxNLocator

    for a in axes.flat:
        a.set_xlabel("epoch")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, out_dir, "rib.png")
