"""Per-iteration cosine learning-rate schedule with linear warm-up (resumable via state_dict)."""
import math
from typing import Dict, List


class WarmupCosineLR:
    """lr(t) for iteration t of ``total_iters``: linear from ``warmup_factor·base`` to ``base`` over
    ``warmup_iters``, then cosine from ``base`` down to ``min_factor·base``. Each param group keeps its
    own base lr (``initial_lr``). Call :meth:`step` after every optimiser step."""

    def __init__(self, optimizer, total_iters: int, warmup_iters: int = 0, warmup_factor: float = 0.01,
                 min_factor: float = 0.0):
        if total_iters < 1:
            raise ValueError(f"total_iters must be >= 1, got {total_iters}")
        if not 0 <= warmup_iters <= total_iters:
            raise ValueError(f"warmup_iters must be in [0, total_iters={total_iters}], got {warmup_iters}")
        self.optimizer = optimizer
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.min_factor = float(min_factor)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.last_iter = 0
        self._apply()

    def factor(self, t: int) -> float:
        if t < self.warmup_iters:
            alpha = t / max(1, self.warmup_iters)
            return self.warmup_factor + (1.0 - self.warmup_factor) * alpha
        span = max(1, self.total_iters - self.warmup_iters)
        progress = min(1.0, (t - self.warmup_iters) / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        f = self.factor(self.last_iter)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def step(self) -> None:
        self.last_iter += 1
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict:
        return {"last_iter": self.last_iter, "total_iters": self.total_iters, "warmup_iters": self.warmup_iters,
                "warmup_factor": self.warmup_factor, "min_factor": self.min_factor}

    def load_state_dict(self, state: Dict) -> None:
        for k in ("total_iters", "warmup_iters"):
            if state[k] != getattr(self, k):
                raise ValueError(f"scheduler state has {k}={state[k]}, this run has {getattr(self, k)}: "
                                 "resume with the same epochs / batch size / dataset")
        self.last_iter = int(state["last_iter"])
        self.warmup_factor = float(state["warmup_factor"])
        self.min_factor = float(state["min_factor"])
        self._apply()
