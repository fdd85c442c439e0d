"""ribkernels: Learning Informative Attention Weights for Person Re-ID, made fast.

Public API (see docs/design.md):

* :func:`dcs_mask` — binary Gumbel channel mask with a straight-through gradient.
* :func:`dcs_attention` — DCS-Attention, ``softmax(scale·(q⊙M)(k⊙M)ᵀ) v`` with backends
  ``"triton"``, ``"sdpa"``, ``"eager"`` and ``"auto"``.
* :func:`ibb_loss` — the IBB bound of the RIB loss.
"""
from .dcs.mask import dcs_mask, logistic_noise
from .dcs.attention import dcs_attention, available_backends
from .nn.dcs_attention import DCSAttention, patch_vit
from .ibb import ibb_loss, kmeans
from ._version import __version__

__all__ = ["dcs_mask", "logistic_noise", "dcs_attention", "available_backends", "DCSAttention", "patch_vit", "ibb_loss", "kmeans", "__version__"]
