"""``python -m ribkernels convert-checkpoint OLD NEW --trust``: rewrite a checkpoint of the previous
format (RNG states pickled as NumPy objects) in the weights-only format that every loader accepts.

OLD's pickle is read first without running it: a file that imports anything beyond a weights-only
load's types and NumPy's array/scalar reconstructors (what old ribkernels checkpoints hold) is refused
as containing code. It is then loaded weights-only with those NumPy types allowed, so converting runs
no code from the file; ``--trust`` still confirms that you know where OLD came from.
"""
import argparse
import os
import sys

NAME = "convert-checkpoint"
HELP = "convert a checkpoint written by an older ribkernels to the weights-only format (--trust)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD", help="checkpoint of the previous format (.pth)")
    parser.add_argument("new", metavar="NEW", help="where to write the converted checkpoint (must not exist)")
    parser.add_argument("--trust", action="store_true",
                        help="confirm that OLD comes from a source you trust (it holds pickled NumPy arrays; a "
                             "file that imports anything else is refused as code)")


def run(args: argparse.Namespace) -> int:
    """Convert ``args.old`` to ``args.new``; 0 on success, 2 with a message naming the file otherwise."""
    from ..engine import checkpoint as ckpt_io

    if not args.trust:
        print(f"{NAME}: refusing to read {args.old} without --trust: converting unpickles the NumPy arrays it "
              "holds. Add --trust only if you know where the file came from (a file that holds code is refused "
              "even then).", file=sys.stderr)
        return 2
    if os.path.exists(args.new):
        print(f"{NAME}: {args.new} exists; give a new path (nothing was overwritten)", file=sys.stderr)
        return 2
    if os.path.abspath(args.old) == os.path.abspath(args.new):
        print(f"{NAME}: OLD and NEW are the same file {args.old}", file=sys.stderr)
        return 2
    try:
        state = ckpt_io.convert_legacy(args.old, args.new)
    except ckpt_io.CheckpointError as e:
        print(f"{NAME}: {e}", file=sys.stderr)
        return 2
    print(f"{NAME}: wrote {args.new} (format {state['format']} v{state['version']}, epoch {state.get('epoch')}, "
          f"iter {state.get('iter')}); it loads with weights_only=True")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m ribkernels {NAME}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
