"""One real training step of train.py's trainer (RIB-DCS, the tiny test config, β "auto") under a
TorchDispatchMode that records every op: the step's IBB forward and backward must run as
``ribkernels::`` ops (the per-batch β fit with the bound, then its gradient), and no other op inside
``IBBLoss.forward`` may produce an n x A tensor (the eager bound would)."""
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ribkernels.engine import Trainer, build_parser, resolve
from ribkernels.engine import components
from ribkernels.ibb import extension_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "synthetic_tiny_test.yaml")

pytestmark = pytest.mark.skipif("cpu" not in extension_status()["devices"],
                                reason="ribkernels._C is not built")


class OpLog(TorchDispatchMode):
    """Records (op name, where: "ibb_forward" | "other", the largest output's numel; 0 for views,
    which compute nothing)."""

    def __init__(self):
        super().__init__()
        self.where = "other"
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        numel = 0 if func.is_view else max((o.numel() for o in outs if isinstance(o, torch.Tensor)),
                                           default=0)
        self.ops.append((func.name(), self.where, numel))
        return out


def test_training_step_runs_the_ibb_as_ribkernels_ops(tmp_path):
    args = build_parser().parse_args(["--config", TINY, "--data-root", str(tmp_path / "data"),
                                      "--output-dir", str(tmp_path / "run"), "--progress", "log",
                                      "--ibb-start-epoch", "0"])
    trainer = Trainer(resolve(args))
    try:
        ibb = trainer.ibb
        assert ibb is not None and ibb.beta == "auto" and ibb.batch_calibration
        trainer._maybe_refresh_ibb(0)
        idx = components.epoch_indices(trainer.data, trainer.cfg, 0, 0, 0, 1)[: trainer.local_batch]
        batch = next(iter(trainer.data.train_loader(trainer.cfg, idx, trainer.local_batch, seed=0)))
        log = OpLog()

        def enter(module, inputs):
            assert module.training  # the path that trains: β fitted to the batch
            log.where = "ibb_forward"

        def leave(module, inputs, output):
            log.where = "other"

        hooks = [ibb.register_forward_pre_hook(enter), ibb.register_forward_hook(leave)]
        try:
            with log:
                terms = trainer.train_step(batch, 0)
        finally:
            for h in hooks:
                h.remove()
        assert "ibb" in terms and torch.isfinite(terms["ibb"])
        assert isinstance(ibb.last_terms["beta"], torch.Tensor)  # the batch-fitted β

        names = [name for name, _, _ in log.ops]
        inside = [(name, numel) for name, where, numel in log.ops if where == "ibb_forward"]
        inside_names = [name for name, _ in inside]
        assert "ribkernels::ibb_forward_fit" in inside_names, inside_names  # β fit + bound, one op
        first_fwd = names.index("ribkernels::ibb_forward_fit")
        assert "ribkernels::ibb_backward.beta_tensor" in names[first_fwd + 1:], \
            "the IBB backward did not run as ribkernels::ibb_backward"
        n, A = trainer.local_batch, ibb.num_clusters
        eager_work = [(name, numel) for name, numel in inside
                      if not name.startswith("ribkernels::") and numel >= n * A]
        assert not eager_work, f"n x A work outside the extension in IBBLoss.forward: {eager_work}"
    finally:
        trainer.close()
