"""The trainer's evaluation: metrics at an epoch or at the end (with the final record, plots and
``results.md``), and evaluating a checkpoint (``--eval-only --checkpoint``) into ``eval-<timestamp>.json``."""
import os
import time
from typing import Dict, Optional

from . import data as data_mod
from . import evaluation
from . import model as model_mod
from . import distributed as du
from . import rib_logging
from .reporting import Metrics, plot_curves, results_table


class RunEvaluation:
    """Mixin of :class:`~ribkernels.engine.trainer.Trainer`: evaluation."""

    def evaluate(self, epoch: int, final: bool = False) -> Optional[Dict]:
        """Retrieval metrics on query/gallery (rank 0 only; the others wait). The final evaluation also
        records each query's AP and rank-1 hit (clean, and occluded when ``eval.occlusion``) in
        ``final["per_query"]``, for contrasts paired per query (experiments/paired.py)."""
        result = None
        if self.main:
            t0 = time.time()
            e = self.cfg["eval"]
            res = evaluation.evaluate(self.model, self.data, self.cfg, self.device, self._autocast,
                                      progress=self.task_progress, per_query=final)
            per_query = res.pop("per_query", None)
            result = {"epoch": epoch, **res, "time_s": time.time() - t0}
            self.log.info("eval epoch %d: mAP %.2f%% Rank-1 %.2f%% Rank-5 %.2f%% Rank-10 %.2f%% mINP %.2f%% (%.1fs)",
                          epoch, 100 * res["mAP"], 100 * res["rank1"], 100 * res["rank5"], 100 * res["rank10"],
                          100 * res["mINP"], result["time_s"])
            self.metrics.add_eval(result)
            if final:
                final_rec = dict(res)
                if rib_logging.dcs_modules(self.model) and self.cfg["output"]["keep_fraction_log"]:
                    # per-block eval masks on a fixed batch (the first query images), so a resumed run
                    # that only evaluates records what the uninterrupted one does
                    imgs, _, cams, views = data_mod.unpack(
                        next(iter(self.data.test_loader(self.cfg, self.data.query[: self.local_batch]))), self.device)
                    final_rec.update(rib_logging.eval_keep_fractions(
                        self.model, imgs, **model_mod.model_inputs(self.cfg["model"], cams, views)))
                if "eval_keep_fraction" in final_rec:
                    final_rec["keep_fraction"] = final_rec["eval_keep_fraction"]
                elif self.model_keep_fraction_eval() is not None:
                    final_rec["keep_fraction"] = self.model_keep_fraction_eval()
                if e["occlusion"]:
                    occ = evaluation.occlusion_table(self.model, self.data, self.cfg, self.device, self._autocast,
                                                     progress=self.task_progress, per_query=True)
                    per_query["occlusion"] = evaluation.occlusion_per_query(occ, per_query["query_pids"])
                    final_rec["occlusion"] = occ
                    self.log.info("\n" + results_table(
                        [{"name": f"occlusion {r['ratio']:.0%}", **r} for r in occ], "occlusion stress test"))
                final_rec["per_query"] = per_query
                self.metrics.set("final", final_rec)
                name = f"{self.cfg['_meta']['config_name']} ({self.cfg['model']['name']}, attn {self.cfg['model']['attn_impl']}" \
                       + (", IBB" if self.ibb is not None else "") + ")"
                table = results_table([{"name": name, **res}], f"final evaluation, epoch {epoch}")
                if not self.eval_only:  # --eval-only writes its own eval-<timestamp>.json, nothing else
                    plot_curves(self.metrics.data, self.run_dir)
                    with open(os.path.join(self.run_dir, "results.md"), "w") as f:
                        f.write(table + "\n")
                print("\n" + table + "\n", flush=True)
                self.log.info("run folder: %s", self.run_dir)
        du.barrier()
        return result

    def model_keep_fraction_eval(self) -> Optional[float]:
        kf = self.model.keep_fraction() if hasattr(self.model, "keep_fraction") else None
        return None if kf is None else float(kf)

    def evaluate_checkpoint(self, checkpoint: Optional[str], model_file=None) -> Optional[Dict]:
        """Evaluate ``checkpoint``: the model its own stored config describes, with this run's
        eval-time choices. The result goes to ``eval-<timestamp>.json`` in the run folder
        (``metrics.json`` and the rest of a run folder are never rewritten)."""
        epoch = 0
        if checkpoint:
            from .model_file import EVAL_TIME_MODEL_KEYS, eval_config, read_model_file

            mf = model_file or read_model_file(checkpoint)
            cfg = eval_config(mf.config, self.cfg, [f"model.{k}" for k in EVAL_TIME_MODEL_KEYS])
            self.model = model_mod.build_model_from_file(mf, cfg, checkpoint).to(self.device)
            epoch = mf.epoch
        elif self.cfg["model"]["pretrained"]:
            self.log.info("--eval-only without --checkpoint: evaluating the model with the --pretrained weights %s",
                          self.cfg["model"]["pretrained"])
        else:
            self.log.warning("--eval-only without --checkpoint or --pretrained: evaluating the freshly initialised "
                             "model")
        result = self.evaluate(epoch, final=True)
        if self.main:
            out = {"checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
                   "final": self.metrics.data.get("final"), "config": self.cfg}
            self.eval_path = os.path.join(self.run_dir, f"eval-{self.eval_stamp}.json")
            n = 1
            while os.path.exists(self.eval_path):  # two evaluations within a second
                self.eval_path, n = os.path.join(self.run_dir, f"eval-{self.eval_stamp}-{n}.json"), n + 1
            Metrics(self.eval_path, out).write()
            self.log.info("evaluation written to %s", self.eval_path)
        return result
