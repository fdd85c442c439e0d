"""The whole training config checked before any data is read: one declarative rule per key
(type and range), cross-key rules, and unknown keys named with the closest valid key.

The per-key rules are declared with their keys and defaults in :mod:`.config_keys` (``RULES`` is
derived from that table, as ``config.DEFAULTS`` is); the cross-key rules are here, and so is the
reading of the keys' old names (:func:`rename_old_keys`).
"""
import difflib
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from .config_keys import RENAMED_KEYS, RULES
from .rules import UNIT, Bool, Choice, Int, Lazy, ListOf, Map, Null, Num, Rule, Str  # noqa: F401 (their old home)
from .rules import is_int


class ConfigError(ValueError):
    """A config value that is not allowed; the message names key, value and what is allowed."""


class UnknownKeyError(ConfigError, KeyError):
    """An unknown section or key (a KeyError too, for callers that catch those)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RenamedKeyWarning(FutureWarning):
    """A config key written under its old name (``config_keys.RENAMED_KEYS``), read as the new one."""


def rename_old_keys(cfg: Dict, where: str = "config", warn: bool = True) -> Dict:
    """``cfg`` (``{section: {key: value}}``) with each old key name of ``RENAMED_KEYS`` replaced by its
    new name, in place in its section's order, and one :class:`RenamedKeyWarning` per old name found,
    naming ``where`` (``warn=False``: none). The input is not modified. Raises :class:`ConfigError`
    naming both names when a section holds the old and the new one; anything else is left for
    :func:`validate` to judge."""
    if not isinstance(cfg, dict):
        return cfg
    out = dict(cfg)
    for old, new in RENAMED_KEYS.items():
        section, old_key = old.split(".", 1)
        new_key = new.split(".", 1)[1]
        values = out.get(section)
        if not isinstance(values, dict) or old_key not in values:
            continue
        if new_key in values:
            raise ConfigError(f"{where}: both {old} and {new} are given ({old} is the old name of {new}); "
                              f"keep only {new}")
        out[section] = {(new_key if k == old_key else k): v for k, v in values.items()}
        if warn:
            warnings.warn(f"{where}: config key {old} is renamed {new}; the old name is read for one more "
                          "release", RenamedKeyWarning, stacklevel=2)
    return out


def closest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _cross_checks(cfg: Dict) -> List[str]:
    errors = []
    d, m = cfg.get("data"), cfg.get("model")
    if d is not None and is_int(d.get("batch_size")) and is_int(d.get("num_instances")) \
            and d["num_instances"] >= 1 and d["batch_size"] % d["num_instances"]:
        errors.append(f"data.batch_size = {d['batch_size']} must be a multiple of data.num_instances = "
                      f"{d['num_instances']} (P identities x K images per batch)")
    if m is not None and m.get("tau_schedule", "constant") != "constant" and m.get("tau_end") is None:
        errors.append(f"model.tau_schedule = {m['tau_schedule']!r} needs model.tau_end (a number > 0, the τ of "
                      "the last epoch)")
    if d is not None and m is not None and is_int(d.get("padding")) and RULES["model.img_size"](m.get("img_size")):
        bound = max(m["img_size"])
        if d["padding"] > bound:
            errors.append(f"data.padding = {d['padding']} is larger than the image (model.img_size = "
                          f"{list(m['img_size'])}): expected at most {bound} pixels per side")
    if d is not None and RULES["data.dataset"](d.get("dataset")) \
            and RULES["data.dataset_kwargs"](d.get("dataset_kwargs")):
        errors += _unknown_kwargs("data.dataset_kwargs", d.get("dataset_kwargs") or {},
                                  _dataset_parameters(d["dataset"]), f"dataset {d['dataset']!r}")
    if m is not None and RULES["model.name"](m.get("name")) and RULES["model.kwargs"](m.get("kwargs")):
        errors += _unknown_kwargs("model.kwargs", m.get("kwargs") or {}, _model_parameters(m["name"]),
                                  f"model {m['name']!r}")
    c = cfg.get("ibb", {})
    if c.get("control", "none") != "none" and c.get("enabled") is not True:
        errors.append(f"ibb.control = {c['control']!r} replaces the IBB's training signal and needs ibb.enabled = true "
                      f"(got {c.get('enabled')!r})")
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
    """What ``model.kwargs`` may hold for model ``name`` (``build_model``'s overrides)."""
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
    if not c["enabled"]:
        return
    errors = []
    a = c["clusters"] if c["clusters"] is not None else num_ids
    if a > num_images:
        errors.append(f"ibb.clusters = {a}{' (the number of identities)' if c['clusters'] is None else ''} "
                      f"is larger than the training set ({num_images} images): expected at most {num_images}")
    b = c["input_clusters"] if c["input_clusters"] is not None else a
    fitted = min(num_images, int(c["input_samples"]))
    if b > fitted:
        src = "" if c["input_clusters"] is not None else " (= ibb.clusters)"
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
                errors.append(f"{dotted}: no validation rule (declare it in ribkernels/engine/config_keys.py KEYS)")
            elif not rule(value):
                errors.append(f"{dotted} = {value!r}: expected {rule.allowed}")
    errors += _cross_checks(cfg if sections is None else {k: v for k, v in cfg.items() if k in sections})
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def unknown_key_message(dotted: str, defaults: Dict, where: str = "config") -> str:
    """``where: unknown key a.b (did you mean 'a.c'?)`` over every ``section.key`` of ``defaults``."""
    known = [f"{s}.{k}" for s, keys in defaults.items() for k in keys]
    if dotted in RENAMED_KEYS:
        return f"{where}: unknown key {dotted} (renamed {RENAMED_KEYS[dotted]})"
    hint = closest(dotted, known)
    if not hint:  # right key, wrong section?
        key = dotted.split(".", 1)[-1]
        hint = closest(key, [k.split(".", 1)[1] for k in known])
        if hint:
            name = hint[len(" (did you mean '"):-len("'?)")]
            hint = f" (did you mean {next(k for k in known if k.endswith('.' + name))!r}?)"
    return f"{where}: unknown key {dotted}{hint}"
