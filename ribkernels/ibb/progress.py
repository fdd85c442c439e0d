"""Progress of the long IBB refresh stages (k-means iterations, the β bisection).

``mode``: ``"off"`` (nothing), ``"bar"`` (a tqdm bar on stderr), ``"log"`` (INFO lines on the
``ribkernels.ibb`` logger with counts and an ETA: one line each time ``interval`` seconds have
passed since the start or the last line, and the last step's line when an earlier one was written:
a stage shorter than ``interval`` stays silent) or ``"auto"`` (a bar when stderr is a TTY, else log
lines). Only rank 0 of an initialised torch.distributed group shows anything.
"""
from __future__ import annotations

import logging
import sys
import time
logger = logging.getLogger("ribkernels.ibb")

MODES = ("auto", "bar", "log", "off")


def check_mode(progress) -> str:
    if progress is None or progress is False:
        return "off"
    if progress is True:
        return "auto"
    if progress not in MODES:
        raise ValueError(f"progress must be one of {MODES} (or True / False / None), got {progress!r}")
    return progress


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


_clock = time.monotonic  # (tests replace it)


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class StepProgress:
    """``total`` steps of the stage ``desc`` (e.g. "IBB k-means"); :meth:`step` after each one."""

    def __init__(self, total: int, desc: str, progress="off", interval: float = 5.0, clock=None):
        mode = check_mode(progress)
        if mode != "off" and _rank() != 0:
            mode = "off"
        self.total, self.desc, self.interval = int(total), desc, float(interval)
        self.clock = clock or _clock
        self.done = 0
        self.bar = None
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        if mode == "bar":
            try:
                from tqdm import tqdm
            except ImportError:  # no tqdm: log lines instead
                mode = "log"
            else:
                self.bar = tqdm(total=self.total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)
        self.mode = mode
        self.t0 = self.clock()
        self._last_line = self.t0
        self._lines = 0

    def step(self, last: bool = False, **values) -> None:
        """One step done; ``last``: the stage ends here (also before ``total``, e.g. converged)."""
        self.done += 1
        if self.mode == "bar":
            if values:
                self.bar.set_postfix({k: _fmt(v) for k, v in values.items()}, refresh=False)
            self.bar.update(1)
        elif self.mode == "log":
            now = self.clock()
            last = last or self.done >= self.total
            if now - self._last_line >= self.interval or (last and self._lines):
                self._last_line = now
                self._lines += 1
                elapsed = now - self.t0
                eta = 0.0 if last else elapsed / self.done * max(self.total - self.done, 0)
                text = "".join(f", {k} {_fmt(v)}" for k, v in values.items())
                logger.info("%s: %d/%d%s (%.1fs elapsed, ETA %.1fs)", self.desc, self.done, self.total,
                            text, elapsed, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
