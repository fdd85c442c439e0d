"""``python -m ribkernels <command>`` (console script ``ribkernels``): what comes after training.

Each command is a module ``ribkernels/cli/<module>.py`` exposing ``NAME`` (the command, e.g.
``"convert-checkpoint"``), ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``
(the exit status). Modules are imported by name, only when needed; a module absent from this
checkout is left out of the list without breaking the others. Keep their top-level imports light
(argparse, os): torch and friends are imported inside ``run``.
"""
import argparse
import importlib
import os
import pickle
import sys
from typing import Dict, List, Optional

COMMANDS = ["extract", "search", "export", "evaluate", "convert_checkpoint"]


class CommandError(Exception):
    """A bad argument or input file: printed as ``ribkernels <command>: error: <message>``, exit 2."""


def _module(name: str):
    """The command module ``name``, or None when this checkout does not have it."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            return None
        raise


def available(argv: Optional[List[str]] = None) -> Dict[str, object]:
    """``{NAME: module}`` of the commands present; with ``argv`` naming a command, only that one is
    imported."""
    wanted = COMMANDS
    if argv and argv[0].replace("-", "_") in COMMANDS:
        wanted = [argv[0].replace("-", "_")]
    out = {}
    for name in wanted:
        mod = _module(name)
        if mod is not None:
            out[mod.NAME] = mod
    if not out and wanted != COMMANDS:  # a command this checkout lacks: list the ones it has
        return available()
    return out


def build_parser(commands: Dict[str, object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ribkernels", description="Re-ID after training: feature extraction, search with rank-list "
                                       "pictures, model export and evaluation of train.py checkpoints.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, mod in commands.items():
        p = sub.add_parser(name, help=mod.HELP, description=(mod.__doc__ or mod.HELP).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_command=mod)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available(argv)
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    from ..reid.datasets import CorruptImageError  # an unreadable image: its path, no traceback

    try:
        return int(args._command.run(args) or 0)
    except (CommandError, FileNotFoundError, NotADirectoryError, ValueError, pickle.UnpicklingError,
            CorruptImageError) as exc:
        if os.environ.get("RIBKERNELS_DEBUG") == "1":
            raise
        print(f"ribkernels {args.command}: error: {exc}", file=sys.stderr)
        return 2
