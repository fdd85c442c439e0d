"""``python -m ribkernels <command> ...`` — see :mod:`ribkernels.cli`."""
import os
import sys

# Sleeping OpenMP threads on a busy CPU (as train.py does).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
