"""nn.Modules: DCSAttention (drop-in for timm's ViT Attention) and its patcher; IBBLoss."""
from .dcs_attention import DCSAttention, patch_vit
from .ibb_loss import IBBLoss

__all__ = ["DCSAttention", "patch_vit", "IBBLoss"]
