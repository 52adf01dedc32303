"""Where a task's CPU goes in the worker, without threads: the executor run in-process, one task at a time.

    .venv/bin/python -m bench.profile_worker [--n 500] [--cprofile]

Queues N chat tasks through the real API (fake provider at 0 ms), then hands each to this process's worker
runtime (`Runtime.submit`, as a Celery message or the hand-off would) and waits for it to end before the next, and
reports CPU ms per task for the claim (`Executor.start`), the settling (`Executor.settle`: the finish) and the
rest (the provider call on the runtime's loop, the thread hand-offs). Comparing with the worker CPU per task of
`bench.run --only end_to_end` (64 threads) shows what concurrency and Celery add on top.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import Env
from bench.stack import Switchyard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--cprofile", action="store_true", help="also print the top functions by cumulative time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="switchyard-prof-") as tmp:
        env = Env("profile", 15, Path(tmp))
        try:
            stack = Switchyard(env, fake_latency_ms=0)
            stack.create_tasks(args.n)
            with psycopg.connect(env.database_url) as conn:
                ids = [row[0] for row in conn.execute("SELECT id FROM tasks ORDER BY id").fetchall()]
            # This process becomes the worker: same settings, same resources as `switchyard worker` makes.
            os.environ.update({k: v for k, v in env.env.items() if k.startswith("SWITCHYARD_")})
            from switchyard.tasks.execution import Executor
            from switchyard.workers.resources import init_resources

            spent: dict[str, float] = defaultdict(float)

            def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
                def wrapper(*a: Any, **kw: Any) -> Any:
                    t0 = time.process_time()
                    try:
                        return fn(*a, **kw)
                    finally:
                        spent[name] += time.process_time() - t0

                return wrapper

            for phase in ("start", "settle"):
                setattr(Executor, phase, timed(phase, getattr(Executor, phase)))
            resources = init_resources()
            runtime = resources.runtime

            def run_one(task_id: str) -> None:
                runtime.submit([task_id])
                while runtime.in_flight:
                    time.sleep(0.0002)

            run_one(ids.pop())  # first use: SDK client, pooled connections
            spent.clear()
            profiler = cProfile.Profile() if args.cprofile else None
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            for task_id in ids:
                run_one(task_id)
            if profiler:
                profiler.disable()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            n = len(ids)
            print(f"{n} tasks, one at a time: {1000 * wall / n:.2f} ms wall, {1000 * cpu / n:.2f} ms CPU per task")
            for phase, seconds in spent.items():
                print(f"  {phase:<7} {1000 * seconds / n:6.2f} ms CPU per task")
            print(f"  other   {1000 * (cpu - sum(spent.values())) / n:6.2f} ms CPU per task")
            if profiler:
                pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(40)
            resources.close()
        finally:
            env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
