"""The measured choice behind ``dcs_attention(impl="auto")``: keys, timing and the choice cache.

A *key* says what decides which backend is fastest: the device (its name; on CPU the model and the
thread count), the dtype, a shape bucket (B·H and N rounded up the ladder 16, 24, 32, 48, 64, 96,
..., head dim D exact), how θ and the explicit noise broadcast over ``[B, H, N, D]`` (e.g. ``"BHND"``
per token, ``"1H1D"`` per channel), training or eval, and whether gradients are needed. The first
eager call for a key times every candidate backend (:func:`measure`: warm-up, then rounds interleaved
between the candidates, compared round by round; forward + backward when gradients are needed) and
keeps the winner in memory and in a small JSON file, ``$RIBKERNELS_CACHE`` (default
``~/.cache/ribkernels``) ``/dcs-backend-choice.json``, stamped with the torch / triton / ribkernels
versions.

Never timed: under tracing (torch.compile / torch.export / torch.jit), during CUDA-graph capture, under
``torch.use_deterministic_algorithms(True)``: there the cached winner or the static rule is used.
``RIBKERNELS_DCS_AUTOTUNE_BACKEND=0`` turns the measured choice off (static rule; the cache is
neither read nor written). A cache file that is corrupt or from other versions is ignored with one
warning (and replaced at the next write); an unwritable cache directory gives one warning and the
choices stay in memory. A name read from the file is used only if it is a backend that can run the
input; the file never decides where anything is written.
"""
import functools
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from .. import _env
from .lazy_dynamo import assume_constant_result


ENV_VAR = "RIBKERNELS_DCS_AUTOTUNE_BACKEND"
CACHE_FILE_NAME = "dcs-backend-choice.json"
FORMAT = 1
WARMUP = 1       # untimed calls per candidate on CPU (the first allocates, fills caches)
WARMUP_CUDA = 2  # on CUDA (the first call may compile Triton kernels or pick cuDNN plans)
REPS = 5         # timed rounds of every candidate (at least MIN_REPS when they pass BUDGET_S)
MIN_REPS = 3
MAX_REPS = 15  # rounds in all while the leaders are within CLOSE of each other
CLOSE = 0.10
BUDGET_S = 2.0  # seconds of timed rounds beyond MIN_REPS, and of the extra rounds, at most

#: The clock used by :func:`measure` (seconds, monotonic); tests replace it by a fake one.
clock: Callable[[], float] = time.perf_counter

Key = Tuple  # (device, dtype, bh_bucket, n_bucket, d, theta_pattern, noise_pattern, training, grad)


@dataclass
class Record:
    """One key's choice: the winner, the median ms of every candidate that ran, why the others failed."""

    choice: str
    timings_ms: Dict[str, float] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    source: str = "measured"  # "measured" (this process) | "cache file"

    def to_json(self) -> dict:
        return {"choice": self.choice, "timings_ms": dict(self.timings_ms), "failed": dict(self.failed)}


_MEMORY: Dict[Key, Record] = {}        # measured in this process
_DISK: Dict[str, Dict[str, Record]] = {}  # cache path -> key string -> record, loaded once per path
_WARNED: set = set()
_UNWRITABLE: set = set()
#: exact input metadata -> (choice, source): the per-call fast path of ``impl="auto"`` (eager only).
FAST: Dict[tuple, Tuple[str, str]] = {}
_FAST_MAX = 4096


def reset() -> None:
    """Forget every choice held in memory and every warning given (the cache file is untouched)."""
    _MEMORY.clear()
    _DISK.clear()
    FAST.clear()
    _WARNED.clear()
    _UNWRITABLE.clear()


# ----------------------------------------------------------------------------------------- keys

def bucket(n: int) -> int:
    """``n`` rounded up the ladder 16, 24, 32, 48, 64, 96, 128, ... (steps of at most 1.5×). Written as
    comparisons so that under torch.compile with dynamic shapes it guards on the bucket, not on n."""
    b = 16
    while b < n:
        b = b * 3 // 2 if b & (b - 1) == 0 else b * 4 // 3
    return b


def exact(n: int) -> int:
    """``n`` as a plain int, found by comparisons (a binary search): under torch.compile with dynamic
    shapes this guards on n's value where ``int(n)`` would not give a constant."""
    hi = 1
    while hi < n:
        hi *= 2
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:
        mid = (lo + hi) // 2
        if n <= mid:
            hi = mid
        else:
            lo = mid + 1
    return lo


def broadcast_pattern(t: Optional[torch.Tensor], shape: Sequence[int]) -> str:
    """How ``t`` broadcasts over ``shape`` = ``[B, H, N, D]``: one letter per dim that it spans, ``1``
    per broadcast dim (``"BHND"`` per token, ``"1H1D"`` per channel); ``"-"`` for None."""
    if t is None:
        return "-"
    dims = (1,) * (4 - t.dim()) + tuple(t.shape)
    return "".join(name if size != 1 or full == 1 else "1"
                   for name, size, full in zip("BHND", dims, shape))


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s model name where there is one, else the machine type): a cache
    directory shared by several machines (a home on NFS) keeps their choices apart."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return " ".join(line.split(":", 1)[1].replace("|", "/").split())[:80] or platform.machine()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@assume_constant_result
def device_label(device: str) -> str:
    """``torch.cuda.get_device_name`` for a CUDA device; ``cpu:<model>:threads=T`` on CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "cpu":
        return f"cpu:{cpu_name()}:threads={torch.get_num_threads()}"
    return dev.type


def make_key(q: torch.Tensor, mask_logits: torch.Tensor, noise: Optional[torch.Tensor], *, training: bool,
             grad: bool) -> Key:
    """The key of a validated ``dcs_attention`` input (q ``[B, H, N, D]``); metadata only."""
    B, H, N, D = q.shape
    return (device_label(str(q.device)), str(q.dtype).replace("torch.", ""), bucket(B * H), bucket(N), exact(D),
            broadcast_pattern(mask_logits, q.shape), broadcast_pattern(noise if training else None, q.shape),
            bool(training), bool(grad))


def key_str(key: Key) -> str:
    """The key as the JSON file spells it."""
    dev, dtype, bh, n, d, theta, noise, training, grad = key
    return (f"{dev}|{dtype}|bh={bh}|n={n}|d={d}|theta={theta}|noise={noise}|"
            f"{'train' if training else 'eval'}|grad={int(grad)}")


# ------------------------------------------------------------------------------ when it may time

def enabled() -> bool:
    """False when ``RIBKERNELS_DCS_AUTOTUNE_BACKEND=0`` (or off/false/no): the static rule only."""
    raw = _env.get(ENV_VAR).strip().lower()
    if raw in ("0", "off", "false", "no"):
        return False
    if raw in ("", "1", "on", "true", "yes"):
        return True
    raise ValueError(f"{ENV_VAR} must be 0 (static rule) or 1 (measure), got {_env.get(ENV_VAR)!r}")


def capturing(q: torch.Tensor) -> bool:
    """True while a CUDA graph is being captured on the current stream of q's device."""
    return q.is_cuda and torch.cuda.is_current_stream_capturing()


def why_no_timing(q: torch.Tensor) -> Optional[str]:
    """Why a timing run may not happen now (None: it may). Call outside tracing only."""
    if not enabled():
        return f"{ENV_VAR}=0"
    if torch.are_deterministic_algorithms_enabled():
        return "torch.use_deterministic_algorithms(True)"
    if capturing(q):
        return "CUDA graph capture"
    return None


# ------------------------------------------------------------------------------------ the file

def cache_dir() -> str:
    """``$RIBKERNELS_CACHE``, else ``~/.cache/ribkernels`` (the package's cache convention)."""
    return _env.cache_dir()


def cache_path() -> str:
    return os.path.join(cache_dir(), CACHE_FILE_NAME)


def versions() -> Dict[str, str]:
    """The versions a cache file must match: torch, triton (``"none"`` when absent), ribkernels."""
    from importlib import metadata

    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = "none"
    from .._version import __version__

    return {"torch": torch.__version__, "triton": triton_version, "ribkernels": __version__}


def _warn_once(path: str, what: str, message: str) -> None:
    if (path, what) in _WARNED:
        return
    _WARNED.add((path, what))
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _parse_record(raw, known: Sequence[str]) -> Optional[Record]:
    if not isinstance(raw, dict) or raw.get("choice") not in known:
        return None
    timings, failed = raw.get("timings_ms", {}), raw.get("failed", {})
    if not isinstance(timings, dict) or not isinstance(failed, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
               for k, v in timings.items()):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in failed.items()):
        return None
    return Record(raw["choice"], {k: float(v) for k, v in timings.items()}, dict(failed), source="cache file")


def read_file(path: str, known: Sequence[str], *, warn: bool = True) -> Dict[str, Record]:
    """The records of the cache file at ``path``; ``{}`` (with one warning) when it is corrupt or was
    written by other versions, ``{}`` silently when it does not exist. ``known``: the backend names a
    record may choose; a record naming anything else makes the file corrupt."""
    try:
        with open(path, encoding="utf-8") as f:
            blob = json.load(f)
    except (FileNotFoundError, NotADirectoryError):  # no file yet (or no cache dir: see write_file)
        return {}
    except (OSError, ValueError) as exc:
        if warn:
            _warn_once(path, "corrupt", f"ignoring the DCS backend-choice cache {path}: it cannot be read "
                                        f"({type(exc).__name__}: {exc}); it will be replaced")
        return {}
    problem = None
    if not isinstance(blob, dict) or not isinstance(blob.get("entries"), dict):
        problem = "it is not a {format, versions, entries} object"
    elif blob.get("format") != FORMAT:
        problem = f"its format is {blob.get('format')!r}, expected {FORMAT}"
    if problem is None and blob.get("versions") != versions():
        if warn:
            _warn_once(path, "version", f"ignoring the DCS backend-choice cache {path}: it was written with "
                                        f"{blob.get('versions')!r}, this is {versions()!r}; it will be replaced")
        return {}
    records: Dict[str, Record] = {}
    if problem is None:
        for k, raw in blob["entries"].items():
            rec = _parse_record(raw, known)
            if rec is None:
                problem = f"entry {k!r} is malformed or names an unknown backend ({raw!r:.120})"
                break
            records[k] = rec
    if problem is not None:
        if warn:
            _warn_once(path, "corrupt", f"ignoring the DCS backend-choice cache {path}: {problem}; "
                                        "it will be replaced")
        return {}
    return records


def write_file(path: str, records: Dict[str, Record], known: Sequence[str]) -> bool:
    """Merge ``records`` into the file at ``path`` (its valid records of these versions are kept) and
    write it atomically. False (after one warning) when the directory is not writable."""
    if path in _UNWRITABLE:
        return False
    merged = read_file(path, known, warn=False)
    merged.update(records)
    blob = {"format": FORMAT, "versions": versions(), "entries": {k: r.to_json() for k, r in sorted(merged.items())}}
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-dcs-backend-choice-", suffix=".json", dir=os.path.dirname(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(blob, f, indent=1)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        _UNWRITABLE.add(path)
        _warn_once(path, "unwritable", f"cannot write the DCS backend-choice cache {path} "
                                       f"({type(exc).__name__}: {exc}); choices are kept in memory only")
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return True


# ----------------------------------------------------------------------------------- look-ups

def _disk_records(known: Sequence[str]) -> Dict[str, Record]:
    path = cache_path()
    if path not in _DISK:
        _DISK[path] = read_file(path, known)
    return _DISK[path]


def cached(key: Key, known: Sequence[str]) -> Optional[Record]:
    """The record for ``key``: measured in this process, else from the cache file; None when there is
    none or the measured choice is off (``RIBKERNELS_DCS_AUTOTUNE_BACKEND=0``)."""
    if not enabled():
        return None
    rec = _MEMORY.get(key)
    if rec is None:
        rec = _disk_records(known).get(key_str(key))
    return rec


@assume_constant_result
def cached_choice(key: Key, known: Tuple[str, ...]) -> str:
    """:func:`cached`'s choice, ``""`` when none; a constant for torch.compile (read at trace time)."""
    rec = cached(key, known)
    return rec.choice if rec is not None else ""


def remember_fast(exact: tuple, choice: Tuple[str, str]) -> None:
    """Remember a validated choice for exact input metadata (bounded: cleared when full)."""
    if len(FAST) >= _FAST_MAX:
        FAST.clear()
    FAST[exact] = choice


def store(key: Key, rec: Record, known: Sequence[str]) -> None:
    """Remember ``rec`` in memory and in the cache file (memory only when it cannot be written)."""
    _MEMORY[key] = rec
    path = cache_path()
    disk = _DISK.setdefault(path, {})
    disk[key_str(key)] = rec
    write_file(path, {key_str(key): rec}, known)


# -------------------------------------------------------------------------------------- timing

class Measurement(NamedTuple):
    """What :func:`measure` found: the winner (None when no candidate ran), each candidate's median ms
    over its timed calls, and why the others failed."""

    choice: Optional[str]
    timings_ms: Dict[str, float]
    failed: Dict[str, str]


def _median_ratio(rounds: List[Dict[str, float]], a: str, b: str) -> float:
    """Median over the rounds that timed both of ``t_a / t_b``: pairs timed back to back see the same load."""
    tiny = 1e-12  # a clock that did not advance (a coarse or fake clock) counts as a tie, not a crash
    return statistics.median(max(r[a], tiny) / max(r[b], tiny) for r in rounds if a in r and b in r)


def measure(candidates: Dict[str, Callable[[], object]], sync: Callable[[], None], *, warmup: int = WARMUP,
            reps: int = REPS, max_reps: int = MAX_REPS, close: float = CLOSE,
            budget_s: float = BUDGET_S) -> Measurement:
    """Time the candidates (callables) and pick the fastest.

    ``warmup`` untimed calls each, then ``reps`` rounds of one call of every candidate, interleaved
    (fewer, down to ``MIN_REPS``, once they have taken ``budget_s``: slow inputs are timed less). The
    choice compares per-round time ratios (each candidate against the first, then the contenders against
    the leader), not medians of separate runs: on a shared machine the load drifts while timing, and two
    calls timed back to back see the same load. While candidates within ``close`` (relative) of the
    leader leave the choice in doubt, more rounds of just those, up to ``max_reps`` rounds in all and
    ``budget_s`` seconds of extra timing. Ties go to the candidate listed first."""
    failed: Dict[str, str] = {}
    live: List[str] = []
    for name, fn in candidates.items():
        try:
            for _ in range(warmup):
                fn()
            sync()
            live.append(name)
        except Exception as exc:  # a backend that cannot take this input (e.g. an SDPA kernel's limits, OOM)
            text = str(exc).strip()
            failed[name] = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
    rounds: List[Dict[str, float]] = []

    def one_round(names: Sequence[str]) -> None:
        times: Dict[str, float] = {}
        for name in names:
            if name in failed:
                continue
            try:
                sync()
                t0 = clock()
                candidates[name]()
                sync()
                times[name] = clock() - t0
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"[:300]
        rounds.append(times)

    start = clock()
    for i in range(reps):
        if i >= min(MIN_REPS, reps) and clock() - start >= budget_s:
            break
        one_round(live)
    live = [name for name in live if name not in failed]
    if not live or not rounds:
        return Measurement(None, {}, failed)
    ref = live[0]
    score = {name: _median_ratio(rounds, name, ref) for name in live}
    leader = min(live, key=lambda name: score[name])  # min() keeps the first of equal scores
    contenders = [name for name in live if score[name] <= score[leader] * (1 + close)]
    start, n_rounds = clock(), reps
    while len(contenders) > 1 and n_rounds < max_reps and clock() - start < budget_s:
        one_round(contenders)
        n_rounds += 1
        contenders = [name for name in contenders if name not in failed]
        if leader in failed or not contenders:
            break
    if leader not in failed and len(contenders) > 1:
        leader = min(contenders, key=lambda name: (_median_ratio(rounds, name, leader), contenders.index(name)))
    live = [name for name in live if name not in failed]
    timings = {name: statistics.median(r[name] for r in rounds if name in r) * 1e3 for name in live}
    if leader not in timings:
        leader = min(timings, key=timings.get) if timings else None
    return Measurement(leader, timings, failed)
