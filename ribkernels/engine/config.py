"""Training configuration: defaults, YAML files (with ``_base_`` inheritance) and command-line flags.

A config is a two-level dict ``{section: {key: value}}``. Keys are unique across sections, so every
key has a flat command-line flag (``--base-lr 0.01`` sets ``solver.base_lr``); ``--set a.b=v`` sets
any key with a YAML-parsed value. Precedence: defaults < YAML (bases first) < flags.
"""
import argparse
import copy
import os
from typing import Any, Dict, List, Optional

import yaml

DEFAULT_CONFIG = os.path.join("configs", "synthetic_rib_dcs_cpu.yaml")

# The SPEC §4 recipe (TransReID's) unless a YAML file says otherwise.
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "model": {
        "name": "vit_base_transreid",   # see ribkernels.models.MODEL_NAMES
        "attn_impl": "sdpa",            # eager | sdpa | dcs (ViT models only)
        "dcs_impl": "auto",             # DCSAttention backend: auto | triton | sdpa | eager
        "dcs_mask_mode": "token",       # token (θ = xW + b, the paper's) | channel
        "tau": 1.0,                     # Gumbel-sigmoid temperature (> 0; the first epoch's under a schedule)
        "tau_schedule": "constant",     # constant | linear | cosine | exp: τ from `tau` to `tau_end` over the epochs
        "tau_end": None,                # > 0, τ of the last epoch (null: no annealing)
        "dcs_init_logit": 3.0,
        "pretrained": None,             # local ImageNet ViT weights (.pth/.bin/.safetensors/.npz)
        "neck_feat": "before",          # retrieval feature before/after the BNNeck
        "sie_camera": True,             # side information embedding of the camera id
        "sie_view": False,
        "img_size": [256, 128],
        "model_kwargs": {},             # extra keyword arguments for build_model
    },
    "data": {
        "dataset": "synthetic",         # synthetic | market1501 | dukemtmc | msmt17 | occluded_duke
        "data_root": "data",
        "dataset_kwargs": {},           # extra arguments of the dataset (e.g. the synthetic sizes)
        "batch_size": 64,
        "num_instances": 4,             # PK sampler: K images per identity, P = batch_size / K
        "num_workers": 4,
        "flip_prob": 0.5,
        "padding": 10,
        "erasing_prob": 0.5,
        "pixel_mean": [0.5, 0.5, 0.5],
        "pixel_std": [0.5, 0.5, 0.5],
    },
    "solver": {
        "epochs": 120,
        "optimizer": "sgd",             # sgd (TransReID's, momentum) | adamw (for models trained from scratch)
        "base_lr": 0.008,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "warmup_epochs": 5,
        "warmup_factor": 0.01,          # lr starts at warmup_factor * base_lr
        "min_lr_factor": 0.002,         # cosine floor: min_lr_factor * base_lr
        "bias_lr_factor": 2.0,          # TransReID: biases at 2x lr, no weight decay
        "grad_clip": 0.0,               # 0: off
        "amp": "bf16",                  # bf16 | fp16 | none (autocast on CUDA only)
        "compile": False,               # torch.compile the model
        "seed": 1234,
        "device": "auto",               # auto | cpu | cuda
        "num_threads": 0,               # CPU threads of torch (0: torch's default)
        "max_iters_per_epoch": 0,       # 0: a full pass of the PK sampler
    },
    "loss": {
        "id_weight": 1.0,
        "tri_weight": 1.0,
        "label_smoothing": 0.1,
        "triplet_margin": 0.3,          # null: soft margin
        "eta": 1.0,                     # weight of the IBB term (RIB)
    },
    "ibb": {
        "use_ibb": False,
        "ibb_feature": "before",        # before | after: the global feature before/after the BNNeck is clustered
        "q_smoothing": 0.0,             # [0, 1): Q(y|a) mixed with the uniform, (1-λ) Q + λ/K
        "refresh_features": "eval_pass",  # eval_pass (a no-grad eval-mode pass over the training set) |
                                        # train_memory (the training batches' features of the previous epoch)
        "beta": "auto",                 # auto (calibrated at every refresh) | a positive float
        "target_entropy": 1.3862943611198906,  # nats, > 0: mean H(phi) the auto beta aims at (log 4)
        "ibb_start_epoch": 1,           # IBB on from this 0-based epoch, after its first refresh
        "ibb_refresh": 1,               # refresh clusters and Q every this many epochs
        "ibb_clusters": None,           # A; null: number of training identities
        "kmeans_iters": 10,
        "input_clusters": None,         # B; null: the IBB default
        "input_size": [16, 8],          # down-sampled images for the input clusters
        "input_samples": 2048,          # training images used to fit the input clusters
    },
    "eval": {
        "eval_period": 0,               # evaluate every this many epochs (0: only at the end)
        "eval_batch_size": 128,
        "distance": "euclidean",        # euclidean (on L2-normalised features) | cosine
        "rerank": False,
        "occlusion": False,             # add the occlusion stress-test table
        "occlusion_ratios": [0.1, 0.2, 0.3, 0.4],
        "max_rank": 50,
    },
    "output": {
        "output_dir": None,             # null: runs/<config name>-<timestamp>
        "log_period": 20,               # a log line every this many iterations
        "checkpoint_period": 1,
        "progress": "auto",             # auto (bar on a TTY) | bar | log
        "keep_fraction_log": True,      # per-block DCS keep fraction (train + eval) in metrics.json / rib.png
    },
}

# Short flags the issue names; each maps to a key above.
ALIASES = {"eta": "loss.eta", "beta": "ibb.beta", "tau": "model.tau", "ibb-refresh": "ibb.ibb_refresh",
           "lr": "solver.base_lr", "max-epochs": "solver.epochs", "model": "model.name"}


def _key_index(defaults=DEFAULTS) -> Dict[str, str]:
    index: Dict[str, str] = {}
    for section, keys in defaults.items():
        for key in keys:
            if key in index:
                raise AssertionError(f"config key {key!r} is in two sections")
            index[key] = section
    return index


KEY_SECTION = _key_index()


def merge(base: Dict, override: Dict, where: str = "config") -> Dict:
    """Recursive merge of ``override`` into a copy of ``base``; unknown sections/keys raise KeyError."""
    out = copy.deepcopy(base)
    for section, values in (override or {}).items():
        if section.startswith("_"):
            continue
        if section not in out:
            raise KeyError(f"{where}: unknown section {section!r}; known: {sorted(out)}")
        if not isinstance(values, dict):
            raise TypeError(f"{where}: section {section!r} must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            if key not in out[section]:
                raise KeyError(f"{where}: unknown key {section}.{key}; known: {sorted(out[section])}")
            out[section][key] = copy.deepcopy(value)
    return out


def load_yaml(path: str, _seen: Optional[List[str]] = None) -> Dict:
    """A YAML config with its ``_base_`` chain (a path or list of paths, relative to the file) merged
    in order, without the defaults."""
    path = os.path.abspath(path)
    seen = _seen or []
    if path in seen:
        raise ValueError(f"config {path}: circular _base_ chain {seen}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise TypeError(f"config {path}: top level must be a mapping, got {type(data).__name__}")
    bases = data.get("_base_") or []
    if isinstance(bases, str):
        bases = [bases]
    out: Dict = {}
    for base in bases:
        base_cfg = load_yaml(os.path.join(os.path.dirname(path), base), seen + [path])
        out = _deep_update(out, base_cfg)
    return _deep_update(out, {k: v for k, v in data.items() if k != "_base_"})


def _deep_update(a: Dict, b: Dict) -> Dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string: take it as a number
        try:
            return float(value)
        except ValueError:
            pass
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train and evaluate TransReID / RIB-DCS / RIB-CA person Re-ID models "
                    "(single process or torchrun). Flags override the YAML config.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config file")
    p.add_argument("--resume", default=None, help="checkpoint to continue from ('auto': the output dir's last.pth)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate --checkpoint")
    p.add_argument("--checkpoint", default=None, help="model checkpoint for --eval-only")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint, no final evaluation) after this many epochs in total; "
                        "the schedule still follows solver.epochs (simulates an interruption)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="set any config key (YAML value), repeatable")
    for flag, dotted in ALIASES.items():
        p.add_argument(f"--{flag}", dest=dotted, type=_parse_value, default=argparse.SUPPRESS,
                       help=f"= {dotted}")
    for section, keys in DEFAULTS.items():
        group = p.add_argument_group(section)
        for key, value in keys.items():
            flag = "--" + key.replace("_", "-")
            if flag[2:] in ALIASES:
                continue
            if isinstance(value, bool):
                group.add_argument(flag, dest=f"{section}.{key}", action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=f"(default {value})")
            else:
                group.add_argument(flag, dest=f"{section}.{key}", type=_parse_value,
                                   default=argparse.SUPPRESS, help=f"(default {value!r})")
    return p


def resolve(args: argparse.Namespace) -> Dict:
    """Defaults < YAML < flags; returns the config with ``_meta`` (config name and path)."""
    cfg = copy.deepcopy(DEFAULTS)
    if args.config:
        if not os.path.isfile(args.config):
            raise FileNotFoundError(f"--config {args.config}: no such file")
        cfg = merge(cfg, load_yaml(args.config), where=args.config)
    for dotted, value in vars(args).items():
        if "." in dotted:
            section, key = dotted.split(".", 1)
            cfg[section][key] = value
    for item in args.set:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        dotted, text = item.split("=", 1)
        section, key = dotted.split(".", 1)
        cfg = merge(cfg, {section: {key: _parse_value(text)}}, where="--set")
    validate(cfg)
    name = os.path.splitext(os.path.basename(args.config))[0] if args.config else "run"
    cfg["_meta"] = {"config_name": name, "config_path": args.config}
    return cfg


def validate(cfg: Dict) -> None:
    d, s, m = cfg["data"], cfg["solver"], cfg["model"]
    if d["batch_size"] % d["num_instances"]:
        raise ValueError(f"data.batch_size ({d['batch_size']}) must be a multiple of data.num_instances "
                         f"({d['num_instances']})")
    if m["attn_impl"] not in ("eager", "sdpa", "dcs"):
        raise ValueError(f"model.attn_impl must be eager|sdpa|dcs, got {m['attn_impl']!r}")
    if s["optimizer"] not in ("sgd", "adamw"):
        raise ValueError(f"solver.optimizer must be sgd|adamw, got {s['optimizer']!r}")
    if s["amp"] not in ("bf16", "fp16", "none", None, False):
        raise ValueError(f"solver.amp must be bf16|fp16|none, got {s['amp']!r}")
    if cfg["eval"]["distance"] not in ("euclidean", "cosine"):
        raise ValueError(f"eval.distance must be euclidean|cosine, got {cfg['eval']['distance']!r}")
    if s["epochs"] < 1:
        raise ValueError(f"solver.epochs must be >= 1, got {s['epochs']}")
    if cfg["ibb"]["ibb_refresh"] < 1:
        raise ValueError(f"ibb.ibb_refresh must be >= 1, got {cfg['ibb']['ibb_refresh']}")
    _validate_rib(cfg)
    if m["neck_feat"] not in ("before", "after"):
        raise ValueError(f"model.neck_feat must be before|after, got {m['neck_feat']!r}")


def _validate_rib(cfg: Dict) -> None:
    """The RIB keys (issue 11): ibb.beta, ibb.target_entropy, model.tau / tau_schedule / tau_end."""
    def positive(x) -> bool:
        return not isinstance(x, bool) and isinstance(x, (int, float)) and 0 < x < float("inf")

    if cfg["ibb"]["ibb_feature"] not in ("before", "after"):
        raise ValueError(f"ibb.ibb_feature must be before|after, got {cfg['ibb']['ibb_feature']!r}")
    if cfg["ibb"]["refresh_features"] not in ("eval_pass", "train_memory"):
        raise ValueError(f"ibb.refresh_features must be eval_pass|train_memory, got {cfg['ibb']['refresh_features']!r}")
    qs = cfg["ibb"]["q_smoothing"]
    if isinstance(qs, bool) or not isinstance(qs, (int, float)) or not 0 <= qs < 1:
        raise ValueError(f"ibb.q_smoothing must be a number in [0, 1), got {qs!r}")
    b = cfg["ibb"]["beta"]
    if b != "auto" and not positive(b):
        raise ValueError(f"ibb.beta must be 'auto' or a positive number, got {b!r}")
    if not positive(cfg["ibb"]["target_entropy"]):
        raise ValueError(f"ibb.target_entropy must be a positive number of nats, got {cfg['ibb']['target_entropy']!r}")
    m = cfg["model"]
    if not positive(m["tau"]):
        raise ValueError(f"model.tau must be a positive number, got {m['tau']!r}")
    if m["tau_schedule"] not in ("constant", "linear", "cosine", "exp"):
        raise ValueError(f"model.tau_schedule must be constant|linear|cosine|exp, got {m['tau_schedule']!r}")
    if m["tau_end"] is not None and not positive(m["tau_end"]):
        raise ValueError(f"model.tau_end must be null or a positive number, got {m['tau_end']!r}")
    if m["tau_schedule"] != "constant" and m["tau_end"] is None:
        raise ValueError(f"model.tau_schedule={m['tau_schedule']!r} needs model.tau_end (a positive number)")


def dump(cfg: Dict, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump({k: v for k, v in cfg.items()}, f, sort_keys=False)
