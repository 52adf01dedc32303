"""Benchmarks: each measured against a baseline in the same run, printed as ratios. `python -m bench.run`."""
