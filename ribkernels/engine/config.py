"""Training configuration: defaults, YAML files (with ``_base_`` inheritance) and command-line flags.

A config is a two-level dict ``{section: {key: value}}``. Every key has a flat command-line flag
(``--base-lr 0.01`` sets ``solver.base_lr``, ``--output-dir`` sets ``output.dir``: ``config_keys.FLAGS``);
``--set a.b=v`` sets any key with a YAML-parsed value. Precedence: defaults < YAML (bases first) < flags.
Old key names (``config_keys.RENAMED_KEYS``) are read as the new ones, with a warning.
"""
import argparse
import copy
import os
import sys
from typing import Any, Dict, List, Optional

import yaml

from .config_keys import DEFAULTS, FLAGS, RENAMED_KEYS  # every key declared once, with its rule and help
from .validate import ConfigError, RenamedKeyWarning, UnknownKeyError, closest, rename_old_keys  # noqa: F401
from .validate import unknown_key_message
from .validate import validate as validate_rules

DEFAULT_CONFIG = os.path.join("configs", "synthetic_rib_dcs_cpu.yaml")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shipped configs: inside the package when installed (package data), else the source tree's.
CONFIG_DIRS = [os.path.join(_PACKAGE, "configs"), os.path.join(os.path.dirname(_PACKAGE), "configs")]


def shipped_configs() -> Dict[str, str]:
    """``{name: path}`` of the shipped configs (``configs/*.yaml``), the first folder that has them."""
    for folder in CONFIG_DIRS:
        if os.path.isdir(folder):
            names = sorted(n for n in os.listdir(folder) if n.endswith(".yaml"))
            if names:
                return {os.path.splitext(n)[0]: os.path.join(folder, n) for n in names}
    return {}


def find_config(config: str) -> str:
    """The YAML file ``--config`` names: an existing path, else a shipped config by NAME (``market1501_rib_dcs``,
    ``market1501_rib_dcs.yaml`` or ``configs/market1501_rib_dcs.yaml`` from any working directory).
    Raises FileNotFoundError naming the argument and the shipped names."""
    if os.path.isfile(config):
        return config
    folder, base = os.path.split(config)
    if folder in ("", "configs", "configs" + os.sep):
        found = shipped_configs().get(base[:-5] if base.endswith(".yaml") else base)
        if found:
            return found
    names = ", ".join(shipped_configs()) or "none found"
    raise FileNotFoundError(f"--config {config}: no such file, and no shipped config of that name "
                            f"(shipped: {names})")


# Short flags the issue names, beside each key's own flag (FLAGS); each maps to a key of DEFAULTS.
ALIASES = {"eta": "loss.eta", "beta": "ibb.beta", "tau": "model.tau",
           "lr": "solver.base_lr", "max-epochs": "solver.epochs", "model": "model.name"}


def _key_index(defaults=DEFAULTS) -> Dict[str, str]:
    names = [key for keys in defaults.values() for key in keys]
    return {key: section for section, keys in defaults.items() for key in keys if names.count(key) == 1}


# Deprecated (keys are no longer unique across sections: data.batch_size, eval.batch_size): key -> section
# of the keys that are; use FLAGS. To be removed in the next release.
KEY_SECTION = _key_index()


def merge(base: Dict, override: Dict, where: str = "config") -> Dict:
    """Recursive merge of ``override`` into a copy of ``base``; unknown sections/keys raise KeyError.
    Old key names in ``override`` are read as the new ones (:func:`rename_old_keys`)."""
    out = copy.deepcopy(base)
    for section, values in (rename_old_keys(override, where) or {}).items():
        if section.startswith("_"):
            continue
        if section not in out:
            raise UnknownKeyError(f"{where}: unknown section {section!r}{closest(section, out)}; "
                                  f"known: {sorted(out)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            if key not in out[section]:
                raise UnknownKeyError(unknown_key_message(f"{section}.{key}", out, where))
            out[section][key] = copy.deepcopy(value)
    return out


def load_yaml(path: str, _seen: Optional[List[str]] = None, warn: bool = True) -> Dict:
    """A YAML config with its ``_base_`` chain (a path or list of paths, relative to the file) merged
    in order, without the defaults. Old key names are read as the new ones, file by file, with a
    :class:`RenamedKeyWarning` each (``warn=False``: none)."""
    path = os.path.abspath(path)
    seen = _seen or []
    if path in seen:
        raise ConfigError(f"config {path}: circular _base_ chain {seen}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping, got {type(data).__name__}")
    bases = data.get("_base_") or []
    if isinstance(bases, str):
        bases = [bases]
    out: Dict = {}
    for base in bases:
        base_cfg = load_yaml(os.path.join(os.path.dirname(path), base), seen + [path], warn)
        out = _deep_update(out, base_cfg)
    own = rename_old_keys({k: v for k, v in data.items() if k != "_base_"}, f"config {path}", warn)
    return _deep_update(out, own)


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


# Flags whose spelling misled: the old flag fails with a message naming the new one.
RENAMED_FLAGS = {"name": ("model-name", "it sets the MODEL architecture (model.name), not the run's name; "
                                        "the run folder is --output-dir")}


class _RenamedFlag(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        new, why = RENAMED_FLAGS[option_string[2:]]
        parser.error(f"{option_string} was renamed --{new}: {why}")


def _config_from_argv(argv: Optional[List[str]]) -> str:
    """The --config the command line names (the default config when none), for --help's defaults."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=DEFAULT_CONFIG)
    return pre.parse_known_args(argv)[0].config


def _found(config_path: Optional[str]) -> Optional[str]:
    try:
        return find_config(config_path) if config_path else None
    except FileNotFoundError:
        return None


def effective_defaults(config_path: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """DEFAULTS merged with the YAML at ``config_path`` (DEFAULTS alone when it cannot be read)."""
    config_path = _found(config_path)
    if config_path:
        try:
            return merge(DEFAULTS, load_yaml(config_path, warn=False), where=config_path)
        except (KeyError, TypeError, ValueError, yaml.YAMLError):
            pass
    return copy.deepcopy(DEFAULTS)


def _readable(config_path: Optional[str]) -> bool:
    try:
        config_path = find_config(config_path)
        merge(DEFAULTS, load_yaml(config_path, warn=False), where=config_path)
        return True
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return False


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The train.py parser; ``--help`` shows the values of the config ``argv`` selects (``--config``,
    else the default config): what ``python train.py`` would run with."""
    config_path = _config_from_argv(sys.argv[1:] if argv is None else argv)
    shown = effective_defaults(config_path)
    source = (f"the values of {config_path} (what runs without flags)" if _readable(config_path)
              else f"the built-in defaults ({config_path} could not be read)")
    p = argparse.ArgumentParser(
        description="Train and evaluate TransReID / RIB-DCS / RIB-CA person Re-ID models "
                    f"(single process or torchrun). Flags override the YAML config; the defaults shown are {source}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"YAML config file, or the name of a shipped config ({', '.join(shipped_configs())})")
    p.add_argument("--resume", default=None, help="checkpoint to continue from ('auto': the output dir's last.pth)")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate --checkpoint, with the model of the checkpoint's stored config")
    p.add_argument("--checkpoint", default=None, help="model checkpoint for --eval-only")
    p.add_argument("--stop-after", type=_positive_epochs, default=None,
                   help="stop (with a checkpoint, no final evaluation) after this many epochs in total; "
                        "the schedule still follows solver.epochs (simulates an interruption)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="set any config key (YAML value), repeatable")
    for old in RENAMED_FLAGS:
        p.add_argument(f"--{old}", action=_RenamedFlag, nargs="?", help=argparse.SUPPRESS)
    for flag, dotted in ALIASES.items():
        section, key = dotted.split(".")
        p.add_argument(f"--{flag}", dest=dotted, type=_parse_value, default=argparse.SUPPRESS,
                       help=f"= {dotted} (default {shown[section][key]!r})")
    for section, keys in DEFAULTS.items():
        group = p.add_argument_group(section)
        for key in keys:
            value = shown[section][key]
            flag = "--" + _flag_name(section, key)
            if flag[2:] in ALIASES:
                continue
            if isinstance(DEFAULTS[section][key], bool):
                group.add_argument(flag, dest=f"{section}.{key}", action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=f"(default {value})")
            else:
                group.add_argument(flag, dest=f"{section}.{key}", type=_parse_value,
                                   default=argparse.SUPPRESS, help=f"(default {value!r})")
    return p


def _flag_name(section: str, key: str) -> str:
    return next(flag for flag, dotted in FLAGS.items() if dotted == f"{section}.{key}")


def explicit_keys(args: argparse.Namespace) -> List[str]:
    """Dotted config keys the command line set (flags and ``--set``; old names given as the new)."""
    keys = [k for k in vars(args) if "." in k]
    set_names = [item.split("=", 1)[0] for item in getattr(args, "set", []) if "=" in item]
    keys += [RENAMED_KEYS.get(name, name) for name in set_names]
    return keys


def resolve(args: argparse.Namespace) -> Dict:
    """Defaults < YAML < flags; returns the config with ``_meta`` (config name and path)."""
    cfg = copy.deepcopy(DEFAULTS)
    config_path = find_config(args.config) if args.config else None
    if config_path:
        cfg = merge(cfg, load_yaml(config_path), where=config_path)
    for dotted, value in vars(args).items():
        if "." in dotted:
            section, key = dotted.split(".", 1)
            cfg[section][key] = value
    overrides: Dict[str, Dict[str, Any]] = {}  # one mapping: an old name beside its new one is refused
    for item in args.set:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        dotted, text = item.split("=", 1)
        section, key = dotted.split(".", 1)
        overrides.setdefault(section, {})[key] = _parse_value(text)  # a key set twice: the last value
    cfg = merge(cfg, overrides, where="--set")
    validate(cfg)
    name = os.path.splitext(os.path.basename(config_path))[0] if config_path else "run"
    cfg["_meta"] = {"config_name": name, "config_path": config_path}
    return cfg


def validate(cfg: Dict, sections: Optional[List[str]] = None) -> None:
    """Every key's type and range (``validate.RULES``) and the cross-key rules; raises
    :class:`ConfigError` naming each bad key, its value and what is allowed. ``sections``: only these."""
    validate_rules(cfg, DEFAULTS, sections)


def _positive_epochs(text: str) -> int:
    """``--stop-after``: a whole number of epochs >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of epochs >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of epochs >= 1, got {value} (nothing would be "
                                         "trained and no last.pth written)")
    return value


def dump(cfg: Dict, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump({k: v for k, v in cfg.items()}, f, sort_keys=False)
