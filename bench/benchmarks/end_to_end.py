"""end_to_end: chat tasks/s through the fake provider (0 ms), N tasks queued first, then one provider worker
(threads, 64) drains them. Two baselines on the same broker with the same pool and concurrency:

- plain Celery no-op tasks (target ours >= 0.6x): what the queue itself costs;
- a hand-rolled Celery task that calls the fake with the sync openai SDK and INSERTs the answer
  (`bench.handrolled`, target ours >= 1.5x): what a team writes without Switchyard.

Each side's rate is N over its own window: first start to last finish, from its rows (or, for the no-op,
the times its tasks recorded).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psycopg

from bench import handrolled
from bench.harness import BenchError, Env, Profiler, cpu_seconds, log, sql_one, wait_until
from bench.registry import Benchmark, Options, Result, Row, standard_row
from bench.stack import POOL, Switchyard, start_celery_worker, wait_worker

REDIS_DB = 13
HANDROLLED_TARGET = 1.5


@dataclass(frozen=True)
class Sizes:
    n: int
    concurrency: int


FULL = Sizes(n=2000, concurrency=64)
QUICK = Sizes(n=400, concurrency=64)


def _fake_calls(fake_url: str) -> int | None:
    try:
        return int(httpx.get(f"{fake_url}/control/stats", timeout=5).json()["total"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def _ours(env: Env, ours: Switchyard, sz: Sizes, profile: bool) -> dict[str, Any]:
    created_s = ours.create_tasks(sz.n)
    log(f"  end_to_end: {sz.n} tasks queued in {created_s:.1f}s; provider worker: {sz.concurrency} {POOL}")
    worker = ours.start_worker(sz.concurrency)
    t_ready = wait_worker(worker)
    cpu0 = cpu_seconds(worker.pid)
    prof = Profiler(profile, worker.pid, "e2e-worker", 600)

    def done() -> bool:
        failed = ours.count("SELECT count(*) FROM tasks WHERE status='failed'")
        if failed:
            raise BenchError(f"{failed} tasks failed:\n{worker.log()[-3000:]}")
        return ours.count("SELECT count(*) FROM tasks WHERE status='succeeded'") >= sz.n

    try:
        wait_until(done, timeout=600, interval=0.05, what=f"{sz.n} succeeded tasks")
    finally:
        prof.stop()
    wall = time.monotonic() - t_ready
    cpu_ms = 1000 * (cpu_seconds(worker.pid) - cpu0) / sz.n
    worker.stop()
    window = ours.window_s()
    log(f"  end_to_end ours: {sz.n / window:.0f} tasks/s over {window:.1f}s, worker CPU {cpu_ms:.2f} ms/task")
    return {"window_s": window, "from_ready_s": wall, "cpu_ms": cpu_ms, "create_s": created_s}


def _handrolled(env: Env, fake_url: str, sz: Sizes) -> dict[str, Any]:
    env.redis.flushdb()
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(handrolled.TABLE_DDL)
    calls0 = _fake_calls(fake_url)
    handrolled.publish(env.redis_url, sz.n)
    if env.redis.llen(handrolled.QUEUE) != sz.n:
        raise BenchError(f"published {sz.n} hand-rolled messages, {env.redis.llen(handrolled.QUEUE)} in the queue")
    worker = start_celery_worker(
        env, "handrolled-worker", "bench.handrolled:app", handrolled.QUEUE, sz.concurrency,
        {"BENCH_REDIS_URL": env.redis_url, "BENCH_DATABASE_URL": env.database_url, "BENCH_FAKE_URL": fake_url},
    )  # fmt: skip
    t_ready = wait_worker(worker)
    cpu0 = cpu_seconds(worker.pid)
    count = "SELECT count(*) FROM handrolled_results"

    def done() -> bool:
        if not worker.alive():
            raise BenchError(f"the hand-rolled worker exited:\n{worker.log()[-3000:]}")
        if "Traceback" in worker.log():
            raise BenchError(f"a hand-rolled task failed:\n{worker.log()[-3000:]}")
        return int(sql_one(env.database_url, count)) >= sz.n

    wait_until(done, timeout=600, interval=0.05, what=f"{sz.n} hand-rolled rows")
    wall = time.monotonic() - t_ready
    cpu_ms = 1000 * (cpu_seconds(worker.pid) - cpu0) / sz.n
    worker.stop()
    span = "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM handrolled_results"
    window = float(sql_one(env.database_url, span))
    empty = int(sql_one(env.database_url, "SELECT count(*) FROM handrolled_results WHERE content IS NULL"))
    calls1 = _fake_calls(fake_url)
    log(f"  end_to_end hand-rolled: {sz.n / window:.0f} tasks/s over {window:.1f}s, worker CPU {cpu_ms:.2f} ms/task")
    return {
        "window_s": window,
        "from_ready_s": wall,
        "cpu_ms": cpu_ms,
        "rows_without_content": empty,
        "fake_calls": calls1 - calls0 if calls0 is not None and calls1 is not None else None,
    }


def _noop(env: Env, sz: Sizes) -> dict[str, Any]:
    from bench.baselines import BASELINE_QUEUE, DONE_KEY, NOOP_TASK, make_baseline_celery

    env.redis.flushdb()
    publisher = make_baseline_celery(env.redis_url)
    for i in range(sz.n):
        publisher.send_task(NOOP_TASK, args=[f"noop-{i}"], queue=BASELINE_QUEUE)
    publisher.close()
    if env.redis.llen(BASELINE_QUEUE) != sz.n:
        raise BenchError(f"published {sz.n} no-op messages, {env.redis.llen(BASELINE_QUEUE)} in the queue")
    # Celery's own command line, so that a green pool would patch the standard library before imports.
    worker = start_celery_worker(
        env, "baseline-worker", "bench.baselines:celery_app", BASELINE_QUEUE, sz.concurrency,
        {"BENCH_REDIS_URL": env.redis_url},
    )  # fmt: skip
    t_ready = wait_worker(worker)
    cpu0 = cpu_seconds(worker.pid)
    wait_until(lambda: env.redis.llen(DONE_KEY) >= sz.n, timeout=600, interval=0.05, what=f"{sz.n} no-op tasks")
    wall = time.monotonic() - t_ready
    cpu_ms = 1000 * (cpu_seconds(worker.pid) - cpu0) / sz.n
    times = [float(t) for t in env.redis.lrange(DONE_KEY, 0, -1)]
    worker.stop()
    return {"window_s": max(times) - min(times), "from_ready_s": wall, "cpu_ms": cpu_ms}


def run(opts: Options) -> Result:
    """Ours, then the hand-rolled task on the same fake, then the no-ops; one worker process at a time."""
    sz = opts.sizes("end_to_end", FULL, QUICK)
    env = Env("e2e", REDIS_DB, opts.tmp / "e2e")
    try:
        ours = Switchyard(env, fake_latency_ms=0)
        assert ours.api is not None
        assert ours.fake is not None
        sides: dict[str, dict[str, Any]] = {"ours": _ours(env, ours, sz, opts.profile)}
        ours.api.stop()
        sides["handrolled"] = _handrolled(env, ours.fake_url, sz)
        ours.fake.stop()
        sides["noop"] = _noop(env, sz)
        rate = {k: sz.n / v["window_s"] for k, v in sides.items()}
        from_ready = {k: sz.n / v["from_ready_s"] for k, v in sides.items()}
        return {
            "ours": rate["ours"],
            "baseline": rate["noop"],
            "unit": "tasks/s",
            "ratio": rate["ours"] / rate["noop"],
            "target": 0.6,
            "target_kind": ">=",
            "handrolled": {
                "ours": rate["ours"],
                "baseline": rate["handrolled"],
                "unit": "tasks/s",
                "ratio": rate["ours"] / rate["handrolled"],
                "target": HANDROLLED_TARGET,
                "target_kind": ">=",
                "ratio_from_ready": from_ready["ours"] / from_ready["handrolled"],
                "fake_calls": sides["handrolled"]["fake_calls"],
                "rows_without_content": sides["handrolled"]["rows_without_content"],
            },
            "sizes": asdict(sz),
            "pool": POOL,
            "window_s": {k: v["window_s"] for k, v in sides.items()},
            "from_ready": {k: {"seconds": v["from_ready_s"], "rate": from_ready[k]} for k, v in sides.items()},
            "ratio_from_ready": from_ready["ours"] / from_ready["noop"],
            "worker_cpu_ms_per_task": {k: v["cpu_ms"] for k, v in sides.items()},
            "create_s": sides["ours"]["create_s"],
        }
    finally:
        env.close()


def rows(name: str, res: Result) -> list[Row]:
    """The no-op ratio, then the hand-rolled one."""
    return [
        standard_row(f"{name} vs Celery no-op", res),
        standard_row(f"{name} vs hand-rolled SDK + INSERT", res["handrolled"]),
    ]


def details(res: Result) -> None:
    """Worker CPU per task on each side, and the rates timed from each worker's 'ready.'."""
    cpu, fr = res["worker_cpu_ms_per_task"], res["from_ready"]
    print(
        f"end_to_end: {res['sizes']['n']} tasks, {res['sizes']['concurrency']} {res['pool']}; worker CPU ms/task: "
        f"ours {cpu['ours']:.2f}, hand-rolled {cpu['handrolled']:.2f}, no-op {cpu['noop']:.2f}; timed from the "
        f"worker's 'ready.': ours {fr['ours']['rate']:.0f}/s, hand-rolled {fr['handrolled']['rate']:.0f}/s, "
        f"no-op {fr['noop']['rate']:.0f}/s"
    )
    h = res["handrolled"]
    print(f"            hand-rolled check: {h['fake_calls']} calls at the fake, {h['rows_without_content']} empty rows")


BENCHMARK = Benchmark(
    name="end_to_end",
    summary="chat tasks/s through the fake at 0 ms vs Celery no-ops (>= 0.6x) and a hand-rolled task (>= 1.5x)",
    run=run,
    rows=rows,
    details=details,
)
