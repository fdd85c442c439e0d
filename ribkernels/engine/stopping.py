"""How a training run stops early and says so: Ctrl-C (SIGINT: a checkpoint after the current
iteration, a second one aborts), an image that became unreadable mid-training, a stop before the final
evaluation."""
import os
import signal
from typing import Optional

import torch

from ..reid.dataset_types import CorruptImageError
from . import distributed as du


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _image_path(message: str) -> Optional[str]:
    """The path in a ``cannot read image <path>: ...`` message (a worker's error keeps only its text)."""
    import re

    m = re.search(r"cannot read image (.+?)(?:: |\n|$)", message)
    return m.group(1) if m and os.path.exists(m.group(1)) else None


class StopHandling:
    """Mixin of :class:`~ribkernels.engine.trainer.Trainer`: interrupts and unreadable images."""

    def _install_sigint(self):
        def handler(signum, frame):
            if self._interrupted:  # second Ctrl-C: give up at once
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self._interrupted = True
            self.log.warning("interrupt: saving a checkpoint after this iteration (Ctrl-C again to abort)")
        return signal.signal(signal.SIGINT, handler)

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self._interrupted else 0.0])
        if self.world > 1:
            flag = du.all_reduce_mean(flag.to(self.device)).cpu()
        return bool(flag.item() > 0)

    def _stop_on_bad_image(self, exc: BaseException, epoch: int, it: int):
        """An image that cannot be read (changed on disk after the dataset's image check) found while
        training: its verdict goes to the image-check cache (so ``--skip-bad-images`` leaves it out on
        resume), ``last.pth`` gets the state before iteration ``it`` of ``epoch`` (the RNG states are
        those after the last step: a failed fetch restores them), and the error names the file."""
        from ..reid.image_check import record_bad_image

        path = _image_path(str(exc))
        if path:
            record_bad_image(path, _first_line(str(exc)))
        last = os.path.join(self.run_dir, "last.pth")
        saved = self.world == 1  # under DDP the other ranks would wait in the checkpoint's gather
        if saved:
            self.save(epoch, it, "last.pth")
        head = f"cannot read image {path}" if path else _first_line(str(exc))
        raise CorruptImageError(
            f"{head} (found in training at epoch {epoch + 1}, iteration {it + 1}; it changed after the dataset's "
            "image check). " + (f"{last} holds the state before that iteration: replace the file and continue with "
                                f"--resume {last}, or leave it out with --resume {last} --skip-bad-images"
                                if saved else "Replace the file, or pass --skip-bad-images, and resume from the last "
                                              "checkpoint")) from None

    def _stopped_before_final_eval(self, when: str) -> None:
        """A Ctrl-C after the last training step: everything is saved, the final evaluation is left to
        ``--resume`` (a finished run's resume only evaluates); the exit status says it was interrupted."""
        self.interrupted = True
        self.log.warning("stopped by interrupt %s; training is complete (last.pth, final.pth saved): "
                         "--resume %s runs the final evaluation", when, os.path.join(self.run_dir, "last.pth"))
        return None
