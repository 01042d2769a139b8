"""Benchmarks: scripts that measure mapper against baselines and write benchmarks/RESULTS.md."""
