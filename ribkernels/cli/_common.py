"""Arguments and checks shared by the commands (all of them run before any model is loaded)."""
import argparse
import os

from . import CommandError


def _int_at_least(lowest: int, expected: str):
    """An argparse type: an integer >= ``lowest``; the error says ``expected``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a train.py checkpoint (final.pth, or last.pth); the model is rebuilt from the "
                             "config stored in it")


def add_runtime_arguments(parser: argparse.ArgumentParser, batch_size: int = 64) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help="images per forward pass")
    parser.add_argument("--num-workers", type=non_negative_int, default=0,
                        help="image-decoding worker processes (0: in the main process)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_camera_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camera-ids", choices=("none", "names"), default="none",
                        help="camera ids for a model trained with camera embeddings (SIE): 'none' uses the mean "
                             "of the learned camera embeddings for every image; 'names' reads them from "
                             "Market-style file names (<pid>_c<camera>..., cameras counted from 1)")


def check_checkpoint(path: str) -> None:
    if not os.path.exists(path):
        raise CommandError(f"CHECKPOINT {path}: no such file")
    if not os.path.isfile(path):
        raise CommandError(f"CHECKPOINT {path}: not a file (expected final.pth or last.pth of a run)")


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device) if device != "auto" else None
    except RuntimeError as exc:
        raise CommandError(f"--device {device}: {exc}") from None
    if dev is not None and dev.type not in ("cpu", "cuda"):
        raise CommandError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if dev is not None and dev.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")


def check_output_file(path: str, flag: str, suffixes, overwrite: bool = False) -> None:
    """``path`` ends with one of ``suffixes``, its folder exists and can be written to, and it does not
    exist yet (unless ``overwrite``): checked before any work, so a long run never ends unable to write."""
    if not path.lower().endswith(tuple(suffixes)):
        raise CommandError(f"{flag} {path}: expected a file name ending in {' or '.join(suffixes)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"{flag} {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise CommandError(f"{flag} {path}: is a folder, expected a file name")
    if os.path.lexists(path) and not overwrite:
        raise CommandError(f"{flag} {path}: exists; choose a new file name or pass --overwrite to replace it")
    check_writable_folder(folder, flag, path)


def check_writable_folder(folder: str, flag: str, given: str) -> None:
    """Create and remove a temp file in ``folder`` (``os.access`` is not enough: root, read-only mounts)."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".ribkernels-write-test-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise CommandError(f"{flag} {given}: cannot write in {folder} ({exc.strerror or exc})") from None


def camera_ids_from_names(paths, what: str):
    """0-based camera ids from Market-style names; CommandError naming the first name that does not parse."""
    from ..inference import ids_from_names, market_ids

    _, cams = ids_from_names(paths)
    if cams is None:
        bad = next(p for p in paths if market_ids(p) is None)
        raise CommandError(f"--camera-ids names: {what} file {bad!r} is not named <pid>_c<camera>... "
                           "(Market-1501 style); use --camera-ids none")
    return cams
