"""TransReID (He et al., ICCV 2021) built from timm parts, with selectable attention per block.

Overlapping patch embedding, side information embedding (SIE), the jigsaw patch module (JPM) and
BNNeck heads, as in the authors' ``vit_pytorch.py`` / ``make_model.py``. Parameter names of the
backbone match timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i.*``, ``norm``) so ImageNet ViT weights load with :func:`load_pretrained`.
"""
import copy
from functools import partial
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from timm.layers import trunc_normal_
from timm.models.vision_transformer import Attention, Block

from .neck import BNNeck


ATTN_IMPLS = ("eager", "sdpa", "dcs")
NECK_FEATS = ("before", "after")


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return v


class PatchEmbedOverlap(nn.Module):
    """Overlapping patches: ``Conv2d(in_chans, D, kernel=patch_size, stride=stride_size)``.

    ``[B, 3, H, W]`` -> ``[B, gh*gw, D]`` with ``gh = (H - p) // s + 1``, ``gw = (W - p) // s + 1``.
    """

    def __init__(self, img_size=(256, 128), patch_size: int = 16, stride_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.stride_size = _pair(stride_size)
        for name, v in (("patch_size", self.patch_size), ("stride_size", self.stride_size)):
            if min(v) < 1:
                raise ValueError(f"{name} must be positive, got {v}")
        if any(i < p for i, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} is smaller than patch_size {self.patch_size}")
        self.grid_size = tuple((i - p) // s + 1 for i, p, s in zip(self.img_size, self.patch_size, self.stride_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.img_size or x.shape[1] != self.proj.in_channels:
            raise ValueError(f"x must be [B, {self.proj.in_channels}, {self.img_size[0]}, {self.img_size[1]}], "
                             f"got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)


class ConvStem(nn.Module):
    """A convolutional stem for ViTs trained from scratch on small data (Xiao et al., "Early
    convolutions help transformers see better", 2021): ``depth`` × (Conv3×3 stride 2, BN, ReLU) with
    widths doubling up to ``embed_dim`` (24, 48, 96, 192 for 192), then a 1×1 projection to ``embed_dim``.

    ``[B, 3, H, W]`` -> ``[B, (H / 2^depth) * (W / 2^depth), embed_dim]``; H and W must be multiples
    of ``2^depth``. Exposes ``img_size``, ``grid_size``, ``num_patches`` like :class:`PatchEmbedOverlap`.
    """

    def __init__(self, img_size=(128, 64), in_chans: int = 3, embed_dim: int = 192, depth: int = 4):
        super().__init__()
        self.img_size = _pair(img_size)
        if depth < 1:
            raise ValueError(f"stem depth must be >= 1, got {depth}")
        f = 2 ** depth
        if any(i % f for i in self.img_size):
            raise ValueError(f"img_size {self.img_size} must be a multiple of {f} for a {depth}-layer conv stem")
        self.grid_size = tuple(i // f for i in self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        widths = [max(8, embed_dim >> (depth - 1 - i)) for i in range(depth)]
        layers, c = [], in_chans
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c, embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.img_size or x.shape[1] != self.convs[0].in_channels:
            raise ValueError(f"x must be [B, {self.convs[0].in_channels}, {self.img_size[0]}, {self.img_size[1]}], "
                             f"got {tuple(x.shape)}")
        return self.proj(self.convs(x)).flatten(2).transpose(1, 2)


def shuffle_unit(features: torch.Tensor, shift: int, groups: int) -> torch.Tensor:
    """TransReID's shift + patch shuffle of the patch tokens of ``features [B, 1+N, D]``.

    Exactly the authors' code (``begin=1``): the patch sequence becomes ``tokens[shift:] ++
    tokens[1:shift]`` (a roll of the patches by ``shift - 1``), is padded by repeating its
    second-to-last token until ``groups`` divides it, then interleaved by ``groups``.
    Returns ``[B, N', D]`` with ``N' >= N`` (``N'`` a multiple of ``groups``).
    """
    B, _, D = features.shape
    x = torch.cat([features[:, shift:], features[:, 1:shift]], dim=1)
    pad = (-x.shape[1]) % groups
    if pad:
        x = torch.cat([x, x[:, -2:-1].expand(B, pad, D)], dim=1)
    return x.view(B, groups, -1, D).transpose(1, 2).reshape(B, -1, D)


class TransReID(nn.Module):
    """TransReID: ViT with overlapping patches, SIE, JPM and BNNeck heads.

    Args (beyond the ViT's): ``stride_size`` (12 for TransReID*, 16 for the plain ViT),
    ``camera_num``/``view_num`` (SIE is used for a count > 1; 0 or 1 disables it), ``sie_coef``
    (TransReID's λ, 3.0), ``jpm`` (the jigsaw branch: a copy of the last block applied to 4 shuffled
    groups of patches, each with its own BNNeck head), ``attn_impl`` in {"eager", "sdpa", "dcs"} for
    every block (``dcs_kwargs`` go to :class:`ribkernels.nn.DCSAttention`), ``neck_feat``: eval
    feature before or after the BNNeck, ``stem``: "patch" (TransReID's patch embedding) or "conv"
    (:class:`ConvStem` with ``stem_depth`` stride-2 layers, for the CPU models trained from scratch).

    Forward ``x [B, 3, H, W]`` (+ ``cam_label``/``view_label`` ``[B]`` long when SIE is on):

    * training: ``dict(logits=[B, num_classes] x (1 + 4·jpm), feats=[B, D] x (1 + 4·jpm),
      global_feat=[B, D], global_bn_feat=[B, D])`` (the global feature before / after the BNNeck);
    * eval: ``[B, D·(1 + 4·jpm)]``: the global feature, then each local feature / 4.
    """

    def __init__(self, num_classes: int, camera_num: int = 0, view_num: int = 0, *,
                 img_size=(256, 128), patch_size: int = 16, stride_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, sie_coef: float = 3.0, jpm: bool = True,
                 shift_num: int = 5, shuffle_groups: int = 2, divide_length: int = 4,
                 rearrange: bool = True, neck_feat: str = "before", attn_impl: str = "sdpa",
                 dcs_kwargs: Optional[Dict] = None, stem: str = "patch", stem_depth: int = 4):
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        if neck_feat not in NECK_FEATS:
            raise ValueError(f"neck_feat must be one of {NECK_FEATS}, got {neck_feat!r}")
        if dcs_kwargs and attn_impl != "dcs":
            raise ValueError(f"dcs_kwargs {dcs_kwargs} given but attn_impl={attn_impl!r} (expected 'dcs')")
        if depth < 1 or (jpm and depth < 2):
            raise ValueError(f"depth must be >= {2 if jpm else 1} (jpm={jpm}), got {depth}")
        if camera_num < 0 or view_num < 0:
            raise ValueError(f"camera_num/view_num must be >= 0, got {camera_num}/{view_num}")
        self.num_classes = num_classes
        self.attn_drop_rate = attn_drop_rate
        self.attn_impl = attn_impl
        self.neck_feat = neck_feat
        self.feat_dim = self.embed_dim = embed_dim
        self.use_jpm = jpm
        self.shift_num, self.shuffle_groups = shift_num, shuffle_groups
        self.divide_length, self.rearrange = divide_length, rearrange
        self.eval_feat_dim = embed_dim * (1 + (divide_length if jpm else 0))

        if stem == "patch":
            self.patch_embed = PatchEmbedOverlap(img_size, patch_size, stride_size, in_chans, embed_dim)
        elif stem == "conv":
            self.patch_embed = ConvStem(img_size, in_chans, embed_dim, stem_depth)
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.img_size = self.patch_embed.img_size
        self.grid_size = self.patch_embed.grid_size
        self.num_tokens = self.patch_embed.num_patches + 1
        if jpm and self.patch_embed.num_patches < divide_length:
            raise ValueError(f"JPM needs at least divide_length={divide_length} patches, the grid "
                             f"{self.grid_size} has {self.patch_embed.num_patches}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim))

        self.camera_num = camera_num if camera_num > 1 else 0
        self.view_num = view_num if view_num > 1 else 0
        self.sie_coef = sie_coef
        n_sie = max(self.camera_num, 1) * max(self.view_num, 1) if (self.camera_num or self.view_num) else 0
        self.sie_embed = nn.Parameter(torch.zeros(n_sie, 1, embed_dim)) if n_sie else None
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if self.sie_embed is not None:
            trunc_normal_(self.sie_embed, std=0.02)
        self.apply(self._init_weights)

        if jpm:  # the JPM branch starts as a copy of the last block (and after load_pretrained, too)
            self.jpm_block = copy.deepcopy(self.blocks[-1])
            self.jpm_norm = copy.deepcopy(self.norm)
        self.neck = BNNeck(embed_dim, num_classes)
        self.local_necks = nn.ModuleList([BNNeck(embed_dim, num_classes) for _ in range(divide_length)]) if jpm else None

        self.set_attn_impl(attn_impl, dcs_kwargs)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, (2.0 / n) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def set_attn_impl(self, attn_impl: str, dcs_kwargs: Optional[Dict] = None) -> None:
        """Select the attention of every block: "eager"/"sdpa" set timm ``Attention.fused_attn``;
        "dcs" replaces each timm ``Attention`` by a ``DCSAttention`` (qkv/proj weights kept)."""
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        if attn_impl == "dcs":
            from ..nn.dcs_attention import patch_vit

            if self.attn_drop_rate:
                raise ValueError(f"attn_impl='dcs' does not support attention dropout "
                                 f"(attn_drop_rate={self.attn_drop_rate}); use 0")

            patch_vit(self, **(dcs_kwargs or {}))
        else:
            attns = [m for m in self.modules() if type(m) is Attention]
            if len(attns) != len(self._all_blocks()):
                raise ValueError(f"attn_impl={attn_impl!r}: the blocks no longer hold timm Attention "
                                 "(switching back from 'dcs' is not supported)")
            for m in attns:
                m.fused_attn = attn_impl == "sdpa"
        self.attn_impl = attn_impl

    def _all_blocks(self) -> List[nn.Module]:
        return list(self.blocks) + ([self.jpm_block] if self.use_jpm else [])

    def no_weight_decay(self):
        return {"pos_embed", "cls_token", "sie_embed"}

    def keep_fraction(self) -> Optional[float]:
        """Mean fraction of kept DCS channels over the blocks of the last forward (None: no DCS)."""
        vals = [m.last_keep_fraction for m in self.modules()
                if getattr(m, "last_keep_fraction", None) is not None]
        if not vals:
            return None
        return float(torch.stack([v.float() for v in vals]).mean())

    def _sie(self, B: int, cam_label, view_label) -> Optional[torch.Tensor]:
        if self.sie_embed is None:
            return None
        idx = None
        for name, lab, n in (("cam_label", cam_label, self.camera_num), ("view_label", view_label, self.view_num)):
            if not n:
                continue
            if lab is None:
                raise ValueError(f"{name} is required: the model was built with SIE over {n} "
                                 f"{'cameras' if name == 'cam_label' else 'views'}")
            lab = torch.as_tensor(lab, device=self.sie_embed.device).long().reshape(-1)
            if lab.numel() == 1:
                lab = lab.expand(B)
            if lab.numel() != B:
                raise ValueError(f"{name} must have {B} entries (one per image), got shape {tuple(lab.shape)}")
            if not lab.is_cuda and (lab.min() < 0 or lab.max() >= n):  # no host sync on CUDA
                raise ValueError(f"{name} values must lie in [0, {n}), got [{int(lab.min())}, {int(lab.max())}]")
            idx = lab if idx is None else idx * self.view_num + lab
        return self.sie_coef * self.sie_embed[idx]

    def forward_tokens(self, x: torch.Tensor, cam_label=None, view_label=None) -> torch.Tensor:
        """Tokens after all but the last block: ``[B, 1 + num_patches, D]``."""
        x = self.patch_embed(x)
        B = x.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.pos_embed
        sie = self._sie(B, cam_label, view_label)
        if sie is not None:
            x = x + sie
        x = self.pos_drop(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        return x

    def forward_global(self, x: torch.Tensor, cam_label=None, view_label=None) -> torch.Tensor:
        """The global feature before the BNNeck, ``[B, D]`` (the IBB's input)."""
        return self.norm(self.blocks[-1](self.forward_tokens(x, cam_label, view_label)))[:, 0]

    def _local_feats(self, tokens: torch.Tensor) -> List[torch.Tensor]:
        n = tokens.shape[1] - 1
        length = n // self.divide_length
        cls = tokens[:, :1]
        x = shuffle_unit(tokens, self.shift_num, self.shuffle_groups) if self.rearrange else tokens[:, 1:]
        out = []
        for i in range(self.divide_length):
            part = torch.cat([cls, x[:, i * length:(i + 1) * length]], dim=1)
            out.append(self.jpm_norm(self.jpm_block(part))[:, 0])
        return out

    def forward(self, x: torch.Tensor, cam_label=None, view_label=None) -> Union[Dict, torch.Tensor]:
        tokens = self.forward_tokens(x, cam_label, view_label)
        global_feat = self.norm(self.blocks[-1](tokens))[:, 0]
        feats = [global_feat] + (self._local_feats(tokens) if self.use_jpm else [])
        necks = [self.neck] + (list(self.local_necks) if self.use_jpm else [])
        if self.training:
            outs = [neck(f) for neck, f in zip(necks, feats)]
            return dict(logits=[o[1] for o in outs], feats=feats, global_feat=global_feat,
                        global_bn_feat=outs[0][0])
        if self.neck_feat == "after":
            feats = [neck.bn(f) for neck, f in zip(necks, feats)]
        return torch.cat([feats[0]] + [f / self.divide_length for f in feats[1:]], dim=1)
