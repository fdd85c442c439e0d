"""``python -m ribkernels <command>`` (console script ``ribkernels``): what comes after training.

Each command is a module ``ribkernels/cli/<module>.py`` exposing ``NAME`` (the command, e.g.
``"convert-checkpoint"``), ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``
(the exit status). Modules are imported by name, only when needed: a command line that names a
command imports that module only. Keep their top-level imports light (argparse, os): torch and
friends are imported inside ``run``.
"""
import argparse
import importlib
import pickle
import sys
from typing import Dict, List, Optional

from .. import _env

COMMANDS = ["train", "extract", "search", "export", "evaluate", "convert_checkpoint"]


class CommandError(Exception):
    """A bad argument or input file: printed as ``ribkernels <command>: error: <message>``, exit 2."""


def available(argv: Optional[List[str]] = None) -> Dict[str, object]:
    """``{NAME: module}`` of the commands; with ``argv`` naming a command, only that one is imported
    (anything else, e.g. ``--help`` or a typo, imports them all so that argparse can list them)."""
    wanted = COMMANDS
    if argv and argv[0].replace("-", "_") in COMMANDS:
        wanted = [argv[0].replace("-", "_")]
    modules = [importlib.import_module(f"{__name__}.{name}") for name in wanted]
    return {mod.NAME: mod for mod in modules}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default in ``--help`` (unless its help
    already says it, or there is none to show: None, a required option, a switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default == argparse.SUPPRESS or action.required
                or action.nargs == 0 or not action.option_strings and action.nargs not in ("?", "*")):
            return text
        return f"{text} (default: %(default)s)"


def build_parser(commands: Dict[str, object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ribkernels", description="Re-ID after training: feature extraction, search with rank-list "
                                       "pictures, model export and evaluation of train.py checkpoints.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, mod in commands.items():
        p = sub.add_parser(name, help=mod.HELP, description=(mod.__doc__ or mod.HELP).strip(),
                           formatter_class=HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_command=mod)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":  # the trainer parses its own flags (train.py's)
        from .train import run_argv

        return run_argv(argv[1:])
    commands = available(argv)
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    from ..reid.dataset_types import CorruptImageError  # an unreadable image: its path, no traceback

    try:
        return int(args._command.run(args) or 0)
    except (CommandError, FileNotFoundError, NotADirectoryError, ValueError, pickle.UnpicklingError,
            CorruptImageError) as exc:
        if _env.is_set("RIBKERNELS_DEBUG"):
            raise
        print(f"ribkernels {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the shell's status for SIGINT, no traceback
        print(f"ribkernels {args.command}: interrupted", file=sys.stderr)
        return 130
