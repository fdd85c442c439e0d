"""The run lock (``run.lock``, engine/run_folder.py): one holder at a time, also when two starts take
over a stale lock at the same instant (a scheduler retry and a user both running ``--resume auto``
after a kill), a live holder refused, a dead one's lock taken over."""
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time

import pytest

from ribkernels.engine import run_folder as rf

pytestmark = pytest.mark.skipif(rf.fcntl is None, reason="flock is POSIX-only")

TRIALS = 120


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _stale_lock(folder, pid: int, new_style: bool) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, rf.LOCK_NAME), "w") as f:
        f.write(f"pid={pid}\nhost={socket.gethostname()}\nstarted=then\n" + ("flock=1\n" if new_style else ""))


def _slow(fn, rng):
    """``fn`` followed by a random pause of up to 2 ms: a descheduled process between reading the lock
    and acting on it (what a loaded machine does), which widens any race window."""
    def call(*args):
        out = fn(*args)
        time.sleep(rng.random() * 0.002)
        return out
    return call


def _racer(folders, barrier, results):
    """Per folder: wait for the other racer, try to take the lock, report, hold it until both reported."""
    rng = random.Random(os.getpid())
    for name in ("_read_lock", "_read_fd", "_pid_alive"):  # in this forked child only
        if not hasattr(rf, name):
            continue
        setattr(rf, name, _slow(getattr(rf, name), rng))
    for i, folder in enumerate(folders):
        barrier.wait()
        try:
            held = rf.RunFolder(folder, lock=True)
        except rf.RunFolderError:
            held = None
        results.put((i, os.getpid(), held is not None))
        barrier.wait()  # both attempts are done while a winner still holds the lock
        if held is not None:
            held.release()
        barrier.wait()


def test_two_starts_racing_for_a_stale_lock_never_both_hold_it(tmp_path):
    dead = _dead_pid()
    folders = [str(tmp_path / f"run{i}") for i in range(TRIALS)]
    for i, folder in enumerate(folders):
        _stale_lock(folder, dead, new_style=bool(i % 2))  # an older ribkernels' lock file and ours
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2, timeout=60), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(folders, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in range(2 * TRIALS)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    holders = {i: sum(held for j, _, held in got if j == i) for i in range(TRIALS)}
    double = [i for i, n in holders.items() if n > 1]
    none = [i for i, n in holders.items() if n == 0]
    assert double == [], f"both starts held the lock in {len(double)} of {TRIALS} trials"
    assert none == [], f"nobody took the stale lock in {len(none)} of {TRIALS} trials"
    assert all(not os.path.exists(os.path.join(f, rf.LOCK_NAME)) for f in folders)  # released


def test_a_held_lock_is_refused_then_free_after_release(tmp_path):
    folder = str(tmp_path / "run")
    first = rf.RunFolder(folder)
    with open(os.path.join(folder, rf.LOCK_NAME)) as f:
        assert f"pid={os.getpid()}" in f.read()
    with pytest.raises(rf.RunFolderError, match=f"in use by another run \\(PID {os.getpid()}"):
        rf.RunFolder(folder)  # the same process too: the flock, not the PID, decides
    first.release()
    second = rf.RunFolder(folder)
    assert second.stale_lock is None
    second.release()


def test_a_lock_left_by_a_killed_holder_is_taken_over(tmp_path):
    """The holder is killed (its flock goes with it, its file stays): the next start takes over, even
    when the dead PID has been reused by a live process (the flock decides, not the PID)."""
    folder = str(tmp_path / "run")
    code = ("import sys, time; from ribkernels.engine import run_folder as rf; rf.RunFolder(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, folder], stdout=subprocess.PIPE,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(rf.RunFolderError, match=f"PID {holder.pid}"):
            rf.RunFolder(folder)
    finally:
        holder.kill()
        holder.wait()
    with open(os.path.join(folder, rf.LOCK_NAME)) as f:
        text = f.read()
    with open(os.path.join(folder, rf.LOCK_NAME), "w") as f:  # its PID now names a live process: ours
        f.write(text.replace(f"pid={holder.pid}", f"pid={os.getppid()}"))
    taken = rf.RunFolder(folder)
    assert taken.stale_lock is not None and taken.stale_lock["pid"] == str(os.getppid())
    taken.release()


def test_an_older_ribkernels_lock_of_a_live_process_is_refused(tmp_path):
    folder = str(tmp_path / "run")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _stale_lock(folder, live.pid, new_style=False)  # no flock=1: only its PID says it is alive
        with pytest.raises(rf.RunFolderError, match=f"PID {live.pid}"):
            rf.RunFolder(folder)
    finally:
        live.kill()
        live.wait()
    taken = rf.RunFolder(folder)
    assert taken.stale_lock["pid"] == str(live.pid)
    taken.release()


def _set_then_sleep(event):
    event.set()
    time.sleep(30)


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """A DataLoader worker forked while the lock is held must not hold it once the run is gone
    (killed: the lock file stays, the holder's descriptor closes)."""
    folder = str(tmp_path / "run")
    held = rf.RunFolder(folder)
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=_set_then_sleep, args=(started,))
    child.start()
    try:
        assert started.wait(30)  # the child runs (its fork handlers have run)
        rf._HELD_FDS.discard(held._fd)
        os.close(held._fd)  # what the kernel does when the holder dies
        held.locked = False
        again = rf.RunFolder(folder)  # refused if the child's copy of the descriptor kept the flock
        assert again.stale_lock["pid"] == str(os.getpid())
        again.release()
    finally:
        child.kill()
        child.join()
