"""The training loop of train.py (docs/training.md): TransReID recipe + η·IBB, DDP. ``Trainer`` holds the set-up
and the epoch loop; its checkpoint state, IBB schedule, evaluation and early stops are the mixins of
``checkpoint_state.py``, ``ibb_schedule.py``, ``run_evaluation.py`` and ``stopping.py``."""
import contextlib
import hashlib
import math
import os
import signal
import time
from typing import Dict, List, Optional

import torch

from ..reid.dataset_types import CorruptImageError
from . import checkpoint as ckpt_io
from . import data as data_mod
from . import distributed as du
from . import ibb_terms
from . import losses
from . import model as model_mod
from . import resume as resume_rules
from . import rib_logging
from . import run_folder as rf
from . import tau_schedule
from .checkpoint_state import CheckpointState
from .ibb_schedule import IBBSchedule
from .run_evaluation import RunEvaluation
from .run_folder import open_run_folder
from .stopping import StopHandling
from .config import DEFAULTS, dump
from .reporting import (Metrics, Progress, RunClock, TaskProgress, open_tensorboard, plot_curves, require_tensorboard,
                        setup_logging)
from .scheduler import WarmupCosineLR
from .validate import check_training_set


def _epoch_seed(seed: int, epoch: int, rank: int, salt: int = 0) -> int:
    """A seed for (epoch, rank): every epoch starts from a state that does not depend on what ran
    before it, so resuming at an epoch boundary reproduces an uninterrupted run exactly."""
    h = hashlib.sha256(f"{seed}/{epoch}/{rank}/{salt}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF




def param_digest(model: torch.nn.Module) -> str:
    """SHA-256 of all parameters and buffers (names, shapes, bytes), for cross-rank comparisons."""
    h = hashlib.sha256()
    for name, t in sorted(ckpt_io.model_state_from(model.state_dict()).items()):
        if not torch.is_tensor(t):  # a module's extra state (IBBLoss: its per-rank batch-β average)
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def param_groups(model: torch.nn.Module, base_lr: float, weight_decay: float, bias_lr_factor: float,
                 mask_logits_weight_decay: Optional[float] = None) -> List[Dict]:
    """The optimiser's param groups: weights (``base_lr``, ``weight_decay``) and biases (names ending in
    ``.bias``: ``base_lr * bias_lr_factor``, the same ``weight_decay``, as TransReID). With
    ``mask_logits_weight_decay`` set, the DCS mask logits (``DCSAttention.mask_logits``, weight and bias)
    leave those groups for their own two with that decay and the same learning rates; None (the
    default) keeps them in the weight/bias groups."""
    from .model import dcs_modules

    mask_ids = set()
    if mask_logits_weight_decay is not None:
        for m in dcs_modules(model):
            ml = m.mask_logits
            mask_ids.update(id(p) for p in (ml.parameters() if isinstance(ml, torch.nn.Module) else [ml]))
    decay, bias, mask_w, mask_b = [], [], [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_bias = name.endswith(".bias")
            if id(p) in mask_ids:
                (mask_b if is_bias else mask_w).append(p)
            else:
                (bias if is_bias else decay).append(p)
    groups = [{"params": decay, "lr": base_lr, "weight_decay": weight_decay}]
    if bias:
        groups.append({"params": bias, "lr": base_lr * bias_lr_factor, "weight_decay": weight_decay})
    if mask_w:
        groups.append({"params": mask_w, "lr": base_lr, "weight_decay": float(mask_logits_weight_decay)})
    if mask_b:
        groups.append({"params": mask_b, "lr": base_lr * bias_lr_factor, "weight_decay": float(mask_logits_weight_decay)})
    return groups


class Trainer(CheckpointState, IBBSchedule, RunEvaluation, StopHandling):
    def __init__(self, cfg: Dict, *, resume: Optional[str] = None, stop_after: Optional[int] = None,
                 eval_only: bool = False, checkpoint: Optional[str] = None, allow_changes=(),
                 sigint_at: Optional[tuple] = None):
        """``resume``: a checkpoint path or ``"auto"``; ``allow_changes``: config keys a resume may
        change; ``sigint_at``: (epoch, iter) after which the process sends itself SIGINT (tests)."""
        self.cfg = cfg
        self.device = du.setup(cfg["solver"]["device"])
        self.rank, self.world = du.rank(), du.world_size()
        self.main = du.is_main()
        self.stop_after = stop_after
        self.eval_only = eval_only
        self.sigint_at = tuple(sigint_at) if sigint_at else None
        self.interrupted = False
        if cfg["output"]["tensorboard"] and self.main:
            require_tensorboard()  # before any folder or data: a clear message, not a crash later
        self.clock: Optional[RunClock] = None
        self.folder, self.run_dir, resume = open_run_folder(cfg, resume, eval_only, checkpoint)
        try:
            self._setup(resume, checkpoint, allow_changes)
        except BaseException:
            if self.folder is not None:
                self.folder.abandon()
            raise

    def _setup(self, resume: Optional[str], checkpoint: Optional[str], allow_changes) -> None:
        cfg = self.cfg
        self.eval_stamp = rf.timestamp()
        self.log = setup_logging(self.run_dir, self.main,
                                 f"eval-{self.eval_stamp}.log" if self.eval_only else "train.log")
        if self.folder is not None and self.folder.stale_lock is not None:
            self.log.warning("took over the stale lock of a run that is gone (%s)", self.folder.stale_lock)
        if self.folder is not None and self.folder.removed_temp_files:
            self.log.warning("removed temp files of an interrupted checkpoint write: %s",
                             self.folder.removed_temp_files)
        # Every file named by the config or the flags is checked before any data is read.
        resume_state, self.config_changes = None, {}
        if resume:
            resume_state = ckpt_io.load_training_state(resume, what="--resume")
            self.config_changes = resume_rules.check(resume_state["config"], cfg, DEFAULTS, allow_changes, resume)
        if cfg["model"]["pretrained"]:
            ckpt_io.check_pretrained(cfg["model"]["pretrained"])
        config_file = os.path.join(self.run_dir, "config.yaml")
        if self.main and not self.eval_only and (not resume or self.config_changes or not os.path.exists(config_file)):
            dump(cfg, config_file)
        self.log.info("run folder %s | device %s | world size %d", self.run_dir, self.device, self.world)

        s = cfg["solver"]
        if s["num_threads"]:
            torch.set_num_threads(int(s["num_threads"]))
        ckpt_io.seed_everything(s["seed"])  # same model initialisation on every rank
        self.data = data_mod.build_data(cfg, self.rank, self.world, train=not self.eval_only)
        if not self.eval_only:  # e.g. more IBB clusters than training images (evaluation fits none)
            check_training_set(cfg, len(self.data.train), self.data.num_classes)
        self.log.info("dataset %s: %d train images of %d ids / %d cameras, %d query, %d gallery (folder %s)",
                      cfg["data"]["dataset"], len(self.data.train), self.data.num_classes, self.data.num_cams,
                      len(self.data.query), len(self.data.gallery), os.path.abspath(self.data.root) if self.data.root
                      else "-")
        self.model = model_mod.build_model(cfg, self.data).to(self.device)
        self.log.info("model %s (attn %s): %.2fM parameters", cfg["model"]["name"], cfg["model"]["attn_impl"],
                      sum(p.numel() for p in self.model.parameters()) / 1e6)
        self.ibb = ibb_terms.build_ibb(cfg, self.data, self.model)
        if self.ibb is not None:
            self.ibb.to(self.device)

        self.use_amp = self.device.type == "cuda" and s["amp"] in ("bf16", "fp16")
        self.amp_dtype = torch.bfloat16 if s["amp"] == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and s["amp"] == "fp16")

        if self.eval_only:  # nothing trains: no PK batches, optimizer or losses to set up
            self.iters_per_epoch, self.optimizer, self.scheduler = 0, None, None
            self.id_loss = self.tri_loss = None
        else:
            self._setup_training(s)

        self.start_epoch, self.start_iter = 0, 0
        self._partial = None  # the interrupted epoch's loss sums etc., continued by a resume
        self.metrics = Metrics(os.path.join(self.run_dir, "metrics.json") if self.main and not self.eval_only
                               else None)
        self.metrics.data["config_name"] = cfg["_meta"]["config_name"]
        if self.data.bad_images:  # left out with data.skip_bad_images: counted, never substituted
            self.metrics.data["bad_images"] = [{"path": p, "reason": r} for p, r in self.data.bad_images]
        if cfg["output"]["tensorboard"] and self.main and not self.eval_only:
            self.metrics.tensorboard = open_tensorboard(self.run_dir)
        self.input_clusters_ready = False
        self._want_grad_ratio = False  # the first IBB batch after a refresh logs the gradient ratio
        self._last_batch = None
        self._feat_memory: List = []  # ibb.refresh_features=train_memory: (features, labels) of this epoch
        if resume:
            self._load(resume_state, resume)
            if self.data.bad_images:  # left out from this resume on (--skip-bad-images)
                self.metrics.data["bad_images"] = [{"path": p, "reason": r} for p, r in self.data.bad_images]

        self.net = self.model
        if s["compile"]:
            self.net = torch.compile(self.net)
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False)
        self._interrupted = False

    # ------------------------------------------------------------------ set-up helpers
    def task_progress(self, desc: str, total: int, unit: str = "images") -> TaskProgress:
        """Progress of a long task on rank 0 (output.progress: a bar on a TTY, else log lines with counts and ETA)."""
        return TaskProgress(desc, total, self.log, self.cfg["output"]["progress"], enabled=self.main, unit=unit)

    def _setup_training(self, s: Dict) -> None:
        """PK batches per epoch, optimizer, schedule and losses (not built by --eval-only)."""
        cfg = self.cfg
        self.iters_per_epoch = len(data_mod.epoch_indices(self.data, cfg, s["seed"], 0, self.rank, self.world)) \
            // self.local_batch
        if s["max_iters_per_epoch"]:
            self.iters_per_epoch = min(self.iters_per_epoch, int(s["max_iters_per_epoch"]))
        if self.iters_per_epoch < 1:
            raise ValueError(f"the PK sampler gives no full batch of {self.local_batch} per rank; "
                             "use a smaller data.batch_size or more training identities")
        self.optimizer = self._make_optimizer()
        self.scheduler = WarmupCosineLR(
            self.optimizer, total_iters=s["epochs"] * self.iters_per_epoch,
            warmup_iters=min(s["epochs"], s["warmup_epochs"]) * self.iters_per_epoch,
            warmup_factor=s["warmup_factor"], min_factor=s["min_lr_factor"])
        self.id_loss, self.tri_loss = losses.build_losses(cfg, self.data.num_classes)

    @property
    def local_batch(self) -> int:
        b = self.cfg["data"]["batch_size"]
        if b % self.world:
            raise ValueError(f"data.batch_size ({b}) must be divisible by the number of processes ({self.world})")
        return b // self.world

    def _make_optimizer(self) -> torch.optim.Optimizer:
        s = self.cfg["solver"]
        groups = param_groups(self.model, s["base_lr"], s["weight_decay"], s["bias_lr_factor"],
                              s.get("mask_logits_weight_decay"))
        if s["optimizer"] == "adamw":
            return torch.optim.AdamW(groups, lr=s["base_lr"], betas=(s["momentum"], 0.999))
        return torch.optim.SGD(groups, lr=s["base_lr"], momentum=s["momentum"])

    def _autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ training
    def compute_loss(self, out: Dict, pids: torch.Tensor, epoch: int, images: torch.Tensor):
        """TransReID's mix: 0.5·global + 0.5·mean(JPM local) for ID and triplet; + η·IBB (or, with
        ``ibb.control = prototype``, the prototype control scaled to η·IBB's gradient norm on the feature)."""
        l = self.cfg["loss"]
        logits, feats = out["logits"], out["feats"]
        ids = [self.id_loss(z.float(), pids) for z in logits]
        tris = [self.tri_loss(f.float(), pids) for f in feats]
        mix = lambda xs: xs[0] if len(xs) == 1 else 0.5 * xs[0] + 0.5 * torch.stack(xs[1:]).mean()
        loss_id, loss_tri = mix(ids), mix(tris)
        loss = l["id_weight"] * loss_id + l["tri_weight"] * loss_tri
        terms = {"loss_id": loss_id.detach(), "loss_tri": loss_tri.detach()}
        feat = out["global_bn_feat" if self.cfg["ibb"]["feature"] == "after" else "global_feat"] \
            if self.ibb is not None else None
        if self.ibb is not None and self.cfg["ibb"]["refresh_features"] == "train_memory":
            self._feat_memory.append((feat.detach().float(), pids))
        if self.ibb_active(epoch):
            ibb, t1, t2 = ibb_terms.ibb_terms(self.ibb, feat.float(), pids, images)
            applied = l["eta"] * ibb
            if self.cfg["ibb"].get("control") == "prototype":  # the non-IB control replaces the IBB's gradient
                ctrl = ibb_terms.prototype_loss(self.ibb, feat, pids)
                scale = ibb_terms.matched_scale(applied, ctrl, feat) if feat.requires_grad \
                    else torch.full((), float(l["eta"]), device=ctrl.device)
                applied = scale * ctrl
                terms.update(control_loss=ctrl.detach(), control_scale=scale)
            if self._want_grad_ratio and feat.requires_grad:  # (not under no_grad)
                self._want_grad_ratio = False
                terms["ibb_grad_ratio"] = rib_logging.grad_ratio(loss, applied, feat)
            loss = loss + applied
            terms.update(ibb=ibb.detach(), ibb_term1=t1, ibb_term2=t2, loss_ibb_weighted=l["eta"] * ibb.detach())
            if isinstance(self.ibb.last_terms.get("beta"), torch.Tensor):  # β fitted to the training batches
                terms["ibb_beta_train"] = self.ibb.last_terms["beta"]
        terms["loss"] = loss.detach()
        return loss, terms

    def train_step(self, batch, epoch: int, with_keep_fraction: bool = True):
        """One optimiser step; returns the detached loss terms (tensors) and, if asked, the fraction of
        kept DCS channels (a host sync on GPU)."""
        images, pids, camids, viewids = data_mod.unpack(batch, self.device)
        self._last_batch = (images, camids, viewids)
        self.net.train()
        track = with_keep_fraction and self.cfg["output"]["keep_fraction_log"]
        if track:
            rib_logging.set_tracking(self.model, True)
        with self._autocast():
            out = self.net(images, cam_label=camids if self.cfg["model"]["sie_camera"] else None,
                           view_label=viewids if self.cfg["model"]["sie_view"] else None)
            loss, terms = self.compute_loss(out, pids, epoch, images)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg["solver"]["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["solver"]["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if track:
            terms.update(rib_logging.block_keep_fractions(self.model, "keep_fraction"))
            rib_logging.set_tracking(self.model, False)
        return terms

    def _batches(self, loader, epoch: int, start_iter: int, prog):
        """``loader``'s batches; an unreadable image ends the run through :meth:`_stop_on_bad_image`."""
        it = start_iter
        batches = iter(loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except CorruptImageError as e:
                prog.close()
                self._stop_on_bad_image(e, epoch, it)
            yield batch
            it += 1

    def train_epoch(self, epoch: int, start_iter: int = 0) -> Optional[Dict]:
        """One epoch from iteration ``start_iter``; returns its record, or None when interrupted.
        A mid-epoch start continues exactly: the RNG states and the epoch's partial sums come from
        the checkpoint, and each sample's augmentation depends only on its position in the epoch."""
        cfg = self.cfg
        partial = getattr(self, "_resume_partial", None) if start_iter else None
        self._resume_partial = None
        m = cfg["model"]
        tau = tau_schedule.tau_at(epoch, cfg["solver"]["epochs"], m["tau"], m["tau_end"], m["tau_schedule"])
        tau_schedule.set_tau(self.model, tau)
        if start_iter == 0:
            ckpt_io.seed_everything(_epoch_seed(cfg["solver"]["seed"], epoch, self.rank))
            try:
                refresh_s = self._maybe_refresh_ibb(epoch)
            except CorruptImageError as e:  # the refresh reads every training image
                self._stop_on_bad_image(e, epoch, 0)
            refresh_record = rib_logging.refresh_record(self.ibb) if refresh_s is not None else {}
            self._feat_memory = []
        else:
            refresh_s = partial["refresh_s"] if partial else None
            refresh_record = (partial.get("refresh_record") or {}) if partial else {}
        indices = data_mod.epoch_indices(self.data, cfg, cfg["solver"]["seed"], epoch, self.rank, self.world,
                                           min_len=self.iters_per_epoch * self.local_batch)
        indices = indices[: self.iters_per_epoch * self.local_batch][start_iter * self.local_batch:]
        loader = self.data.train_loader(cfg, indices, self.local_batch,
                                        seed=_epoch_seed(cfg["solver"]["seed"], epoch, self.rank, salt=1),
                                        offset=start_iter * self.local_batch)
        prog = Progress(self.iters_per_epoch, epoch, cfg["solver"]["epochs"], self.log, cfg["output"]["progress"],
                        cfg["output"]["log_period"], enabled=self.main, clock=self.clock)
        if prog.bar is not None and start_iter:
            prog.bar.update(start_iter)
        sums: Dict[str, torch.Tensor] = {}  # on the device: no host sync per iteration
        counts: Dict[str, int] = {}
        t0 = time.time()
        n_images = 0
        if partial:
            sums = {k: v.to(self.device) for k, v in partial["sums"].items()}
            counts = {k: int(v) for k, v in partial["counts"].items()}
            n_images, t0 = int(partial["n_images"]), t0 - float(partial["time_s"])
        self._partial = {"sums": sums, "counts": counts, "n_images": n_images, "t0": t0, "refresh_s": refresh_s,
                         "refresh_record": refresh_record}
        for it, batch in enumerate(self._batches(loader, epoch, start_iter, prog), start=start_iter):
            need = prog.wants(it)
            terms = self.train_step(batch, epoch, with_keep_fraction=need)
            for k, v in terms.items():
                if v is None:
                    continue
                v = torch.as_tensor(v, dtype=torch.float64, device=self.device).detach()
                sums[k] = sums[k] + v if k in sums else v
                counts[k] = counts.get(k, 0) + 1
            n_images += self.local_batch * self.world
            self._partial["n_images"] = n_images
            if self.sigint_at == (epoch, it):
                os.kill(os.getpid(), signal.SIGINT)
            show = None
            if need and self.main:
                show = {k: float(terms[k]) for k in ("loss", "loss_id", "loss_tri", "ibb") if terms.get(k) is not None}
                if not math.isfinite(show["loss"]):
                    raise FloatingPointError(f"loss is {show['loss']} at epoch {epoch + 1} iter {it + 1}: {show}")
                show["lr"] = self.scheduler.get_last_lr()[0]
                show["img/s"] = f"{n_images / max(time.time() - t0, 1e-9):.0f}"
            prog.update(it, show)
            # Under DDP the stop flag is agreed on (an all-reduce, a sync) only every log_period
            # iterations, the same ones on every rank.
            if it + 1 < self.iters_per_epoch and (need or self.world == 1) and self._stop_requested():
                prog.close()
                self.save(epoch, it + 1, "last.pth")
                return None
        prog.close()
        self._partial = None
        du.broadcast_buffers(self.model)
        dt = time.time() - t0
        record = {"epoch": epoch + 1, "lr": self.scheduler.get_last_lr()[0], "time_s": dt,
                  "images_per_s": n_images / max(dt, 1e-9), "ibb_on": self.ibb_active(epoch)}
        if refresh_s is not None:
            record["ibb_refresh_s"] = refresh_s
            record.update(refresh_record)
        if rib_logging.dcs_modules(self.model):
            record["tau"] = tau
            if cfg["output"]["keep_fraction_log"] and self._last_batch is not None:
                imgs, cams, views = self._last_batch
                record.update(rib_logging.eval_keep_fractions(
                    self.model, imgs, **model_mod.model_inputs(cfg["model"], cams, views)))
        local = torch.stack([sums[k] / counts[k] for k in sorted(sums)])
        if self.world > 1:  # the same keys on every rank: mean over ranks
            local = du.all_reduce_mean(local)
        local = local.cpu()
        if not math.isfinite(float(local[sorted(sums).index("loss")])):
            raise FloatingPointError(f"the mean loss of epoch {epoch + 1} is not finite")
        record.update({k: float(v) for k, v in zip(sorted(sums), local)})
        return record

    def fit(self) -> Optional[Dict]:
        cfg = self.cfg
        epochs = cfg["solver"]["epochs"]
        last = epochs if self.stop_after is None else min(epochs, self.stop_after)
        old_handler = self._install_sigint()
        self.clock = RunClock(last * self.iters_per_epoch, self.start_epoch * self.iters_per_epoch + self.start_iter)
        try:
            start_iter = self.start_iter
            for epoch in range(self.start_epoch, last):
                record = self.train_epoch(epoch, start_iter)
                start_iter = 0
                if record is None:
                    self.interrupted = True
                    if self.main:
                        plot_curves(self.metrics.data, self.run_dir)
                    self.log.warning("stopped by interrupt; resume with --resume %s",
                                     os.path.join(self.run_dir, "last.pth"))
                    return None
                self.log.info("epoch %d/%d " % (epoch + 1, epochs) + " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                    if k != "epoch"))
                self.metrics.add_epoch(record)
                period = cfg["eval"]["period"]
                evaluated = bool(period and (epoch + 1) % period == 0 and epoch + 1 < epochs)
                if evaluated:
                    self.evaluate(epoch + 1)
                stop = self._stop_requested()
                if (epoch + 1) % cfg["output"]["checkpoint_period"] == 0 or epoch + 1 == last or stop:
                    self.save(epoch + 1, 0, "last.pth")
                if self.main and (evaluated or stop or epoch + 1 == last):  # plots cost ~1 s: not every epoch
                    plot_curves(self.metrics.data, self.run_dir)
                    rib_logging.plot_rib(self.metrics.data, self.run_dir)
                if stop and epoch + 1 < epochs:
                    self.interrupted = True
                    self.log.warning("stopped by interrupt; resume with --resume %s",
                                     os.path.join(self.run_dir, "last.pth"))
                    return None
            self._write_digest()
            if last < epochs:
                self.log.info("stopped after epoch %d of %d (--stop-after); resume with --resume %s", last, epochs,
                              os.path.join(self.run_dir, "last.pth"))
                return None
            self.save_final(epochs)
            if self._stop_requested():  # Ctrl-C in the last iteration or while last.pth was written
                return self._stopped_before_final_eval("before the final evaluation")
            # From here a Ctrl-C stops the evaluation at once: training is complete and saved.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                return self.evaluate(epochs, final=True)
            except KeyboardInterrupt:
                return self._stopped_before_final_eval("during the final evaluation")
        finally:
            signal.signal(signal.SIGINT, old_handler)

    def _write_digest(self) -> None:
        with open(os.path.join(self.run_dir, f"params_rank{self.rank}.sha256"), "w") as f:
            f.write(param_digest(self.model) + "\n")
            if self.ibb is not None:
                f.write(param_digest(self.ibb) + "\n")

    def close(self) -> None:
        if self.folder is not None:
            self.folder.release()
        self.metrics.close()
        du.cleanup()
