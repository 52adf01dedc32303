"""The benchmarks, one module each; `NAMES` is the registry and the order of a full run.

A new benchmark is a module here defining `BENCHMARK = bench.registry.Benchmark(...)` plus its name in
`NAMES`. Modules are imported only when their benchmark runs, so that a missing bench-only dependency
(LiteLLM) fails that benchmark alone.
"""

from __future__ import annotations

import importlib

from bench.registry import Benchmark

NAMES: tuple[str, ...] = (
    "enqueue",
    "end_to_end",
    "in_flight",
    "slow_calls",
    "ml_batching",
    "ml_images",
    "dag",
    "ws_fanout",
    "sync_overhead",
    "sync_throughput",
    "task_cost",
    "batch",
    "pii",
)


def get(name: str) -> Benchmark:
    """The benchmark called `name` (its module imported on first use)."""
    if name not in NAMES:
        raise KeyError(name)
    module = importlib.import_module(f"{__name__}.{name}")
    benchmark: Benchmark = module.BENCHMARK
    return benchmark
