"""The paper's experiments on the built-in synthetic dataset, as scripts (``python -m experiments.NAME``).
Each writes JSON and PNG under ``experiments/results/``; see experiments/README.md."""
