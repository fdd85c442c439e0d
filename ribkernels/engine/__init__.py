"""The training engine behind train.py: config loading, checkpoint I/O, distributed helpers,
logging/metrics/plots and the train/eval loops (docs/training.md)."""
import argparse
import difflib
import sys

import yaml

from ..reid.dataset_types import CorruptImageError
from .checkpoint import CheckpointError
from .config import DEFAULTS, build_parser, explicit_keys, resolve
from .resume import parse_allow
from .run_folder import RunFolderError
from .scheduler import WarmupCosineLR
from .trainer import Trainer, param_digest
from .validate import ConfigError

__all__ = ["DEFAULTS", "build_parser", "resolve", "WarmupCosineLR", "Trainer", "param_digest", "main"]

# Errors about what the user gave (flags, config, files): one clear line, exit status 2, no traceback.
USER_ERRORS = (ConfigError, CheckpointError, RunFolderError, FileNotFoundError, yaml.YAMLError)
# Before training starts, a ValueError comes from what the user gave too (a checkpoint that is not a
# model file, a dataset that does not fit), and so do the unreadable images the dataset build lists;
# during training these would be bugs (or files changed under a running job): they keep their traceback.
SETUP_ERRORS = USER_ERRORS + (ValueError, CorruptImageError)
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _parser(argv=None, prog=None) -> argparse.ArgumentParser:
    p = build_parser(argv)
    if prog:
        p.prog = prog
    p.add_argument("--allow-changes", default="", metavar="KEY,...",
                   help="with --resume: config keys (e.g. base_lr,eta) that may differ from the checkpoint's; "
                        "others that differ are refused")
    p.add_argument("--sigint-at", default=None, help=argparse.SUPPRESS)  # tests: "EPOCH,ITER" (0-based)
    return p


def _check_unknown(parser: argparse.ArgumentParser, unknown) -> None:
    flags = [s for a in parser._actions for s in a.option_strings]
    msgs = []
    for item in unknown:
        name = item.split("=", 1)[0]
        match = difflib.get_close_matches(name, flags, n=1, cutoff=0.6) if name.startswith("--") else []
        msgs.append(f"{item}" + (f" (did you mean {match[0]}?)" if match else ""))
    parser.error("unrecognized arguments: " + " ".join(msgs))


def main(argv=None, prog=None) -> int:
    """Entry point of train.py and ``ribkernels train``: parse flags, train (or evaluate), return the
    exit status (0 done, 2 bad flags/config/files — nothing was trained, or an image that became
    unreadable during training — last.pth holds the state before it, 130 interrupted by Ctrl-C —
    resume with --resume). ``prog``: the command's name in messages (default train.py)."""
    parser = _parser(argv, prog)
    name = prog or "train.py"
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _check_unknown(parser, unknown)
    try:
        cfg = resolve(args)
        if args.eval_only and args.resume:
            raise ConfigError("--eval-only takes --checkpoint, not --resume")
        if args.allow_changes and not args.resume:
            raise ConfigError("--allow-changes applies only with --resume")
        model_file = None
        if args.eval_only and args.checkpoint:  # evaluate the model the checkpoint's own config describes
            from .model_file import eval_config, read_model_file

            model_file = read_model_file(args.checkpoint)
            cfg = eval_config(model_file.config, cfg, explicit_keys(args))
        sigint_at = tuple(int(x) for x in args.sigint_at.split(",")) if args.sigint_at else None
        trainer = Trainer(cfg, resume=args.resume, stop_after=args.stop_after, eval_only=args.eval_only,
                          checkpoint=args.checkpoint if args.eval_only else None,
                          allow_changes=parse_allow(args.allow_changes, DEFAULTS), sigint_at=sigint_at)
    except SETUP_ERRORS as e:
        print(f"{name}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save (a new folder is removed)
        print(f"{name}: interrupted before training started", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    try:
        if args.eval_only:
            trainer.evaluate_checkpoint(args.checkpoint, model_file)
        else:
            trainer.fit()
    except USER_ERRORS + (CorruptImageError,) as e:  # an image that broke mid-run: checkpoint saved, named
        print(f"{name}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C in training, or one in --eval-only: stop, no traceback
        print(f"{name}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        trainer.close()
    return EXIT_INTERRUPTED if trainer.interrupted else 0
