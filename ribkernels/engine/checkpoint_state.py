"""The trainer's checkpoint state: what a training checkpoint holds (every rank's RNG state, the
epoch's partial sums, the IBB's memory), writing ``last.pth`` / ``final.pth`` and resuming from one."""
import os
import time
from typing import Dict, List, Optional

from . import checkpoint as ckpt_io
from . import distributed as du
from . import resume as resume_rules


class CheckpointState:
    """Mixin of :class:`~ribkernels.engine.trainer.Trainer`: save and load its training state."""

    def _rank_state(self, it: int) -> Dict:
        """What differs between ranks: the RNG states and, mid-epoch, the epoch's partial loss sums."""
        partial = None
        if it and self._partial is not None:
            p = self._partial
            partial = {"sums": {k: v.detach().cpu() for k, v in p["sums"].items()}, "counts": dict(p["counts"]),
                       "n_images": p["n_images"], "time_s": time.time() - p["t0"], "refresh_s": p["refresh_s"],
                       "refresh_record": p["refresh_record"]}
        ibb_extra = self.ibb.get_extra_state() if self.ibb is not None else None  # per-rank batch-β average
        memory = [[f.cpu(), y.cpu()] for f, y in self._feat_memory]  # ibb.refresh_features=train_memory
        return {"rng": ckpt_io.rng_state(), "epoch_partial": partial, "ibb_extra": ibb_extra,
                "ibb_feat_memory": memory}

    def _state(self, epoch: int, it: int, ranks: List[Dict]) -> Dict:
        """The checkpoint (weights-only format, ``checkpoint.FORMAT``) of the state before (epoch, it);
        ``ranks``: every rank's :meth:`_rank_state` (rank 0's also at the top level)."""
        return ckpt_io.training_state(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
            ibb=self.ibb.state_dict() if self.ibb is not None else None,
            input_clusters_ready=self.input_clusters_ready,
            ibb_feat_memory=ranks[0]["ibb_feat_memory"],  # exact resume (each rank's in ``ranks``)
            rng=ranks[0]["rng"], epoch=epoch, iter=it,
            epoch_partial=ranks[0]["epoch_partial"], ranks=ranks if len(ranks) > 1 else None,
            metrics=self.metrics.data, config=self.cfg, world_size=self.world)

    def save(self, epoch: int, it: int = 0, name: str = "last.pth") -> Optional[str]:
        """Checkpoint of the state *before* (epoch, it): resuming continues from there. Called on
        every rank (the ranks' RNG states are gathered); rank 0 writes."""
        ranks = du.all_gather_object(self._rank_state(it))
        if not self.main:
            return None
        path = ckpt_io.save_atomic(self._state(epoch, it, ranks), os.path.join(self.run_dir, name))
        self.log.info("checkpoint %s (epoch %d, iter %d)", path, epoch, it)
        return path

    def save_final(self, epoch: int) -> Optional[str]:
        """``final.pth``: the model, its config and sizes only (``engine/model_file.py``; no optimizer)."""
        if not self.main:
            return None
        from .model_file import model_file_state

        m = self.cfg["model"]
        state = model_file_state(self.model, self.cfg, self.data.num_classes,
                                 self.data.num_cams if m["sie_camera"] else 0,
                                 self.data.num_views if m["sie_view"] else 0, epoch)
        path = ckpt_io.save_atomic(state, os.path.join(self.run_dir, "final.pth"))
        self.log.info("model file %s (epoch %d)", path, epoch)
        return path

    def _load(self, state: Dict, path: str) -> None:
        """Continue from a training checkpoint (already read and checked against the config)."""
        try:
            self.model.load_state_dict(ckpt_io.model_state_from(state))
            fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(state["optimizer"])
            changed = set(self.config_changes)
            if changed & resume_rules.OPTIMIZER_KEYS:  # allowed changes: the new lr / wd / momentum
                for g, fresh in zip(self.optimizer.param_groups, fresh_groups):
                    g.update(fresh)
            if changed & (resume_rules.SCHEDULE_KEYS | resume_rules.OPTIMIZER_KEYS):
                self.scheduler.last_iter = int(state["scheduler"]["last_iter"])  # the new schedule, same step
                self.scheduler._apply()
            else:
                self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ibb is not None and state.get("ibb") is not None:
                self.ibb.load_state_dict(state["ibb"])
                self.input_clusters_ready = bool(state.get("input_clusters_ready"))
        except (RuntimeError, ValueError, KeyError) as e:
            raise ckpt_io.CheckpointError(path, f"does not fit the model/optimizer this config builds: {e}",
                                          "--resume") from None
        ranks = state.get("ranks")
        mine = ranks[self.rank] if ranks and len(ranks) == self.world else state
        ckpt_io.set_rng_state(mine["rng"])
        if self.ibb is not None and mine.get("ibb_extra") is not None:
            self.ibb.set_extra_state(mine["ibb_extra"])
        if self.ibb is not None:
            self._feat_memory = [(f.to(self.device), y.to(self.device)) for f, y in mine.get("ibb_feat_memory") or []]
        self.start_epoch, self.start_iter = int(state["epoch"]), int(state["iter"])
        self._resume_partial = mine.get("epoch_partial") if self.start_iter else None
        self.metrics.data = state["metrics"]
        if self.config_changes:
            record = {"epoch": self.start_epoch, "iter": self.start_iter,
                      "changes": {k: {"checkpoint": a, "now": b} for k, (a, b) in self.config_changes.items()}}
            self.metrics.data.setdefault("config_changes", []).append(record)
            self.log.warning("resuming with changed config (--allow-changes): %s", "; ".join(
                f"{k}: {a!r} -> {b!r}" for k, (a, b) in self.config_changes.items()))
        self.metrics.write()
        if state.get("world_size", 1) != self.world:
            self.log.warning("resuming a %d-process run with %d processes: the data order differs",
                             state.get("world_size", 1), self.world)
        self.log.info("resumed from %s at epoch %d iter %d", path, self.start_epoch, self.start_iter)
