"""Benchmarks (SPEC §6): run ``python -m benchmarks.run --device cpu --quick`` for the report."""
