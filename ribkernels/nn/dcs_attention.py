"""``DCSAttention``: a drop-in replacement for timm's ViT ``Attention`` using DCS-Attention.

The parameter names of ``qkv``, ``q_norm``, ``k_norm``, ``norm`` and ``proj`` match timm's, so ViT
weights load unchanged (strictly too); the only new parameters are the mask logits'
(``mask_logits.*``), which loading plain ViT weights sets to their defaults.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn
import torch.nn.functional as F

from ..dcs import channel_shared as cs
from ..dcs import checks
from ..dcs.attention import dcs_attention

logger = logging.getLogger(__name__)

MASK_MODES = ("token", "channel", "channel_shared")
CHANNEL_SHARED_IMPLS = ("auto", "sdpa", "eager")


class DCSAttention(nn.Module):
    """Multi-head self-attention whose weights use only channels kept by a binary Gumbel mask.

    mask_mode="token": θ = x W + b per token (``mask_logits`` is ``nn.Linear(dim, dim)``, split into
    heads, the paper's input-dependent form), initialised W = 0, b = ``init_logit``.
    mask_mode="channel": θ is a learned ``[num_heads, head_dim]`` parameter (``mask_logits``), the
    noise drawn per token (a mask per token, as costly as the token mode).
    mask_mode="channel_shared" (the DCS authors' released form): θ ``[num_heads, head_dim]``; in
    training one binary mask per (image, head, channel) (``mask_per="image"``) or one per step
    (``mask_per="step"``), shared by every token, so it multiplies q alone and attention is plain
    SDPA (see :mod:`ribkernels.dcs.channel_shared`; the gradient to θ is the two-sided form's). A
    per-step mask scales the q rows of the qkv weight and bias; a per-image mask scales q. In eval
    ``1[θ > 0]`` is folded into the qkv weight (cached on the CPU, refreshed when θ changes, or the
    qkv weight or bias change in place or are replaced; their edits through ``.data`` are not seen:
    call :meth:`clear_fold_cache`). impl must be "auto"/"sdpa" (SDPA) or "eager". With qk_norm the mask
    scales q after its norm instead of the weights.
    With the default ``init_logit=3`` the eval mask keeps every channel: the module starts as the
    plain attention it replaces. Input/output: ``[B, N, dim]``.

    forward(x, *, seed=None, offset=0, noise=None): the training mask's noise-contract seed/offset or
    explicit logistic noise (shape of θ broadcast to ``[B, H, N, D]`` for token/channel, of the mask
    ``[B, H, 1, D]`` / ``[1, H, 1, D]`` for channel_shared); by default torch's generator draws it.

    Loading: ``load_state_dict(plain_vit_weights)`` works, strict or not — when the state dict holds
    no mask logits for this module they are set to their defaults (θ = ``init_logit``; the token
    mode's W = 0) and not reported missing (like BatchNorm's ``num_batches_tracked``). Mask logits
    of another mode are left to PyTorch (missing + unexpected keys); of the wrong shape, an error
    naming the key, the shape found and the shape expected.

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
                 check_nan: Optional[bool] = None, track_keep_fraction: bool = False, mask_per: str = "image"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        cs.check_mask_per(mask_per)
        if mask_per != "image" and mask_mode != "channel_shared":
            raise ValueError(f"mask_per={mask_per!r} applies to mask_mode='channel_shared' only "
                             f"(got mask_mode={mask_mode!r})")
        if mask_mode == "channel_shared" and impl not in CHANNEL_SHARED_IMPLS:
            raise ValueError(f"impl={impl!r}: mask_mode='channel_shared' runs plain attention, impl must be one "
                             f"of {CHANNEL_SHARED_IMPLS} ('auto'/'sdpa': scaled_dot_product_attention)")
        if attn_drop:
            raise ValueError(f"attn_drop={attn_drop}: dropout on attention weights is not supported by "
                             "DCSAttention (TransReID trains with attn_drop=0)")
        checks.check_tau(tau)
        norm_layer = norm_layer or nn.LayerNorm
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.mask_mode = mask_mode
        self.mask_per = mask_per
        self.init_logit = float(init_logit)
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
        self._fold_cache: Optional[Tuple] = None  # channel_shared eval on CPU: (key, weight, bias, θ)

    def extra_repr(self) -> str:
        per = f", mask_per={self.mask_per}" if self.mask_mode == "channel_shared" else ""
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, mask_mode={self.mask_mode}{per}, "
                f"tau={self.tau}, impl={self.impl}")

    # ------------------------------------------------------------------ loading
    def mask_defaults(self) -> Dict[str, torch.Tensor]:
        """The mask parameters' initial values by state-dict name (relative to this module)."""
        if self.mask_mode == "token":
            w, b = self.mask_logits.weight, self.mask_logits.bias
            return {"mask_logits.weight": torch.zeros_like(w.detach()),
                    "mask_logits.bias": torch.full_like(b.detach(), self.init_logit)}
        return {"mask_logits": torch.full_like(self.mask_logits.detach(), self.init_logit)}

    def mask_key_errors(self, state_dict, prefix: str = "") -> List[str]:
        """Messages for mask logits in ``state_dict`` (keys under ``prefix``) whose shape does not fit
        this module's mask mode."""
        errors = []
        for k, v in self.mask_defaults().items():
            k = prefix + k
            if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape):
                want = (f"[H, D] = {list(v.shape)}" if k.endswith("mask_logits") else str(list(v.shape)))
                errors.append(f"{k}: θ of shape {tuple(state_dict[k].shape)} does not fit mask_mode="
                              f"{self.mask_mode!r}, which expects {want}")
        return errors

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        error_msgs.extend(self.mask_key_errors(state_dict, prefix))
        if not any(k.startswith(prefix + "mask_logits") for k in state_dict):
            for k, v in self.mask_defaults().items():  # plain ViT weights: the mask starts at its default
                state_dict[prefix + k] = v
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ------------------------------------------------------------------ channel-shared helpers
    def clear_fold_cache(self) -> None:
        """Drop the cached eval qkv weights of mask_mode="channel_shared" (recomputed on next use)."""
        self._fold_cache = None

    def _folded_qkv(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The qkv weight and bias with ``1[θ > 0]`` folded into the q rows (eval); cached on the CPU.
        Off the CPU the fold is recomputed each call: checking the cache against θ's values
        (``torch.equal``) would wait for the device, which costs more than the fold."""
        w, b, theta = self.qkv.weight, self.qkv.bias, self.mask_logits
        needs_grad = torch.is_grad_enabled() and (w.requires_grad or (b is not None and b.requires_grad))
        if checks.is_tracing() or needs_grad or theta.device.type != "cpu":
            if checks.want_nan_check(self.check_nan, theta):
                checks.check_no_nan("mask_logits", theta)
            return cs.fold_eval_mask(w, b, theta)
        key = (torch.is_inference_mode_enabled(), w.dtype, w.device,
               *((t.data_ptr(), t._version) for t in (w, b, theta) if t is not None))
        cache = self._fold_cache
        if cache is None or cache[0] != key or not torch.equal(cache[3], theta):
            if checks.want_nan_check(self.check_nan, theta):
                checks.check_no_nan("mask_logits", theta)
            with torch.no_grad():
                fw, fb = cs.fold_eval_mask(w, b, theta)
                cache = self._fold_cache = (key, fw, fb, theta.detach().clone())
        return cache[1], cache[2]

    def _split_heads(self, qkv: torch.Tensor, B: int, N: int):
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def _channel_shared(self, x: torch.Tensor, seed, offset, noise) -> torch.Tensor:
        """Attention output ``[B, H, N, D]`` of mask_mode="channel_shared"."""
        B, N, _ = x.shape
        mask_logits = self.mask_logits
        cs.check_shared_logits(mask_logits, self.num_heads, self.head_dim)
        fold = isinstance(self.q_norm, nn.Identity)  # the mask commutes with the projection, not a norm
        if not self.training and fold:
            q, k, v = self._split_heads(F.linear(x, *self._folded_qkv()), B, N)
        elif self.mask_per == "step" and fold:
            mask = cs.channel_shared_mask(mask_logits, B, tau=self.tau, mask_per="step", seed=seed, offset=offset,
                                          noise=noise, check_nan=self.check_nan)
            q, k, v = self._split_heads(F.linear(x, *cs.masked_qkv_params(self.qkv.weight, self.qkv.bias, mask)), B, N)
        else:
            q, k, v = self._split_heads(self.qkv(x), B, N)
            mask = cs.channel_shared_mask(mask_logits, B, tau=self.tau, training=self.training, mask_per=self.mask_per,
                                          seed=seed, offset=offset, noise=noise, check_nan=self.check_nan)
            q = q * mask.to(q.dtype)
        return cs.attend(q, k, v, self.scale, "eager" if self.impl == "eager" else "sdpa")

    def to_plain_attention(self) -> nn.Module:
        """A timm ``Attention`` computing this module's eval output, with ``1[θ > 0]`` folded into the
        q rows of its qkv weight and bias (mask modes "channel"/"channel_shared", no qk_norm): a plain
        attention graph for export. Raises ValueError where the eval mask cannot be folded."""
        from timm.models.vision_transformer import Attention

        if self.mask_mode == "token" or not isinstance(self.q_norm, nn.Identity):
            raise ValueError(f"to_plain_attention: the eval mask of mask_mode={self.mask_mode!r}"
                             f"{' with qk_norm' if self.mask_mode != 'token' else ''} cannot be folded into the "
                             "qkv weights (it needs mask_mode 'channel' or 'channel_shared' without qk_norm)")
        dim = self.qkv.in_features
        plain = Attention(dim, self.num_heads, qkv_bias=self.qkv.bias is not None, proj_bias=self.proj.bias is not None,
                          proj_drop=self.proj_drop.p)
        plain.q_norm, plain.k_norm, plain.norm = self.q_norm, self.k_norm, self.norm
        plain.scale = self.scale
        w, b = cs.fold_eval_mask(self.qkv.weight.detach(), None if self.qkv.bias is None else self.qkv.bias.detach(),
                                 self.mask_logits.reshape(self.num_heads, self.head_dim))
        state = {"qkv.weight": w, "proj.weight": self.proj.weight.detach()}
        if b is not None:
            state["qkv.bias"] = b
        if self.proj.bias is not None:
            state["proj.bias"] = self.proj.bias.detach()
        plain.to(device=w.device, dtype=w.dtype)
        missing, unexpected = plain.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(("q_norm", "k_norm", "norm")) for k in missing):
            raise RuntimeError(f"to_plain_attention: weights did not transfer (missing {missing}, "
                               f"unexpected {unexpected})")
        return plain.train(self.training)

    def compute_mask_logits(self, x: torch.Tensor) -> torch.Tensor:
        """θ for input ``x`` ``[B, N, dim]``: ``[B, H, N, head_dim]`` (token) or ``[1, H, 1, head_dim]``."""
        if self.mask_mode == "token":
            B, N, _ = x.shape
            return self.mask_logits(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        return self.mask_logits.view(1, self.num_heads, 1, self.head_dim)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, *, seed=None, offset=0,
                noise: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("DCSAttention does not take an attn_mask (ViT Re-ID attention is unmasked)")
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"DCSAttention: x must be a 3-D tensor [B, N, C] (batch, tokens, channels), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        B, N, C = x.shape
        mask_logits = None if self.mask_mode == "channel_shared" else self.compute_mask_logits(x)
        if self.track_keep_fraction:
            with torch.no_grad():
                t = self.compute_mask_logits(x) if mask_logits is None else mask_logits
                kept = torch.sigmoid(t.float()) if self.training else (t > 0).float()
                self.last_keep_fraction = kept.mean()
        if mask_logits is None:
            x = self._channel_shared(x, seed, offset, noise)
        else:
            q, k, v = self._split_heads(self.qkv(x), B, N)
            x = dcs_attention(q, k, v, mask_logits, tau=self.tau, training=self.training,
                              scale=self.scale, impl=self.impl, check_nan=self.check_nan, seed=seed, offset=offset,
                              noise=noise)
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.norm(x)
        return self.proj_drop(self.proj(x))


def fold_eval_masks(model: nn.Module) -> int:
    """Replace, in place, every :class:`DCSAttention` of ``model`` whose eval mask is one per head and
    channel (mask_mode "channel"/"channel_shared", no qk_norm) by the plain timm ``Attention`` of
    :meth:`DCSAttention.to_plain_attention` (``1[θ > 0]`` folded into the qkv weights): the eval
    model then is a plain ViT. For export or inference only (the mask logits are gone). Returns the
    number of blocks replaced; the others (token mode, qk_norm) are left as they are."""
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, DCSAttention) and m.mask_mode != "token" and isinstance(m.q_norm, nn.Identity)]
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, m.to_plain_attention())
    return len(targets)


def _check_mask_keys_before_loading(model, state_dict, prefix, local_metadata, strict, missing_keys,
                                    unexpected_keys, error_msgs) -> None:
    """Load pre-hook of a patched model: mask logits that cannot load raise before any tensor is copied."""
    errors = []
    for name, mod in model.named_modules():
        if isinstance(mod, DCSAttention):
            errors += mod.mask_key_errors(state_dict, prefix + (name + "." if name else ""))
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__} (nothing was loaded):\n\t"
                           + "\n\t".join(errors))


_LOGGED = {"handlers": (), "keys": set()}  # patchings logged since the package logger's handlers last changed


def _log_patch(key, n: int, mode: str) -> None:
    """INFO once per identical patching and log destination (a run folder's log: evaluate builds the
    model twice), DEBUG on repeats."""
    handlers = tuple(logging.getLogger("ribkernels").handlers)
    if len(handlers) != len(_LOGGED["handlers"]) or any(a is not b for a, b in zip(handlers, _LOGGED["handlers"])):
        _LOGGED["handlers"], _LOGGED["keys"] = handlers, set()
    level = logging.DEBUG if key in _LOGGED["keys"] else logging.INFO
    _LOGGED["keys"].add(key)
    logger.log(level, "patch_vit: replaced %d attention blocks with DCSAttention (mask_mode %s)", n, mode)


def patch_vit(model: nn.Module, attn_types: Optional[Sequence[type]] = None, **kwargs) -> int:
    """Replace every timm ViT ``Attention`` in ``model`` by a :class:`DCSAttention` in place.

    attn_types: the attention classes to replace (exact type match; default timm's
    ``vision_transformer.Attention``); each must have timm's ``qkv``/``proj``/``q_norm``/``k_norm``/
    ``norm`` layout. The qkv/proj (and norm) weights are kept; ``kwargs`` go to ``DCSAttention``
    (mask_mode, mask_per, tau, init_logit, impl, check_nan, track_keep_fraction). Every block is
    checked and built before the first is replaced: on an error the model is unchanged.

    Plain ViT weights still load strictly into the patched model: ``model.load_state_dict(vit_sd)``
    sets the mask logits the state dict lacks to their defaults (``init_logit``: the eval mask keeps
    every channel) and does not report them missing. Mask logits of the wrong shape for the mode
    raise before any tensor is copied.

    Returns the number of blocks changed, logged at INFO once per identical patching (same model
    class, block count and kwargs) and log destination (DEBUG on repeats: evaluating a checkpoint
    builds its model twice); raises ValueError when it finds nothing to patch.
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
    replacements = []
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
        replacements.append((name, new))
    for name, new in replacements:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    if not getattr(model, "_dcs_load_check", False):
        model.register_load_state_dict_pre_hook(_check_mask_keys_before_loading)
        model._dcs_load_check = True
    key = (type(model).__qualname__, len(targets), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    _log_patch(key, len(targets), replacements[0][1].mask_mode)
    return len(targets)
