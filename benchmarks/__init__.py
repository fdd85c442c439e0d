"""Benchmarks (docs/performance.md): run ``python -m benchmarks.run --device cpu --quick`` for the report."""
