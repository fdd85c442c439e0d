"""Run-folder output: the log, ``metrics.json``, PNG curves, the final table and progress display."""
import json
import logging
import math
import os
import re
import sys
import time
from typing import Dict, Iterable, List, Optional

LOGGER_NAME = "ribkernels.train"


def setup_logging(run_dir: Optional[str], main: bool, log_name: str = "train.log") -> logging.Logger:
    """Log to stdout and ``run_dir/log_name`` on rank 0; other ranks log warnings only."""
    log = logging.getLogger(LOGGER_NAME)
    for h in list(log.handlers):
        h.close()
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    sh = logging.StreamHandler(sys.stdout)
    sh.setFormatter(fmt)
    log.addHandler(sh)
    if main and run_dir:
        fh = logging.FileHandler(os.path.join(run_dir, log_name))
        fh.setFormatter(fmt)
        log.addHandler(fh)
    # Library loggers (ribkernels.*) share the handlers.
    lib = logging.getLogger("ribkernels")
    lib.handlers = list(log.handlers)
    lib.setLevel(log.level)
    lib.propagate = False
    return log


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


_NUMBER = r"(?:-?[0-9][0-9.eE+-]*|null|NaN|-?Infinity)"
# as json.dumps(indent=...) writes a list of numbers: one per line (a string never holds a raw newline)
_NUMBER_LIST = re.compile(r"\[\n\s*" + _NUMBER + r"(?:,\n\s*" + _NUMBER + r")*\n\s*\]")


def json_text(data) -> str:
    """``data`` as indented JSON with every list of numbers on one line (per-query lists, of hundreds or
    thousands of values, would otherwise take a line each)."""
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(0)[1:-1].split(",")) + "]",
                            json.dumps(data, indent=1))


class Metrics:
    """``metrics.json``: ``{"config_name", "epochs": [per-epoch records], "evals": [...], "final": {...}}``.
    Written atomically after every update."""

    def __init__(self, path: Optional[str], state: Optional[Dict] = None):
        self.path = path
        self.data = state or {"epochs": [], "evals": [], "final": None}
        self.tensorboard = None  # a SummaryWriter (open_tensorboard) that mirrors the numbers

    def add_epoch(self, record: Dict) -> None:
        self.data["epochs"].append(_clean(record))
        self.write()
        self._scalars("train", record)

    def add_eval(self, record: Dict) -> None:
        self.data["evals"].append(_clean(record))
        self.write()
        self._scalars("eval", record)

    def _scalars(self, prefix: str, record: Dict) -> None:
        if self.tensorboard is None:
            return
        step = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.tensorboard.add_scalar(f"{prefix}/{key}", value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def set(self, key: str, value) -> None:
        self.data[key] = _clean(value)
        self.write()

    def write(self) -> None:
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json_text(self.data))
        os.replace(tmp, self.path)


TENSORBOARD_MISSING = ("output.tensorboard is on (--tensorboard) but the tensorboard package is not installed; "
                      "install it (pip install tensorboard) or drop --tensorboard")


def require_tensorboard() -> None:
    """Raise ImportError with an install hint when TensorBoard logging cannot work (checked at start,
    before any data is read)."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{TENSORBOARD_MISSING} ({exc})") from exc


def open_tensorboard(run_dir: str):
    """A SummaryWriter writing to ``run_dir/tensorboard`` (``tensorboard --logdir runs``)."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(run_dir, "tensorboard"))


def _epoch_axis(ax, xs: List[float]) -> None:
    """Integer epoch ticks; a one-point series gets a margin so its marker is not on the frame."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    if xs and min(xs) == max(xs):
        ax.set_xlim(min(xs) - 1, max(xs) + 1)


def save_figure(fig, out_dir: str, name: str) -> str:
    """Lay out ``fig``, write it to ``out_dir/name`` (legends outside the axes kept) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # legends placed outside the axes stay in the picture
    plt.close(fig)
    return path


def legend_outside(ax, handles=None, labels=None, ncol: int = 2, fontsize: float = 8):
    """The legend of ``ax`` under the axes, below the x label: never over the data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=ncol,
                     fontsize=fontsize, frameon=False)


def plot_curves(metrics: Dict, out_dir: str) -> List[str]:
    """PNG plots: loss terms per epoch, the IBB bound and its terms (with the kept DCS channels on a
    second axis, in the same legend), mAP/Rank-1/mINP per evaluation. Integer epoch ticks, a marker
    on every point (one evaluation is one visible point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nan = float("nan")
    written = []
    epochs = metrics.get("epochs") or []
    if epochs:
        x = [r["epoch"] for r in epochs]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in ("loss", "loss_id", "loss_tri", "loss_ibb_weighted"):
            ys = [r.get(key) for r in epochs]
            if any(y is not None for y in ys):
                ax.plot(x, [nan if y is None else y for y in ys], marker="o", ms=4, label=key)
        _epoch_axis(ax, x)
        ax.set_ylabel("mean loss")
        ax.set_title("training losses")
        ax.legend()
        written.append(save_figure(fig, out_dir, "losses.png"))
        keys = [k for k in ("ibb", "ibb_term1", "ibb_term2") if any(r.get(k) is not None for r in epochs)]
        if keys:
            fig, ax = plt.subplots(figsize=(6, 4.6))
            for key in keys:
                ax.plot(x, [nan if r.get(key) is None else r[key] for r in epochs], marker="o", ms=4, label=key)
            handles, labels = ax.get_legend_handles_labels()
            kf = [r.get("keep_fraction") for r in epochs]
            if any(v is not None for v in kf):
                ax2 = ax.twinx()
                ax2.plot(x, [nan if v is None else v for v in kf], color="gray", ls="--", marker="s", ms=4,
                         label="keep fraction (right axis)")
                ax2.set_ylabel("kept DCS channels (fraction)")
                ax2.set_ylim(0.0, 1.05)
                h2, l2 = ax2.get_legend_handles_labels()
                handles, labels = handles + h2, labels + l2
            _epoch_axis(ax, x)
            ax.set_ylabel("IBB (nats)")
            ax.set_title("IBB bound")
            legend_outside(ax, handles, labels)
            written.append(save_figure(fig, out_dir, "ibb.png"))
    evals = metrics.get("evals") or []
    if evals:
        fig, ax = plt.subplots(figsize=(6, 4))
        x = [r["epoch"] for r in evals]
        for key, label in (("mAP", "mAP"), ("rank1", "Rank-1"), ("mINP", "mINP")):
            ax.plot(x, [100 * r[key] for r in evals], marker="o", ms=6, label=label)
        _epoch_axis(ax, x)
        ax.set_ylabel("%")
        ax.set_title("evaluation")
        ax.legend()
        written.append(save_figure(fig, out_dir, "eval.png"))
    return written


def results_table(rows: Iterable[Dict], title: Optional[str] = None) -> str:
    """Markdown table of retrieval metrics (fractions shown as %)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| run | mAP | Rank-1 | Rank-5 | Rank-10 | mINP |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for k in ("mAP", "rank1", "rank5", "rank10", "mINP"):
            v = r.get(k)
            cells.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}")
        lines.append(f"| {r.get('name', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """``3h05m``, ``4m07s``, ``12s``."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class RunClock:
    """Whole-run ETA: wall time per training iteration since this process began training (the IBB
    refreshes and evaluations between epochs included, so they are amortised), times the iterations
    left. The final evaluation after the last iteration is not included."""

    def __init__(self, total_iters: int, done_iters: int = 0, clock=time.monotonic):
        self.total, self.first, self.done = int(total_iters), int(done_iters), int(done_iters)
        self.clock = clock
        self.t0 = clock()

    def tick(self, n: int = 1) -> None:
        self.done += n

    def eta_s(self) -> Optional[float]:
        """Seconds left (None before the first iteration of this process)."""
        ran = self.done - self.first
        if ran <= 0:
            return None
        return (self.clock() - self.t0) / ran * max(self.total - self.done, 0)


class Progress:
    """Per-epoch progress: a tqdm bar on a TTY, else a log line every ``log_period`` iterations;
    with a :class:`RunClock`, both show the whole run's ETA."""

    def __init__(self, total: int, epoch: int, epochs: int, log: logging.Logger, mode: str = "auto",
                 log_period: int = 20, enabled: bool = True, clock: Optional[RunClock] = None):
        self.total, self.epoch, self.epochs, self.log = total, epoch, epochs, log
        self.clock = clock
        self.log_period = max(1, int(log_period))
        self.enabled = enabled
        use_bar = mode == "bar" or (mode == "auto" and sys.stdout.isatty())
        self.bar = None
        tqdm = None
        if enabled and use_bar:
            try:
                from tqdm import tqdm
            except ImportError:  # no tqdm: log lines instead
                pass
        if tqdm is not None:
            self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", dynamic_ncols=True, leave=True)
        self.t0 = time.time()

    def wants(self, it: int) -> bool:
        """Whether iteration ``it`` is a point that shows values (they cost a host sync on GPU); the
        same on every rank, whether or not this rank displays anything."""
        return (it + 1) % self.log_period == 0 or it + 1 == self.total

    def update(self, it: int, values: Optional[Dict[str, float]] = None) -> None:
        if self.clock is not None:
            self.clock.tick()
        if not self.enabled:
            return
        text = None if values is None else {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in values.items()}
        eta = self.clock.eta_s() if self.clock is not None else None
        if text is not None and eta is not None:
            text["run_eta"] = format_duration(eta)
        if self.bar is not None:
            if text is not None:
                self.bar.set_postfix(text, refresh=False)
            self.bar.update(1)
        elif text is not None:
            self.log.info("epoch %d/%d iter %d/%d %s", self.epoch + 1, self.epochs, it + 1, self.total,
                          " ".join(f"{k}={v}" for k, v in text.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TaskProgress:
    """Progress of one counted task (an evaluation pass, the IBB refresh's feature pass, re-ranking,
    the occlusion test): a tqdm bar when ``mode`` is ``bar``, or ``auto`` and stderr is a TTY; else
    log lines ``<desc>: <done>/<total> <unit> (<pct>%), <elapsed>, eta <left>`` — one when it starts,
    one at most every ``every_s`` seconds, one when it ends. ``enabled=False`` (ranks other than 0)
    shows nothing. Use as a context manager, or call :meth:`close`."""

    def __init__(self, desc: str, total: int, log: Optional[logging.Logger] = None, mode: str = "auto",
                 enabled: bool = True, unit: str = "images", every_s: float = 15.0, clock=time.monotonic):
        if total < 0:
            raise ValueError(f"total: expected >= 0, got {total}")
        self.desc, self.total, self.unit, self.every_s = desc, int(total), unit, float(every_s)
        self.log = log or logging.getLogger(LOGGER_NAME)
        self.enabled, self.clock, self.done, self.closed = enabled, clock, 0, False
        self.t0 = self.last = clock()
        self.bar = None
        if enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty())):
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, desc=desc, unit=" " + unit, dynamic_ncols=True, leave=False)
            except ImportError:  # no tqdm: log lines instead
                self.bar = None
        if enabled and self.bar is None:
            self.log.info("%s: %d %s to go", desc, self.total, unit)

    def eta_s(self) -> Optional[float]:
        if self.done <= 0:
            return None
        return (self.clock() - self.t0) / self.done * max(self.total - self.done, 0)

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(int(n))
            return
        now = self.clock()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            pct = 100.0 * self.done / self.total if self.total else 100.0
            eta = self.eta_s()
            self.log.info("%s: %d/%d %s (%.0f%%), %s, eta %s", self.desc, self.done, self.total, self.unit, pct,
                          format_duration(now - self.t0), "?" if eta is None else format_duration(eta))

    def close(self, completed: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.log.info("%s: %d/%d %s %s in %.1fs", self.desc, self.done, self.total, self.unit,
                      "done" if completed else "stopped", self.clock() - self.t0)

    def __enter__(self) -> "TaskProgress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(completed=exc_type is None)


def no_progress(desc: str, total: int, unit: str = "images") -> TaskProgress:
    """A :class:`TaskProgress` that shows nothing (the default of the functions that take a progress factory)."""
    return TaskProgress(desc, total, enabled=False, unit=unit)
