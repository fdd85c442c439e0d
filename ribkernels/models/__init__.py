"""Re-ID models: TransReID (with eager / SDPA / DCS attention) and the RIB-CA ResNets.

See ``build_model`` for the named configurations and the forward contract.
"""
from .factory import CNN_CONFIGS, MODEL_NAMES, VIT_CONFIGS, build_model
from .neck import BNNeck
from .pretrained import (WeightsFileError, convert_transreid_repo_state_dict, load_pretrained, read_state_dict,
                         resize_pos_embed, timm_state_dict)
from .rib_ca import ResNetReID
from .transreid import PatchEmbedOverlap, TransReID, shuffle_unit

__all__ = ["build_model", "load_pretrained", "TransReID", "ResNetReID", "MODEL_NAMES", "VIT_CONFIGS",
           "CNN_CONFIGS", "BNNeck", "PatchEmbedOverlap", "shuffle_unit", "resize_pos_embed",
           "WeightsFileError", "convert_transreid_repo_state_dict", "read_state_dict", "timm_state_dict"]
