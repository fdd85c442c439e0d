"""nn.Modules: DCSAttention (drop-in for timm's ViT Attention) and its patcher."""
from .dcs_attention import DCSAttention, patch_vit

__all__ = ["DCSAttention", "patch_vit"]
