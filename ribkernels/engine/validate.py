"""The whole training config checked before any data is read: one declarative rule per key
(type and range), cross-key rules, and unknown keys named with the closest valid key.

Every key of ``config.DEFAULTS`` must have a rule here (a unit test enforces it), so a key added
elsewhere without one is caught at merge time.
"""
import difflib
import math
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence


class ConfigError(ValueError):
    """A config value that is not allowed; the message names key, value and what is allowed."""


class UnknownKeyError(ConfigError, KeyError):
    """An unknown section or key (a KeyError too, for callers that catch those)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def closest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ---------------------------------------------------------------------------------------- rules
class Rule:
    """A predicate on one value with a description of what it allows."""

    def __init__(self, ok: Callable[[Any], bool], allowed):
        self.ok, self._allowed = ok, allowed

    @property
    def allowed(self) -> str:
        """What the rule allows, in words (computed on demand when given as a function)."""
        return self._allowed() if callable(self._allowed) else self._allowed

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.ok(value))
        except (TypeError, ValueError):
            return False

    def __or__(self, other: "Rule") -> "Rule":
        return Rule(lambda v: self(v) or other(v), lambda: f"{self.allowed} or {other.allowed}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def Int(lo: Optional[int] = None, hi: Optional[int] = None, note: str = "") -> Rule:
    bounds = " ".join(x for x in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if x)
    return Rule(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
                f"an integer {bounds}{note}".rstrip())


def Num(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False, hi_open: bool = False,
        note: str = "") -> Rule:
    if lo is not None and hi is not None:
        rng = f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        rng = f" {'>' if lo_open else '>='} {lo}"
    elif hi is not None:
        rng = f" {'<' if hi_open else '<='} {hi}"
    else:
        rng = ""

    def ok(v):
        if not _is_num(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return not (hi is not None and (v >= hi if hi_open else v > hi))

    return Rule(ok, f"a finite number{rng}{note}")


def Choice(*values: Any) -> Rule:
    return Rule(lambda v: any(v == c and type(v) is type(c) for c in values),
                "one of " + " | ".join(repr(c) for c in values))


def Lazy(ok: Callable[[Any], bool], allowed: Callable[[], str]) -> Rule:
    """A rule whose allowed set is known only at use (e.g. registered model names: no import here)."""
    return Rule(ok, allowed)


def Bool() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def Str(pattern: Optional[str] = None, allowed: str = "a non-empty string") -> Rule:
    return Rule(lambda v: isinstance(v, str) and v != "" and (pattern is None or re.fullmatch(pattern, v)), allowed)


def Null() -> Rule:
    return Rule(lambda v: v is None, "null")


def Map() -> Rule:
    return Rule(lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a mapping")


def ListOf(item: Rule, length: Optional[int] = None, min_len: int = 0) -> Rule:
    n = f" of {length}" if length is not None else (f" of at least {min_len}" if min_len else "")
    return Rule(lambda v: isinstance(v, (list, tuple)) and (length is None or len(v) == length)
                and len(v) >= min_len and all(item(x) for x in v), lambda: f"a list{n} of ({item.allowed})")


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


UNIT = Num(0, 1)
RULES: Dict[str, Rule] = {
    "model.name": Lazy(lambda v: v in _model_names(), lambda: "one of " + " | ".join(_model_names())),
    "model.attn_impl": Choice("eager", "sdpa", "dcs"),
    "model.dcs_impl": Choice("auto", "triton", "sdpa", "eager", "sdpa:flash", "sdpa:cudnn", "sdpa:efficient",
                              "sdpa:math"),
    "model.dcs_mask_mode": Choice("token", "channel", "channel_shared"),
    "model.dcs_mask_per": Choice("image", "step"),
    "model.tau": Num(0, lo_open=True),
    "model.tau_schedule": Choice("constant", "linear", "cosine", "exp"),
    "model.tau_end": Null() | Num(0, lo_open=True),
    "model.dcs_init_logit": Num(),
    "model.pretrained": Null() | Str(allowed="a file path"),
    "model.neck_feat": Choice("before", "after"),
    "model.sie_camera": Bool(),
    "model.sie_view": Bool(),
    "model.img_size": ListOf(Int(1), length=2),
    "model.model_kwargs": Null() | Map(),
    "data.dataset": Lazy(_dataset_ok, _dataset_names),
    "data.data_root": Null() | Str(allowed="a folder path"),
    "data.dataset_kwargs": Null() | Map(),
    "data.batch_size": Int(1),
    "data.num_instances": Int(1),
    "data.num_workers": Int(0),
    "data.flip_prob": UNIT,
    "data.padding": Int(0),
    "data.erasing_prob": UNIT,
    "data.pixel_mean": ListOf(Num(), length=3),
    "data.pixel_std": ListOf(Num(0, lo_open=True), length=3),
    "data.skip_bad_images": Bool(),
    "data.test_interpolation": Choice("bilinear", "bicubic"),
    "solver.epochs": Int(1),
    "solver.optimizer": Choice("sgd", "adamw"),
    "solver.base_lr": Num(0, lo_open=True),
    "solver.momentum": Num(0, 1, hi_open=True),
    "solver.weight_decay": Num(0),
    "solver.mask_logits_weight_decay": Null() | Num(0),
    "solver.warmup_epochs": Int(0),
    "solver.warmup_factor": Num(0, 1, lo_open=True),
    "solver.min_lr_factor": UNIT,
    "solver.bias_lr_factor": Num(0, lo_open=True),
    "solver.grad_clip": Num(0, note=" (0: off)") | Null() | Rule(lambda v: v is False, "false (off)"),
    "solver.amp": Choice("bf16", "fp16", "none", None, False),
    "solver.compile": Bool(),
    "solver.seed": Int(0, 2**63 - 1),
    "solver.device": Str(r"auto|cpu|cuda", "one of 'auto' | 'cpu' | 'cuda'"),
    "solver.num_threads": Int(0, note=" (0: torch's default)"),
    "solver.max_iters_per_epoch": Int(0, note=" (0: a full pass)"),
    "loss.id_weight": Num(0),
    "loss.tri_weight": Num(0),
    "loss.label_smoothing": Null() | Num(0, 1, hi_open=True),
    "loss.triplet_margin": Null() | Num(0),
    "loss.eta": Num(0),
    "ibb.control": Choice("none", "prototype", "shuffled_q"),
    "ibb.use_ibb": Bool(),
    "ibb.beta": Num(0, lo_open=True) | Choice("auto"),
    "ibb.ibb_start_epoch": Int(0),
    "ibb.ibb_refresh": Int(1),
    "ibb.ibb_clusters": Null() | Int(1),
    "ibb.kmeans_iters": Int(1),
    "ibb.input_clusters": Null() | Int(1),
    "ibb.input_size": ListOf(Int(1), length=2),
    "ibb.input_samples": Int(1),
    "ibb.target_entropy": Num(0, lo_open=True, note=" (nats)"),
    "ibb.q_smoothing": Num(0, 1, hi_open=True),
    "ibb.ibb_feature": Choice("before", "after"),
    "ibb.refresh_features": Choice("eval_pass", "train_memory"),
    "eval.eval_period": Int(0, note=" (0: only at the end)"),
    "eval.eval_batch_size": Int(1),
    "eval.distance": Choice("euclidean", "cosine"),
    "eval.rerank": Bool(),
    "eval.rerank_k1": Int(1),
    "eval.rerank_k2": Int(1),
    "eval.rerank_lambda": UNIT,
    "eval.occlusion": Bool(),
    "eval.occlusion_ratios": ListOf(UNIT),
    "eval.max_rank": Int(1),
    "output.output_dir": Null() | Str(allowed="a folder path"),
    "output.log_period": Int(1),
    "output.checkpoint_period": Int(1),
    "output.progress": Choice("auto", "bar", "log"),
    "output.tensorboard": Bool(),
    "output.keep_fraction_log": Bool(),
}


def _cross_checks(cfg: Dict) -> List[str]:
    errors = []
    d, m = cfg.get("data"), cfg.get("model")
    if d is not None and _is_int(d.get("batch_size")) and _is_int(d.get("num_instances")) \
            and d["num_instances"] >= 1 and d["batch_size"] % d["num_instances"]:
        errors.append(f"data.batch_size = {d['batch_size']} must be a multiple of data.num_instances = "
                      f"{d['num_instances']} (P identities x K images per batch)")
    if m is not None and m.get("tau_schedule", "constant") != "constant" and m.get("tau_end") is None:
        errors.append(f"model.tau_schedule = {m['tau_schedule']!r} needs model.tau_end (a number > 0, the τ of "
                      "the last epoch)")
    if d is not None and m is not None and _is_int(d.get("padding")) and RULES["model.img_size"](m.get("img_size")):
        bound = max(m["img_size"])
        if d["padding"] > bound:
            errors.append(f"data.padding = {d['padding']} is larger than the image (model.img_size = "
                          f"{list(m['img_size'])}): expected at most {bound} pixels per side")
    if d is not None and RULES["data.dataset"](d.get("dataset")) \
            and RULES["data.dataset_kwargs"](d.get("dataset_kwargs")):
        errors += _unknown_kwargs("data.dataset_kwargs", d.get("dataset_kwargs") or {},
                                  _dataset_parameters(d["dataset"]), f"dataset {d['dataset']!r}")
    if m is not None and RULES["model.name"](m.get("name")) and RULES["model.model_kwargs"](m.get("model_kwargs")):
        errors += _unknown_kwargs("model.model_kwargs", m.get("model_kwargs") or {}, _model_parameters(m["name"]),
                                  f"model {m['name']!r}")
    c = cfg.get("ibb", {})
    if c.get("control", "none") != "none" and c.get("use_ibb") is not True:
        errors.append(f"ibb.control = {c['control']!r} replaces the IBB's training signal and needs ibb.use_ibb = true "
                      f"(got {c.get('use_ibb')!r})")
    return errors


def _unknown_kwargs(dotted: str, given: Dict, allowed: Optional[Sequence[str]], what: str) -> List[str]:
    """One message naming the keys of ``given`` not in ``allowed`` (None: the callee takes any keyword)."""
    if allowed is None:
        return []
    allowed = sorted(set(allowed))
    bad = [k for k in given if k not in allowed]
    if not bad:
        return []
    hints = "".join(closest(k, allowed) for k in bad[:3])
    return [f"{dotted}: {what} takes no argument{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}{hints} "
            f"(another model's or dataset's?); it takes {', '.join(allowed) or 'none'}"]


def _keywords(fn: Callable, skip: Sequence[str]) -> Optional[List[str]]:
    """The keyword parameters of ``fn`` less ``skip``; None when it takes ``**kwargs`` or has no signature."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


# Set by build_dataset / the training config itself, not by data.dataset_kwargs.
_DATASET_SET = ("self", "root", "verify", "on_corrupt")


def _dataset_parameters(name: str) -> Optional[List[str]]:
    """What ``data.dataset_kwargs`` may hold for dataset ``name`` (the loader's keyword arguments)."""
    from ..reid import registry as datasets

    loader = datasets.find_loader(name)
    if loader is None:
        return None
    declared = getattr(loader, "accepted_kwargs", None)  # a loader taking **kwargs may list what it takes
    out = list(declared) if declared is not None else _keywords(loader, _DATASET_SET)
    return None if out is None else out + ["skip_bad_images"]


def _model_parameters(name: str) -> Optional[List[str]]:
    """What ``model.model_kwargs`` may hold for model ``name`` (``build_model``'s overrides)."""
    from ..models import factory

    if name in factory.VIT_CONFIGS:
        fixed = ("self", "num_classes", "camera_num", "view_num", "img_size", "attn_impl", "dcs_kwargs", "neck_feat")
        cls = factory.TransReID
    elif name in factory.CNN_CONFIGS:
        fixed, cls = ("self", "num_classes", "neck_feat"), factory.ResNetReID
    else:
        return None
    out = _keywords(cls.__init__, fixed)
    return None if out is None else out + ["sie"]


def check_training_set(cfg: Dict, num_images: int, num_ids: int) -> None:
    """Rules that need the training set's size (checked once it is loaded, before the model is built):
    the IBB's k-means cannot make more clusters than it has points."""
    c = cfg["ibb"]
    if not c["use_ibb"]:
        return
    errors = []
    a = c["ibb_clusters"] if c["ibb_clusters"] is not None else num_ids
    if a > num_images:
        errors.append(f"ibb.ibb_clusters = {a}{' (the number of identities)' if c['ibb_clusters'] is None else ''} "
                      f"is larger than the training set ({num_images} images): expected at most {num_images}")
    b = c["input_clusters"] if c["input_clusters"] is not None else a
    fitted = min(num_images, int(c["input_samples"]))
    if b > fitted:
        src = "" if c["input_clusters"] is not None else " (= ibb.ibb_clusters)"
        errors.append(f"ibb.input_clusters = {b}{src} is larger than the images it is fitted on "
                      f"(min(training images {num_images}, ibb.input_samples {c['input_samples']}) = {fitted}): "
                      f"expected at most {fitted}")
    if errors:
        raise ConfigError("invalid config for this training set:\n  " + "\n  ".join(errors))


def validate(cfg: Dict, defaults: Dict, sections: Optional[Sequence[str]] = None) -> None:
    """Raise :class:`ConfigError` listing every key of ``cfg`` whose value breaks its rule, and unknown
    sections/keys with the closest valid name. Cheap: nothing is read or built. ``sections``: check
    only these (e.g. a stored config's ``model`` section, when its dataset does not matter)."""
    errors: List[str] = []
    if not isinstance(cfg, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(cfg).__name__}")
    for section, values in cfg.items():
        if section.startswith("_") or (sections is not None and section not in sections):
            continue
        if section not in defaults:
            raise UnknownKeyError(f"config: unknown section {section!r}{closest(section, defaults)}")
        if not isinstance(values, dict):
            raise ConfigError(f"config: section {section!r} must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            dotted = f"{section}.{key}"
            rule = RULES.get(dotted)
            if key not in defaults[section]:
                raise UnknownKeyError(unknown_key_message(dotted, defaults))
            if rule is None:
                errors.append(f"{dotted}: no validation rule (add one to ribkernels/engine/validate.py RULES)")
            elif not rule(value):
                errors.append(f"{dotted} = {value!r}: expected {rule.allowed}")
    errors += _cross_checks(cfg if sections is None else {k: v for k, v in cfg.items() if k in sections})
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def unknown_key_message(dotted: str, defaults: Dict, where: str = "config") -> str:
    """``where: unknown key a.b (did you mean 'a.c'?)`` over every ``section.key`` of ``defaults``."""
    known = [f"{s}.{k}" for s, keys in defaults.items() for k in keys]
    hint = closest(dotted, known)
    if not hint:  # right key, wrong section?
        key = dotted.split(".", 1)[-1]
        hint = closest(key, [k.split(".", 1)[1] for k in known])
        if hint:
            name = hint[len(" (did you mean '"):-len("'?)")]
            hint = f" (did you mean {next(k for k in known if k.endswith('.' + name))!r}?)"
    return f"{where}: unknown key {dotted}{hint}"
