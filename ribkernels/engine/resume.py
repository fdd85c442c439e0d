"""What a resume may change: the resumed run's config against the checkpoint's.

Hyperparameters may not change silently: any key that differs (other than the ``FREE_KEYS``, which
change where or how fast things run but not what is computed) is refused, listed with both values,
unless named in ``--allow-changes``.
"""
import warnings
from typing import Any, Dict, Iterable, List, Tuple

from .config_keys import FLAGS, RENAMED_KEYS
from .validate import ConfigError, RenamedKeyWarning, closest, rename_old_keys

# Keys that do not change what is computed: where files are, how many loader workers/threads, display.
FREE_KEYS = frozenset({"output.dir", "output.progress", "output.log_period", "data.num_workers",
                       "data.root", "solver.num_threads", "model.pretrained",
                       "data.skip_bad_images"})  # only leaves out images that cannot be read (listed in metrics)
# Keys whose change needs the optimiser's param groups / the schedule rebuilt from the new config.
OPTIMIZER_KEYS = frozenset({"solver.base_lr", "solver.bias_lr_factor", "solver.weight_decay", "solver.momentum"})
SCHEDULE_KEYS = frozenset({"solver.epochs", "solver.warmup_epochs", "solver.warmup_factor",
                           "solver.min_lr_factor", "solver.max_iters_per_epoch"})


class ResumeConfigError(ConfigError):
    """Resuming with hyperparameters that differ from the checkpoint's."""


def flatten(cfg: Dict) -> Dict[str, Any]:
    return {f"{s}.{k}": v for s, keys in cfg.items() if not s.startswith("_") and isinstance(keys, dict)
            for k, v in keys.items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def config_changes(old: Dict, new: Dict, defaults: Dict) -> Dict[str, Tuple[Any, Any]]:
    """``{key: (checkpoint value, new value)}`` for every non-free key that differs. A key the
    checkpoint lacks (added by a newer version) counts as its default there; one it holds under an
    old name (``RENAMED_KEYS``) is compared under the new name."""
    old = rename_old_keys(old, "the checkpoint's config")
    a, b, d = flatten(old), flatten(rename_old_keys(new, "the config")), flatten(defaults)
    out = {}
    for key in sorted(set(a) | set(b)):
        if key in FREE_KEYS:
            continue
        va, vb = a.get(key, d.get(key)), b.get(key, d.get(key))
        if not _same(va, vb):
            out[key] = (va, vb)
    return out


def parse_allow(text: str, defaults: Dict) -> List[str]:
    """``--allow-changes a,b`` as full ``section.key`` names: a bare key or a flag's name is looked
    up; an old name (``RENAMED_KEYS``) is taken as the new one, with a warning."""
    from .config import ALIASES

    known = list(flatten(defaults))
    out = []
    for item in (x.strip() for x in (text or "").split(",")):
        if not item:
            continue
        item = ALIASES.get(item, FLAGS.get(item, item))  # the flags: lr, beta, output-dir, ...
        item = next((old for old in RENAMED_KEYS if old.split(".", 1)[1] == item), item)  # a bare old key
        if item in RENAMED_KEYS:
            warnings.warn(f"--allow-changes: config key {item} is renamed {RENAMED_KEYS[item]}; the old name is "
                          "read for one more release", RenamedKeyWarning, stacklevel=2)
            item = RENAMED_KEYS[item]
        if item not in known:
            full = [k for k in known if k.split(".", 1)[1] == item.replace("-", "_")]
            if len(full) > 1:
                raise ConfigError(f"--allow-changes: key {item!r} is in {len(full)} sections; name one of "
                                  f"{', '.join(full)}")
            if len(full) != 1:
                raise ConfigError(f"--allow-changes: unknown key {item!r}{closest(item, known)}")
            item = full[0]
        out.append(item)
    return out


def check(old: Dict, new: Dict, defaults: Dict, allow: Iterable[str], path: str) -> Dict[str, Tuple[Any, Any]]:
    """The allowed changes; raises :class:`ResumeConfigError` listing the others."""
    changes = config_changes(old, new, defaults)
    allow = set(allow)
    refused = {k: v for k, v in changes.items() if k not in allow}
    if refused:
        lines = "\n  ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in refused.items())
        raise ResumeConfigError(
            f"--resume {path}: the config differs from the one the run was started with:\n  {lines}\n"
            f"Resume with the run's own settings (its config.yaml), or allow the change explicitly with "
            f"--allow-changes {','.join(refused)}")
    return changes
