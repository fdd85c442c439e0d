"""Checkpoint I/O: one weights-only format, atomic writes, RNG states as plain data.

A checkpoint is a ``torch.save``'d dict of tensors and plain containers (dict/list/str/int/float/bool/
None) with ``"format": FORMAT`` and ``"version": VERSION``. :func:`load` is the one loader every entry
point uses (``--resume``, ``--eval-only --checkpoint``, ``--pretrained`` pre-flight, the CLI commands);
it always loads with ``weights_only=True``, so opening a file never runs code from it. A file that
needs more is refused with its path and the offending type; files of the previous format (RNG states
pickled as NumPy objects) get a message that says how to convert them once, knowingly.
"""
import os
import pickle
import random
import re
import tempfile
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .validate import rename_old_keys

FORMAT = "ribkernels-checkpoint"
VERSION = 2
CONVERT_HINT = "python -m ribkernels convert-checkpoint {old} {new} --trust"
# What a training-state checkpoint (last.pth / final.pth) holds besides format and version.
TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "iter", "metrics", "config")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the path and what was expected."""

    def __init__(self, path: str, message: str, what: str = "checkpoint"):
        self.path = path
        super().__init__(f"{what} {path}: {message}")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    pass


class UnsafeCheckpointError(CheckpointError):
    """The file needs a type that a weights-only load does not construct (it could run code)."""


class LegacyCheckpointError(UnsafeCheckpointError):
    """A checkpoint of the previous ribkernels format (pickled NumPy RNG state)."""


# ---------------------------------------------------------------------------------------- RNG
def rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch CPU and (if present) CUDA generator states as tensors and plain numbers."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        "numpy": {"bit_generator": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def legacy_rng_to_plain(state: Dict[str, Any]) -> Dict[str, Any]:
    """The previous format's RNG dict (``random.getstate()`` tuple, ``np.random.get_state()`` tuple)
    in this format."""
    version, internal, gauss_next = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    out = {"python": {"version": int(version), "state": torch.tensor([int(v) for v in internal], dtype=torch.int64),
                      "gauss_next": None if gauss_next is None else float(gauss_next)},
           "numpy": {"bit_generator": str(kind), "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
                     "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
           "torch": torch.as_tensor(state["torch"], dtype=torch.uint8)}
    if state.get("cuda") is not None:
        out["cuda"] = [torch.as_tensor(s, dtype=torch.uint8) for s in state["cuda"]]
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- plain data
def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` as tensors and plain containers (tuples become lists, NumPy scalars/arrays Python
    numbers/tensors); anything else raises ``TypeError`` naming where it sits."""
    if isinstance(obj, np.generic):  # first: np.float64 is also a float, but pickles as a NumPy scalar
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{where}: a NumPy object array cannot be stored weights-only")
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} (expected str or int)")
            out[k] = to_plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} is not a tensor or plain data")


# ---------------------------------------------------------------------------------------- writing
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(obj: Dict[str, Any], path: str) -> str:
    """``torch.save`` to a temp file next to ``path`` then rename over it, so a crash or Ctrl-C while
    writing never leaves a truncated checkpoint. The file gets the user's umask (mkstemp makes 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def remove_stale_temp_files(folder: str) -> List[str]:
    """Delete ``.tmp-*.pth`` files a killed write left in ``folder``; returns their paths. Call only
    while holding the folder's run lock (a live writer's temp file would go too)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        if (name.startswith(".tmp-") and name.endswith(".pth")) or name == "metrics.json.tmp":
            path = os.path.join(folder, name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def training_state(**parts: Any) -> Dict[str, Any]:
    """A checkpoint dict of this format from its parts, checked to be weights-only loadable."""
    return to_plain({"format": FORMAT, "version": VERSION, **parts})


# ---------------------------------------------------------------------------------------- reading
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# The globals a checkpoint of the previous ribkernels format holds beyond what a weights-only load
# builds: ``np.random.get_state()``'s key array (and NumPy scalars). Only a file whose refused globals
# all lie here is called an old checkpoint and gets the conversion advice.
LEGACY_GLOBALS = frozenset({
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"})
CODE_WARNING = "this file contains code; do not convert it unless you wrote it"
_STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING")


# torch's legacy (non-zip) format: magic number, protocol, system info, the object, the storage keys;
# raw tensor bytes follow, which torch never unpickles.
_LEGACY_PICKLES = 5


def _pickle_globals(data: bytes, max_pickles: Optional[int] = None) -> Optional[set]:
    """Every ``module.name`` the pickle(s) in ``data`` (at most ``max_pickles`` of them) import
    (GLOBAL / STACK_GLOBAL), read with ``pickletools`` without unpickling; None when they cannot all
    be named (e.g. a STACK_GLOBAL whose strings come from the memo, or bytes that are not a pickle)."""
    import io
    import pickletools

    found, pushed = set(), []  # pushed: the values the ops pushed, a string or None (anything else)
    f = io.BytesIO(data)
    count = 0
    try:
        while f.tell() < len(data) and (max_pickles is None or count < max_pickles):
            count += 1
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    found.add(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    if len(pushed) < 2 or None in pushed[-2:]:
                        return None
                    found.add(f"{pushed[-2]}.{pushed[-1]}")
                elif op.name in _STRING_OPS:
                    pushed.append(str(arg))
                elif op.name not in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "PROTO", "FRAME"):
                    pushed.append(None)
                del pushed[:-2]
    except Exception:  # noqa: BLE001 - anything pickletools cannot parse
        return None
    return found


def file_globals(path: str) -> Optional[set]:
    """The globals a ``torch.save`` file (zip or legacy) or a bare pickle imports; None when unknown."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith(".pkl")]
                if not names:
                    return None
                out: set = set()
                for n in names:
                    part = _pickle_globals(z.read(n))
                    if part is None:
                        return None
                    out |= part
                return out
        with open(path, "rb") as f:
            return _pickle_globals(f.read(), _LEGACY_PICKLES)
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None


def _torch_allowed_globals() -> set:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - a private torch API: fall back to what our own files use
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "_codecs.encode"}


def refused_globals(path: str, reported: List[str]) -> Tuple[List[str], bool]:
    """(the globals of ``path`` that a weights-only load refuses, whether that list is complete).
    ``reported``: what torch's error named (it names only the first one)."""
    scanned = file_globals(path)
    if scanned is None:
        return sorted(set(reported)), False
    allowed = _torch_allowed_globals()
    return sorted({g for g in scanned if g not in allowed} | set(reported)), True


def _torch_reason(e: BaseException) -> str:
    """What a torch/numpy load error says went wrong, without their advice to load unsafely."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    if m:
        text = m.group(1)
    text = re.split(r"\s*(?:Please use `torch\.serialization|Re-running `torch\.load`|If you trust the file|"
                    r"load it unsafely|weights_only)", text)[0]
    return _first_line(text.strip().rstrip(".") or type(e).__name__)


def load(path: str, map_location: Optional[Any] = "cpu", *, what: str = "checkpoint", mmap: bool = False) -> Any:
    """The content of a ``torch.save`` file, loaded with ``weights_only=True`` (never runs code from
    the file). ``what`` names the flag in errors (e.g. ``--resume``). ``mmap`` maps tensor storages
    instead of reading them (a cheap full check of a large file)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(path, "no such file", what)
    if os.path.isdir(path):
        raise CheckpointError(path, "is a folder, expected a .pth file", what)
    if os.path.getsize(path) == 0:
        raise CheckpointError(path, "is empty (0 bytes): an interrupted copy or write?", what)
    use_mmap = mmap and zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=use_mmap or None)
    except pickle.UnpicklingError as e:
        reported = _GLOBAL.findall(str(e))
        if not reported:
            raise CheckpointError(path, f"not a readable PyTorch checkpoint ({_torch_reason(e)})", what) from None
        found, complete = refused_globals(path, reported)
        code = [g for g in found if g not in LEGACY_GLOBALS]
        if complete and not code:
            raise LegacyCheckpointError(
                path, f"was written by an older ribkernels version (its RNG state is a pickled {found[0]}), "
                      "which loading refuses because unpickling such objects can run code. If you trust where the "
                      "file came from, convert it once: " + CONVERT_HINT.format(old=path, new="NEW.pth"), what) from None
        named = code or found
        raise UnsafeCheckpointError(
            path, f"refused: it needs {', '.join(named)}, which a weights-only load does not construct; "
                  f"{CODE_WARNING} (checkpoints hold only tensors and plain data)", what) from None
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or not a checkpoint at all (e.g. KeyError)
        raise CheckpointError(path, f"not a readable PyTorch checkpoint, truncated or corrupt? "
                                    f"({type(e).__name__}: {_torch_reason(e)})", what) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_training_state(path: str, what: str = "--resume") -> Dict[str, Any]:
    """A full training checkpoint of this format (what ``--resume`` needs), its keys checked; its
    ``config`` with old key names read as the new ones (a run started before a rename resumes)."""
    state = load(path, what=what)
    check_format(state, path, what)
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        raise CheckpointError(path, f"is not a training checkpoint: it lacks {missing} "
                                    f"(expected keys {list(TRAINING_KEYS)}; a weights-only file can be given to "
                                    "--pretrained or --eval-only --checkpoint instead)", what)
    state["config"] = rename_old_keys(state["config"], f"{what} {path}: its stored config")
    return state


def check_format(state: Any, path: str, what: str = "checkpoint") -> None:
    """Raise unless ``state`` is a dict of this format and version."""
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, expected a dict with "
                                    f"'format': {FORMAT!r}", what)
    if state.get("format") != FORMAT:
        if "rng" in state and "optimizer" in state:
            raise LegacyCheckpointError(path, "was written by an older ribkernels version (no format field); "
                                              "convert it once: " + CONVERT_HINT.format(old=path, new="NEW.pth"), what)
        raise CheckpointError(path, f"has no 'format': {FORMAT!r} field (keys {sorted(map(str, state))[:8]}): "
                                    "not a ribkernels checkpoint", what)
    if int(state.get("version", -1)) > VERSION:
        raise CheckpointError(path, f"is format version {state.get('version')}, this ribkernels reads up to "
                                    f"{VERSION}: update ribkernels", what)


def model_state_from(ckpt: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The model's state dict from one of our checkpoints or a bare state dict, without DDP's /
    torch.compile's name prefixes."""
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def model_weights(path: str, what: str = "--checkpoint") -> Tuple[Dict[str, torch.Tensor], int]:
    """(model weights, epoch) from our checkpoint or a bare state dict of tensors (epoch 0), checked to
    be tensors."""
    state = load(path, what=what)
    if isinstance(state, dict) and "format" in state:
        check_format(state, path, what)
    if isinstance(state, dict) and "model" not in state and "rng" in state:
        check_format(state, path, what)  # an old-format file without a model: the legacy message
    weights = model_state_from(state) if isinstance(state, dict) else None
    if not weights or not all(torch.is_tensor(v) for v in weights.values()):
        raise CheckpointError(path, "holds no model weights (expected our checkpoint with a 'model' entry or a "
                                    "state dict of tensors)", what)
    epoch = state.get("epoch", 0) if isinstance(state, dict) and "model" in state else 0
    return weights, int(epoch) if isinstance(epoch, int) else 0


def check_pretrained(spec: str) -> None:
    """Pre-flight of ``--pretrained`` (a path, or ``timm:<model name>:<path>``): the file exists and, if
    it is a ``torch.save`` file, loads weights-only (tensor storages memory-mapped, so a large file costs
    little). ``.npz`` (read without pickles) and ``.safetensors`` files are checked by the model loader."""
    from ..models.pretrained import parse_spec  # the one parser of the timm:<name>:<file> form

    _, path = parse_spec(spec)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(path, "no such file (expected local weights: ImageNet ViT/ResNet "
                                            ".pth/.pt/.bin/.safetensors/.npz, timm:<timm model name>:<file>, a "
                                            "TransReID-repository checkpoint or train.py's last.pth/final.pth)",
                                      "--pretrained")
    if path.endswith((".npz", ".safetensors")):
        return
    load(path, what="--pretrained", mmap=True)


# ---------------------------------------------------------------------------------------- conversion
def _legacy_numpy_globals() -> list:
    """The NumPy objects of :data:`LEGACY_GLOBALS` (for ``torch.serialization.safe_globals``)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.int32, np.float64, np.float32, np.bool_, np.uint8)]
    return [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar] + dtypes


def convert_legacy(src: str, dst: str) -> Dict[str, Any]:
    """Convert a previous-format checkpoint ``src`` to this format at ``dst``. The file's pickle is
    first read without running it: any global beyond a weights-only load's and :data:`LEGACY_GLOBALS`
    (NumPy arrays) is refused, naming it. It is then loaded weights-only with those NumPy globals
    allowed, so no code from the file runs. Returns the new state (verified to load weights-only)."""
    if not os.path.isfile(src):
        raise CheckpointNotFoundError(src, "no such file", "convert-checkpoint")
    found, complete = refused_globals(src, [])
    code = [g for g in found if g not in LEGACY_GLOBALS]
    if code or not complete:
        named = ", ".join(code) if code else "globals that cannot be read without running its pickle"
        raise UnsafeCheckpointError(src, f"refused: it needs {named}, which no ribkernels checkpoint holds; "
                                         f"{CODE_WARNING}", "convert-checkpoint")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise CheckpointError(src, f"cannot be read ({type(e).__name__}: {_torch_reason(e)})", "convert-checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(src, f"holds a {type(state).__name__}, expected a dict", "convert-checkpoint")
    state = dict(state)
    if state.get("format") == FORMAT:
        raise CheckpointError(src, f"is already format version {state.get('version')}: nothing to convert",
                              "convert-checkpoint")
    if isinstance(state.get("rng"), dict) and isinstance(state["rng"].get("python"), tuple):
        state["rng"] = legacy_rng_to_plain(state["rng"])
    state.pop("format", None)
    state.pop("version", None)
    try:
        new = training_state(**state)
    except TypeError as e:
        raise CheckpointError(src, f"holds data that has no weights-only form: {e}", "convert-checkpoint") from None
    save_atomic(new, dst)
    load(dst, what="converted checkpoint")  # proves the new file loads weights-only
    return new
