"""Deprecated home of what the trainer builds from the config, kept for one release: import from the
modules that now hold each part — :mod:`.data` (data), :mod:`.model` (model), :mod:`.losses`,
:mod:`.ibb_terms` (the IBB term and its controls), :mod:`.features` (feature extraction) and
:mod:`.evaluation`."""
from .data import DataBundle, build_data, derived_seed, epoch_indices, unpack
from .evaluation import evaluate, occlusion_table, rank_result
from .features import extract_features, extract_global_features, global_features
from .ibb_terms import (PROTOTYPE_SCALE, build_ibb, control_prototypes, ibb_terms, input_cluster_images,
                        matched_scale, prototype_loss, shuffled_labels)
from .losses import TripletLossOnly, build_losses
from .model import build_model, build_model_from_file, model_inputs

__all__ = ["DataBundle", "build_data", "derived_seed", "epoch_indices", "unpack", "evaluate", "occlusion_table",
           "rank_result", "extract_features", "extract_global_features", "global_features", "PROTOTYPE_SCALE",
           "build_ibb", "control_prototypes", "ibb_terms", "input_cluster_images", "matched_scale",
           "prototype_loss", "shuffled_labels", "TripletLossOnly", "build_losses", "build_model",
           "build_model_from_file", "model_inputs"]
