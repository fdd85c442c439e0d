"""Shared by the channel-shared DCS and patch_vit tests: the two-sided eager reference (function and
module), leaf copies, mixed logits, a small ViT."""
import timm
import torch

import ribkernels as rk
from ribkernels.nn import DCSAttention


F64 = torch.float64


def two_sided_reference(q, k, v, theta, noise, tau=1.0, training=True):
    """The package's eager DCS (scores in memory, q AND k masked, ordinary straight-through mask)
    with θ broadcast per channel and the same noise: what channel-shared DCS must equal."""
    H, D = theta.shape
    return rk.dcs_attention(q, k, v, theta.reshape(1, H, 1, D), noise=noise, tau=tau, training=training,
                            impl="eager")


def leaves(*ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def mixed_theta(H, D, dtype=F64):
    """Logits in [-2, 2]: masks neither all-ones nor all-zeros."""
    return (torch.rand(H, D, dtype=dtype) * 4 - 2)


def module_reference(attn: DCSAttention, x, noise, training=True):
    """DCSAttention's output computed the long way: qkv projection, the two-sided eager DCS of the
    module's θ (broadcast per channel) with ``noise``, the output projection."""
    B, N, C = x.shape
    qkv = torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(B, N, 3, attn.num_heads,
                                                                                  attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if not training:
        noise = None
    out = two_sided_reference(q, k, v, attn.mask_logits, noise, tau=attn.tau, training=training)
    return attn.proj(out.transpose(1, 2).reshape(B, N, C))


def small_vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(64, 32), num_classes=5,
                             depth=2, **kw)
