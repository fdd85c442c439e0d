"""The trainer's RIB/IBB schedule: when the IBB term is on, and its refresh (input clusters once, then
feature clusters from the training memory or an evaluation pass every ``ibb.refresh`` epochs)."""
import time
from typing import Optional

import torch

from . import features
from . import ibb_terms


class IBBSchedule:
    """Mixin of :class:`~ribkernels.engine.trainer.Trainer`: the IBB's schedule and refresh."""

    def ibb_active(self, epoch: int) -> bool:
        return self.ibb is not None and epoch >= self.cfg["ibb"]["start_epoch"]

    def _maybe_refresh_ibb(self, epoch: int) -> Optional[float]:
        c = self.cfg["ibb"]
        if not self.ibb_active(epoch) or (epoch - c["start_epoch"]) % c["refresh"]:
            return None
        t0 = time.time()
        if not self.input_clusters_ready:
            images = ibb_terms.input_cluster_images(self.data, self.cfg, self.cfg["solver"]["seed"],
                                                     self.rank, self.world)
            self.ibb.set_input_clusters(images.to(self.device))
            self.input_clusters_ready = True
        if c["refresh_features"] == "train_memory" and self._feat_memory:
            feats = torch.cat([f for f, _ in self._feat_memory])
            labels = torch.cat([y for _, y in self._feat_memory])
        else:  # eval_pass, or no training batches seen yet (first epoch, or just resumed)
            loader = self.data.train_eval_loader(self.cfg, self.rank, self.world)
            with self.task_progress(f"IBB refresh at epoch {epoch + 1}: training-set features",
                                    len(loader.dataset)) as bar:
                feats, labels = features.extract_global_features(
                    self.model, loader, self.device, self._autocast,
                    {**self.cfg["model"], "ibb_after_neck": c["feature"] == "after"}, progress=bar)
        if c.get("control") == "shuffled_q":  # the control: Q from labels shuffled across the features
            labels = ibb_terms.shuffled_labels(labels, self.cfg["solver"]["seed"], epoch, self.rank)
        self.ibb.refresh(feats, labels)
        self._want_grad_ratio = True
        dt = time.time() - t0
        self.log.info("IBB refresh at epoch %d: %d features on this rank, %.1fs", epoch + 1, len(labels), dt)
        return dt
