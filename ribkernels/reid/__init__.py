"""``ribkernels.reid``: what a Re-ID training script needs besides the model (docs/training.md) — dataset
loaders and a synthetic dataset, transforms, PK samplers, an image dataset, ID/triplet losses,
evaluation (CMC/mAP/mINP, chunked distances, re-ranking) and an occlusion stress test."""
from .dataset_types import CorruptImageError, DatasetLayoutError, ReIDData, relabel
from .dataset_check import check_dataset
from .loaders import load_dukemtmc, load_market1501, load_msmt17, load_occluded_duke
from .registry import DATASETS, build_dataset, register_dataset
from .image_check import check_images
from .custom import load_csv_dataset, load_folder_dataset
from .synthetic import SyntheticConfig, load_synthetic, make_synthetic_market
from .transforms import build_transforms
from .sampler import DistributedRandomIdentitySampler, RandomIdentitySampler
from .image_dataset import ImageDataset, read_image
from .losses import CrossEntropyLabelSmooth, TripletLoss
from .evaluation import RankResult, compute_distance_matrix, evaluate, evaluate_rank, re_ranking
from .occlusion import add_occluder, feature_extractor, format_occlusion_table, occlusion_stress_test

__all__ = ["DATASETS", "CorruptImageError", "DatasetLayoutError", "ReIDData", "build_dataset", "load_dukemtmc",
           "load_market1501", "load_msmt17", "load_occluded_duke", "register_dataset", "check_dataset", "relabel", "check_images", "load_csv_dataset", "load_folder_dataset",
           "SyntheticConfig", "load_synthetic", "make_synthetic_market", "build_transforms",
           "DistributedRandomIdentitySampler", "RandomIdentitySampler", "ImageDataset", "read_image",
           "CrossEntropyLabelSmooth", "TripletLoss", "RankResult", "compute_distance_matrix", "evaluate",
           "evaluate_rank", "re_ranking", "add_occluder", "feature_extractor", "format_occlusion_table",
           "occlusion_stress_test"]
