"""``DCSAttention``: a drop-in replacement for timm's ViT ``Attention`` using DCS-Attention.

The parameter names of ``qkv``, ``q_norm``, ``k_norm``, ``norm`` and ``proj`` match timm's, so ViT
weights load unchanged; the only new parameters are the mask logits' (``mask_logits.*``).
"""
import logging
from typing import Optional, Sequence, Type

import torch
from torch import nn

from ..dcs import checks
from ..dcs.attention import dcs_attention

logger = logging.getLogger(__name__)

MASK_MODES = ("token", "channel")


class DCSAttention(nn.Module):
    """Multi-head self-attention whose weights use only channels kept by a binary Gumbel mask.

    mask_mode="token": θ = x W + b per token (``mask_logits`` is ``nn.Linear(dim, dim)``, split into
    heads, the paper's input-dependent form), initialised W = 0, b = ``init_logit``.
    mask_mode="channel": θ is a learned ``[num_heads, head_dim]`` parameter (``mask_logits``).
    With the default ``init_logit=3`` the eval mask keeps every channel: the module starts as the
    plain attention it replaces. Input/output: ``[B, N, dim]``.

    check_nan: passed to :func:`dcs_attention` (None: checked on CPU, not on CUDA; never under
    tracing). track_keep_fraction: when True, each forward stores ``last_keep_fraction``, a detached
    0-d float32 tensor — in training the expected kept fraction ``mean(sigmoid(θ))`` (the mask's
    expectation, not the sampled mask), in eval the exact ``mean(1[θ > 0])``. It costs a pass over θ,
    so it is off by default; set it around logging steps. With it off, ``last_keep_fraction`` keeps
    the value of the last forward that had it on (None before any).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, qk_norm: bool = False,
                 scale_norm: bool = False, proj_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, norm_layer: Optional[Type[nn.Module]] = None,
                 mask_mode: str = "token", tau: float = 1.0, init_logit: float = 3.0, impl: str = "auto",
                 check_nan: Optional[bool] = None, track_keep_fraction: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        if attn_drop:
            raise ValueError(f"attn_drop={attn_drop}: dropout on attention weights is not supported by "
                             "DCSAttention (TransReID trains with attn_drop=0)")
        checks.check_tau(tau)
        norm_layer = norm_layer or nn.LayerNorm
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.mask_mode = mask_mode
        self.tau = tau
        self.impl = impl
        self.check_nan = check_nan
        self.track_keep_fraction = bool(track_keep_fraction)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.norm = norm_layer(dim) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        if mask_mode == "token":
            self.mask_logits = nn.Linear(dim, dim)
            nn.init.zeros_(self.mask_logits.weight)
            nn.init.constant_(self.mask_logits.bias, init_logit)
        else:
            self.mask_logits = nn.Parameter(torch.full((num_heads, self.head_dim), float(init_logit)))
        # See track_keep_fraction in the class docstring.
        self.last_keep_fraction: Optional[torch.Tensor] = None

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, mask_mode={self.mask_mode}, tau={self.tau}, impl={self.impl}"

    def compute_mask_logits(self, x: torch.Tensor) -> torch.Tensor:
        """θ for input ``x`` ``[B, N, dim]``: ``[B, H, N, head_dim]`` (token) or ``[1, H, 1, head_dim]``."""
        if self.mask_mode == "token":
            B, N, _ = x.shape
            return self.mask_logits(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        return self.mask_logits.view(1, self.num_heads, 1, self.head_dim)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("DCSAttention does not take an attn_mask (ViT Re-ID attention is unmasked)")
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"DCSAttention: x must be a 3-D tensor [B, N, C] (batch, tokens, channels), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        theta = self.compute_mask_logits(x)
        if self.track_keep_fraction:
            with torch.no_grad():
                kept = torch.sigmoid(theta.float()) if self.training else (theta > 0).float()
                self.last_keep_fraction = kept.mean()
        x = dcs_attention(q, k, v, theta, tau=self.tau, training=self.training, scale=self.scale,
                          impl=self.impl, check_nan=self.check_nan)
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.norm(x)
        return self.proj_drop(self.proj(x))


def patch_vit(model: nn.Module, attn_types: Optional[Sequence[type]] = None, **kwargs) -> int:
    """Replace every timm ViT ``Attention`` in ``model`` by a :class:`DCSAttention` in place.

    attn_types: the attention classes to replace (exact type match; default timm's
    ``vision_transformer.Attention``); each must have timm's ``qkv``/``proj``/``q_norm``/``k_norm``/
    ``norm`` layout. The qkv/proj (and norm) weights are kept; ``kwargs`` go to ``DCSAttention``
    (mask_mode, tau, init_logit, impl, check_nan, track_keep_fraction). Returns the number of blocks
    changed (also logged); raises ValueError when it finds nothing to patch.
    """
    if attn_types is None:
        from timm.models.vision_transformer import Attention

        attn_types = (Attention,)
    attn_types = tuple(attn_types)
    if not attn_types or not all(isinstance(t, type) for t in attn_types):
        raise ValueError(f"attn_types must be a non-empty sequence of classes, got {attn_types!r}")
    targets = [(name, mod) for name, mod in model.named_modules() if type(mod) in attn_types]
    if not targets:
        found = sorted({type(m).__name__ for m in model.modules() if "attn" in type(m).__name__.lower()
                        or "attention" in type(m).__name__.lower()})
        raise ValueError(f"patch_vit: no module of type {[t.__module__ + '.' + t.__qualname__ for t in attn_types]} "
                         f"in {type(model).__name__} (attention-like classes found: {found or 'none'}); "
                         f"pass attn_types= to choose which classes to replace")
    for name, old in targets:
        if getattr(old, "gate", None) is not None:
            raise ValueError(f"{name}: gated attention is not supported by DCSAttention")
        if getattr(old, "attn_dim", old.head_dim * old.num_heads) != old.qkv.in_features:
            raise ValueError(f"{name}: attention with attn_dim != dim is not supported by DCSAttention")
        new = DCSAttention(
            old.qkv.in_features, old.num_heads, qkv_bias=old.qkv.bias is not None,
            proj_bias=old.proj.bias is not None, proj_drop=old.proj_drop.p, **kwargs)
        new.q_norm, new.k_norm, new.norm = old.q_norm, old.k_norm, old.norm
        missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
        if unexpected or any(not m.startswith("mask_logits") for m in missing):
            raise RuntimeError(f"{name}: weights did not transfer (missing {missing}, unexpected {unexpected})")
        new.to(device=old.qkv.weight.device, dtype=old.qkv.weight.dtype).train(old.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    logger.info("patch_vit: replaced %d attention blocks with DCSAttention", len(targets))
    return len(targets)
