"""Run folders that are never overwritten: which folder a start uses, a PID lock against a
second concurrent run, leftover temp files removed, and no empty folder left by a failed start.

* a new run refuses a folder that already holds a run (checkpoints or metrics);
* ``--resume auto`` uses ``--output-dir``, or without it the latest ``runs/<config name>-<timestamp>``
  folder that has a ``last.pth``;
* ``--eval-only`` writes only ``eval-<timestamp>.*`` files, so it may share a run's folder.
"""
import fnmatch
import glob
import os
import re
import socket
import time
from typing import Dict, List, Optional

from . import checkpoint as ckpt_io
from . import distributed as du

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_HELD_FDS: set = set()  # lock files this process holds: a forked child (e.g. a DataLoader worker) closes its copies


def _close_held_in_child() -> None:
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)

RUNS_ROOT = "runs"
LOCK_NAME = "run.lock"
# Files that mean "this folder holds a run" (a new run must not write over them).
RUN_MARKERS = ("last.pth", "final.pth", "metrics.json")
# Files a start writes before its first checkpoint: removed again when that start fails.
START_FILES = ("config.yaml", "train.log", LOCK_NAME, "eval-*.log")


class RunFolderError(RuntimeError):
    """A run folder that cannot be used; the message names it and the ways out."""


def safe_config_name(name) -> str:
    """``name`` as one folder-name part: characters outside ``[A-Za-z0-9._-]`` become ``_`` (so no
    ``/``, ``..`` part, NUL or absolute path survives), no leading/trailing dots or dashes, at most 80
    characters, never empty (``"run"``)."""
    text = name if isinstance(name, str) else ""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80].strip("._-")
    return out or "run"


def _inside(path: str, root: str) -> str:
    """``path``, after checking that it resolves inside ``root`` (symbolic links followed)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base:
        raise RunFolderError(f"run folder {path} resolves to {real}, outside {base}; give --output-dir")
    return path


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def latest_run(config_name: str, root: str = RUNS_ROOT) -> Optional[str]:
    """The folder ``root/<config_name>-<YYYYmmdd-HHMMSS>`` whose ``last.pth`` is newest, or None."""
    config_name = safe_config_name(config_name)
    pattern = re.compile(re.escape(config_name) + r"-\d{8}-\d{6}(-\d+)?")
    best, best_time = None, -1.0
    for folder in glob.glob(os.path.join(glob.escape(root), glob.escape(config_name) + "-*")):
        last = os.path.join(folder, "last.pth")
        if pattern.fullmatch(os.path.basename(folder)) and os.path.isfile(last):
            mtime = os.path.getmtime(last)
            if mtime > best_time:
                best, best_time = folder, mtime
    return best


def _new_folder(config_name: str, root: str = RUNS_ROOT) -> str:
    """A new ``root/<config_name>-<timestamp>`` (the name made safe, the folder confined to ``root``)."""
    base = os.path.join(root, f"{safe_config_name(config_name)}-{timestamp()}")
    path, n = base, 1
    while os.path.exists(path):  # two starts in one second
        path, n = f"{base}-{n}", n + 1
    return _inside(path, root)


def markers(folder: str) -> List[str]:
    """The run files (``RUN_MARKERS``) present in ``folder``."""
    return [m for m in RUN_MARKERS if os.path.exists(os.path.join(folder, m))]


def plan(cfg: Dict, *, resume: Optional[str] = None, eval_only: bool = False,
         checkpoint: Optional[str] = None) -> Dict[str, Optional[str]]:
    """``{"run_dir", "resume_path"}`` for a start, checking without creating anything: a new run into a
    folder holding another run, ``--resume auto`` with no run to continue, or a missing resume file
    raise :class:`RunFolderError`."""
    out = cfg["output"]["dir"]
    name = cfg["_meta"]["config_name"]
    if eval_only:
        if not out:
            out = os.path.dirname(os.path.abspath(checkpoint)) if checkpoint else _new_folder(name)
        return {"run_dir": out, "resume_path": None}
    if resume == "auto":
        if not out:
            out = latest_run(name)
            if out is None:
                raise RunFolderError(
                    f"--resume auto: no run of config {name!r} to continue (looked for "
                    f"{os.path.join(RUNS_ROOT, safe_config_name(name))}-<timestamp>/last.pth from {os.getcwd()}); "
                    "start a new run without --resume, or give --output-dir of the run to continue")
        path = os.path.join(out, "last.pth")
        if not os.path.isfile(path):
            raise RunFolderError(f"--resume auto: {path} does not exist, so there is nothing to continue in {out}; "
                                 "start a new run without --resume (into a new --output-dir)")
        return {"run_dir": out, "resume_path": path}
    if resume:
        if not os.path.isfile(resume):
            raise RunFolderError(f"--resume {resume}: no such file")
        home = os.path.dirname(os.path.abspath(resume))
        found = markers(out) if out and os.path.isdir(out) and os.path.abspath(out) != home else []
        if found:  # continuing a run into a folder that holds another run would overwrite it
            raise RunFolderError(f"--output-dir {out} holds another run ({', '.join(found)}) than --resume {resume}; "
                                 f"continue in the checkpoint's own folder (leave out --output-dir) or give a new one")
        return {"run_dir": out or home, "resume_path": resume}
    if not out:
        return {"run_dir": _new_folder(name), "resume_path": None}
    found = markers(out) if os.path.isdir(out) else []
    if found:
        raise RunFolderError(
            f"--output-dir {out} already holds a run ({', '.join(found)}); a new run would overwrite it. "
            f"Continue that run with --resume auto --output-dir {out}, or start a new one with another --output-dir")
    return {"run_dir": out, "resume_path": None}


# ---------------------------------------------------------------------------------------- the lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _parse_lock(text: str) -> Dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _read_fd(fd: int) -> Dict[str, str]:
    try:
        return _parse_lock(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    except OSError:
        return {}


def _read_lock(path: str) -> Dict[str, str]:
    try:
        with open(path) as f:
            fields = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
    except OSError:
        return {}
    return fields


class RunFolder:
    """A run folder this process uses: created if needed, locked (``run.lock`` with PID and host),
    temp files of killed writes removed. :meth:`abandon` undoes a start that failed."""

    def __init__(self, path: str, lock: bool = True, must_be_new: bool = False):
        """``must_be_new``: a new run's folder, which must not hold a run (checked again under the lock)."""
        self.path = path
        self.created = not os.path.isdir(path)
        self.lock_path = os.path.join(path, LOCK_NAME) if lock else None
        self.locked = False
        self._fd: Optional[int] = None
        self.removed_temp_files: List[str] = []
        self.stale_lock: Optional[Dict[str, str]] = None
        os.makedirs(path, exist_ok=True)
        try:
            if lock:
                self._acquire()
                found = markers(path) if must_be_new else []
                if found:  # another start finished in it between plan() and the lock
                    raise RunFolderError(f"--output-dir {path} already holds a run ({', '.join(found)}); continue it "
                                         f"with --resume auto --output-dir {path}, or use another --output-dir")
                self.removed_temp_files = ckpt_io.remove_stale_temp_files(path)
        except BaseException:
            self.abandon()
            raise

    def _acquire(self) -> None:
        """Take ``run.lock``: an exclusive ``flock`` on the file, held while the run lives (the kernel drops
        it when the process dies, so a take-over is atomic: of two starts at once exactly one gets it).
        The file names the holder (PID, host, start time). A lock file written without ``flock`` (an
        older ribkernels) still counts while its PID lives on this host."""
        if fcntl is None:  # no flock (Windows): create-exclusive, stale locks removed by PID
            return self._acquire_exclusive()
        host = socket.gethostname()
        for _ in range(20):  # a holder that releases (unlinks) between our open and our flock: retry
            fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._refuse(_read_lock(self.lock_path), host)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file its holder has just unlinked: take the new one
                os.close(fd)
                continue
            held = _read_fd(fd)
            if held:
                pid = int(held.get("pid", "0") or 0) if held.get("pid", "").isdigit() else 0
                old_style = held.get("flock") != "1"
                if old_style and held.get("host") == host and pid and pid != os.getpid() and _pid_alive(pid):
                    os.close(fd)  # an older ribkernels run that holds the folder by its PID only
                    self._refuse(held, host)
                if old_style and held.get("host") not in (None, host):
                    os.close(fd)
                    self._refuse(held, host)
                self.stale_lock = held  # its holder is gone: the flock was free
            os.ftruncate(fd, 0)
            os.pwrite(fd, (f"pid={os.getpid()}\nhost={host}\nstarted={time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                           "flock=1\n").encode(), 0)
            self._fd = fd
            _HELD_FDS.add(fd)
            self.locked = True
            return
        raise RunFolderError(f"{self.lock_path}: could not take the run lock (another start races for it)")

    def _refuse(self, held: Dict[str, str], host: str) -> None:
        pid = held.get("pid", "?")
        same_host = held.get("host") in (None, host)
        where = "" if same_host else f" on host {held.get('host')} (cannot check from here; delete " \
                                     f"{self.lock_path} if no run uses the folder)"
        raise RunFolderError(f"{self.path} is in use by another run (PID {pid}{where}, started "
                             f"{held.get('started', '?')}): wait for it to finish, or use another "
                             "--output-dir") from None

    def _acquire_exclusive(self) -> None:
        host = socket.gethostname()
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                held = _read_lock(self.lock_path)
                pid = int(held.get("pid", "0") or 0) if held.get("pid", "").isdigit() else 0
                same_host = held.get("host") == host
                fresh = time.time() - os.path.getmtime(self.lock_path) < 10 if os.path.exists(self.lock_path) else False
                stale = (same_host and pid and (pid == os.getpid() or not _pid_alive(pid))) or (not held and not fresh)
                if not stale:
                    self._refuse(held, host)
                self.stale_lock = held
                try:
                    os.remove(self.lock_path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"pid={os.getpid()}\nhost={host}\nstarted={time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            self.locked = True
            return
        raise RunFolderError(f"{self.lock_path}: could not take the run lock (another start races for it)")

    def release(self) -> None:
        """Unlink ``run.lock`` while still holding its flock, then drop the flock (a start that opened the
        old file meanwhile sees it was unlinked and takes a new one)."""
        if self.locked:
            try:
                if _read_lock(self.lock_path).get("pid") == str(os.getpid()):
                    os.remove(self.lock_path)
            except FileNotFoundError:
                pass
            if self._fd is not None:
                _HELD_FDS.discard(self._fd)
                os.close(self._fd)
                self._fd = None
            self.locked = False

    def abandon(self) -> None:
        """After a failed start: release the lock and, if this start created the folder and it holds
        only what the start wrote (no checkpoint, no metrics), remove it."""
        self.release()
        if not self.created or not os.path.isdir(self.path):
            return
        names = os.listdir(self.path)
        if all(any(fnmatch.fnmatchcase(n, pattern) for pattern in START_FILES) for n in names):
            for name in names:
                os.remove(os.path.join(self.path, name))
            os.rmdir(self.path)


def open_run_folder(cfg: Dict, resume: Optional[str], eval_only: bool, checkpoint: Optional[str] = None):
    """(RunFolder or None on ranks > 0, run dir, resume path) for a start: planned and locked on rank 0,
    the outcome (or its error) broadcast so every rank stops together."""
    outcome = None
    folder = None
    if du.is_main():
        try:
            planned = plan(cfg, resume=resume, eval_only=eval_only, checkpoint=checkpoint)
            folder = RunFolder(planned["run_dir"], lock=not eval_only,
                               must_be_new=not eval_only and not planned["resume_path"])
            outcome = ("ok", planned)
        except RunFolderError as e:
            outcome = ("error", str(e))
        except OSError as e:  # e.g. a folder that cannot be created
            outcome = ("error", f"run folder: {e}")
    outcome = du.broadcast_object(outcome)
    if outcome[0] == "error":
        raise RunFolderError(outcome[1])
    return folder, outcome[1]["run_dir"], outcome[1]["resume_path"]
