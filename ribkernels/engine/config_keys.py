"""Every key of the training config, declared once: ``section.key``, its default, its rule (type and
range, :mod:`.rules`) and one line of help. ``config.DEFAULTS`` and ``validate.RULES`` are both derived
from :data:`KEYS`, so they cannot drift apart.

To add a config key: one ``Key(...)`` line below, in its section (the order is the order of the
sections and of ``--help``); then use ``cfg[section][key]`` where it matters.

Each key has one flat command-line flag: its name (``--base-lr`` sets ``solver.base_lr``), or the
``flag`` it declares where the name alone is vague or shared (``--output-dir`` sets ``output.dir``).
A renamed key keeps its old name for one release in :data:`RENAMED_KEYS` (read with a warning).
"""
from typing import Any, Dict, NamedTuple, Sequence

from .rules import UNIT, Bool, Choice, Int, Lazy, ListOf, Map, Null, Num, Rule, Str


class Key(NamedTuple):
    dotted: str  # "section.key"
    default: Any
    rule: Rule
    help: str
    flag: str = ""  # the command-line flag without "--"; "" = the key's name with "-" for "_"


def _model_names() -> Sequence[str]:
    from ..models import MODEL_NAMES

    return list(MODEL_NAMES)


def _dataset_ok(v) -> bool:
    from ..reid import registry as datasets

    name = datasets.ALIASES.get(v.lower(), v.lower()) if isinstance(v, str) else None
    return name is not None and (name in datasets.DATASETS or name in datasets.BUILTIN_DATASETS)


def _dataset_names() -> str:
    from ..reid import registry as datasets

    names = set(datasets.DATASETS) | set(datasets.BUILTIN_DATASETS) | set(datasets.ALIASES)
    return "one of " + " | ".join(sorted(names)) + " (or a name added with ribkernels.reid.register_dataset)"


KEYS = (
    Key("model.name", "vit_base_transreid",
        Lazy(lambda v: v in _model_names(), lambda: "one of " + " | ".join(_model_names())),
        "see ribkernels.models.MODEL_NAMES", flag="model-name"),
    Key("model.attn_impl", "sdpa", Choice("eager", "sdpa", "dcs"), "eager | sdpa | dcs (ViT models only)"),
    Key("model.dcs_impl", "auto",
        Choice("auto", "triton", "sdpa", "eager", "sdpa:flash", "sdpa:cudnn", "sdpa:efficient", "sdpa:math"),
        "DCSAttention backend: auto (measured) | triton | sdpa[:kernel] | eager"),
    Key("model.dcs_mask_mode", "token", Choice("token", "channel", "channel_shared"),
        "token (θ = xW + b, the paper's) | channel | channel_shared (one mask per image, q only)"),
    Key("model.dcs_mask_per", "image", Choice("image", "step"),
        "channel_shared: one mask per image | per step (the DCS authors' code)"),
    Key("model.tau", 1.0, Num(0, lo_open=True),
        "Gumbel-sigmoid temperature (> 0; the first epoch's under a schedule)"),
    Key("model.tau_schedule", "constant", Choice("constant", "linear", "cosine", "exp"),
        "constant | linear | cosine | exp: τ from `tau` to `tau_end` over the epochs"),
    Key("model.tau_end", None, Null() | Num(0, lo_open=True), "> 0, τ of the last epoch (null: no annealing)"),
    Key("model.dcs_init_logit", 3.0, Num(), ""),
    Key("model.pretrained", None, Null() | Str(allowed="a file path"),
        "local weights: ImageNet ViT (.pth/.bin/.safetensors/.npz), timm:<timm model name>:<file>, a "
        "TransReID-repository checkpoint, train.py's last.pth/final.pth (ribkernels.models.pretrained)"),
    Key("model.neck_feat", "before", Choice("before", "after"), "retrieval feature before/after the BNNeck"),
    Key("model.sie_camera", True, Bool(), "side information embedding of the camera id"),
    Key("model.sie_view", False, Bool(), ""),
    Key("model.img_size", [256, 128], ListOf(Int(1), length=2), ""),
    Key("model.kwargs", {}, Null() | Map(), "extra keyword arguments for build_model", flag="model-kwargs"),
    Key("data.dataset", "synthetic", Lazy(_dataset_ok, _dataset_names),
        "synthetic | market1501 | dukemtmc | msmt17 | occluded_duke | csv | folder"),
    Key("data.root", "data", Null() | Str(allowed="a folder path"), "", flag="data-root"),
    Key("data.dataset_kwargs", {}, Null() | Map(), "extra arguments of the dataset (e.g. the synthetic sizes)"),
    Key("data.skip_bad_images", False, Bool(), "leave unreadable images out (counted) instead of failing at build"),
    Key("data.batch_size", 64, Int(1), ""),
    Key("data.num_instances", 4, Int(1), "PK sampler: K images per identity, P = batch_size / K"),
    Key("data.num_workers", 4, Int(0), ""),
    Key("data.flip_prob", 0.5, UNIT, ""),
    Key("data.padding", 10, Int(0), ""),
    Key("data.erasing_prob", 0.5, UNIT, ""),
    Key("data.pixel_mean", [0.5, 0.5, 0.5], ListOf(Num(), length=3), ""),
    Key("data.pixel_std", [0.5, 0.5, 0.5], ListOf(Num(0, lo_open=True), length=3), ""),
    Key("data.test_interpolation", "bilinear", Choice("bilinear", "bicubic"),
        "resize of evaluated images: bilinear (TransReID's) | bicubic"),
    Key("solver.epochs", 120, Int(1), ""),
    Key("solver.optimizer", "sgd", Choice("sgd", "adamw"),
        "sgd (TransReID's, momentum) | adamw (for models trained from scratch)"),
    Key("solver.base_lr", 0.008, Num(0, lo_open=True), ""),
    Key("solver.momentum", 0.9, Num(0, 1, hi_open=True), ""),
    Key("solver.weight_decay", 1e-4, Num(0), ""),
    Key("solver.warmup_epochs", 5, Int(0), ""),
    Key("solver.warmup_factor", 0.01, Num(0, 1, lo_open=True), "lr starts at warmup_factor * base_lr"),
    Key("solver.min_lr_factor", 0.002, UNIT, "cosine floor: min_lr_factor * base_lr"),
    Key("solver.bias_lr_factor", 2.0, Num(0, lo_open=True),
        "TransReID: biases at 2x lr, with weight_decay like the weights"),
    Key("solver.mask_logits_weight_decay", None, Null() | Num(0),
        "DCS mask logits' weight decay; null: weight_decay, like the other weights and biases (AdamW then "
        "shrinks the logits' bias)"),
    Key("solver.grad_clip", 0.0, Num(0, note=" (0: off)") | Null() | Rule(lambda v: v is False, "false (off)"),
        "0: off"),
    Key("solver.amp", "bf16", Choice("bf16", "fp16", "none", None, False),
        "bf16 | fp16 | none (autocast on CUDA only)"),
    Key("solver.compile", False, Bool(), "torch.compile the model"),
    Key("solver.seed", 1234, Int(0, 2**63 - 1), ""),
    Key("solver.device", "auto", Str(r"auto|cpu|cuda", "one of 'auto' | 'cpu' | 'cuda'"), "auto | cpu | cuda"),
    Key("solver.num_threads", 0, Int(0, note=" (0: torch's default)"), "CPU threads of torch (0: torch's default)"),
    Key("solver.max_iters_per_epoch", 0, Int(0, note=" (0: a full pass)"), "0: a full pass of the PK sampler"),
    Key("loss.id_weight", 1.0, Num(0), ""),
    Key("loss.tri_weight", 1.0, Num(0), ""),
    Key("loss.label_smoothing", 0.1, Null() | Num(0, 1, hi_open=True), ""),
    Key("loss.triplet_margin", 0.3, Null() | Num(0), "null: soft margin"),
    Key("loss.eta", 1.0, Num(0), "weight of the IBB term (RIB)"),
    Key("ibb.enabled", False, Bool(), "", flag="use-ibb"),
    Key("ibb.feature", "before", Choice("before", "after"),
        "before | after: the global feature before/after the BNNeck is clustered", flag="ibb-feature"),
    Key("ibb.q_smoothing", 0.0, Num(0, 1, hi_open=True), "[0, 1): Q(y|a) mixed with the uniform, (1-λ) Q + λ/K"),
    Key("ibb.refresh_features", "eval_pass", Choice("eval_pass", "train_memory"),
        "eval_pass (a no-grad eval-mode pass over the training set) | train_memory (the training batches' "
        "features of the previous epoch)"),
    Key("ibb.beta", "auto", Num(0, lo_open=True) | Choice("auto"),
        "auto (calibrated at every refresh) | a positive float"),
    Key("ibb.target_entropy", 1.3862943611198906, Num(0, lo_open=True, note=" (nats)"),
        "nats, > 0: mean H(phi) the auto beta aims at (log 4)"),
    Key("ibb.start_epoch", 1, Int(0), "IBB on from this 0-based epoch, after its first refresh",
        flag="ibb-start-epoch"),
    Key("ibb.refresh", 1, Int(1), "refresh clusters and Q every this many epochs", flag="ibb-refresh"),
    Key("ibb.clusters", None, Null() | Int(1), "A; null: number of training identities", flag="ibb-clusters"),
    Key("ibb.kmeans_iters", 10, Int(1), ""),
    Key("ibb.input_clusters", None, Null() | Int(1), "B; null: the IBB default"),
    Key("ibb.input_size", [16, 8], ListOf(Int(1), length=2), "down-sampled images for the input clusters"),
    Key("ibb.input_samples", 2048, Int(1), "training images used to fit the input clusters"),
    Key("ibb.control", "none", Choice("none", "prototype", "shuffled_q"),
        "none (the IBB) | prototype (a non-IB control: a cosine-prototype cross-entropy on prototypes from "
        "the same refreshed centroids and Q, scaled each step to the IBB's gradient norm on the feature) | "
        "shuffled_q (the IBB with Q refreshed from shuffled labels)"),
    Key("eval.period", 0, Int(0, note=" (0: only at the end)"),
        "evaluate every this many epochs (0: only at the end)", flag="eval-period"),
    Key("eval.batch_size", 128, Int(1), "", flag="eval-batch-size"),
    Key("eval.distance", "euclidean", Choice("euclidean", "cosine"),
        "euclidean (on L2-normalised features) | cosine"),
    Key("eval.rerank", False, Bool(), ""),
    Key("eval.rerank_k1", 50, Int(1), "k-reciprocal re-ranking (k1, k2, lambda): TransReID's 50, 15, 0.3"),
    Key("eval.rerank_k2", 15, Int(1), ""),
    Key("eval.rerank_lambda", 0.3, UNIT, ""),
    Key("eval.occlusion", False, Bool(), "add the occlusion stress-test table"),
    Key("eval.occlusion_ratios", [0.1, 0.2, 0.3, 0.4], ListOf(UNIT), ""),
    Key("eval.max_rank", 50, Int(1), ""),
    Key("output.dir", None, Null() | Str(allowed="a folder path"), "null: runs/<config name>-<timestamp>",
        flag="output-dir"),
    Key("output.log_period", 20, Int(1), "a log line every this many iterations"),
    Key("output.checkpoint_period", 1, Int(1), ""),
    Key("output.progress", "auto", Choice("auto", "bar", "log"), "auto (bar on a TTY) | bar | log"),
    Key("output.tensorboard", False, Bool(), "also log to run_dir/tensorboard (needs the tensorboard package)"),
    Key("output.keep_fraction_log", True, Bool(),
        "per-block DCS keep fraction (train + eval) in metrics.json / rib.png"),
)


def _defaults() -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for k in KEYS:
        section, key = k.dotted.split(".", 1)
        out.setdefault(section, {})[key] = k.default
    return out


def _flags() -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k in KEYS:
        flag = k.flag or k.dotted.split(".", 1)[1].replace("_", "-")
        if flag in out:
            raise AssertionError(f"config keys {out[flag]} and {k.dotted} share the flag --{flag}: declare a flag=")
        out[flag] = k.dotted
    return out


DEFAULTS: Dict[str, Dict[str, Any]] = _defaults()
RULES: Dict[str, Rule] = {k.dotted: k.rule for k in KEYS}
HELP: Dict[str, str] = {k.dotted: k.help for k in KEYS}
FLAGS: Dict[str, str] = _flags()  # {flag without "--": "section.key"}

# Old name -> new name of the keys renamed after 0.1.0 (they repeated their section: ``ibb.ibb_refresh``).
# Read with one RenamedKeyWarning each, from config files, --set, --allow-changes and stored configs;
# to be removed in the next release.
RENAMED_KEYS: Dict[str, str] = {
    "model.model_kwargs": "model.kwargs",
    "data.data_root": "data.root",
    "ibb.use_ibb": "ibb.enabled",
    "ibb.ibb_feature": "ibb.feature",
    "ibb.ibb_start_epoch": "ibb.start_epoch",
    "ibb.ibb_refresh": "ibb.refresh",
    "ibb.ibb_clusters": "ibb.clusters",
    "eval.eval_period": "eval.period",
    "eval.eval_batch_size": "eval.batch_size",
    "output.output_dir": "output.dir",
}
