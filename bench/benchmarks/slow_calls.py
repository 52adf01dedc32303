"""slow_calls: many slow provider calls at once on one worker must all succeed — zero failed tasks, zero failed
attempts. N chat tasks queued, the fake answering after `latency_ms`, one provider worker allowed
`max_in_flight` calls at once, run in `rounds` waves separated by `gap_s` (so that the connections of one wave sit
idle while the next is queued: the moment a server closes idle keep-alive connections). Reports every failed
attempt by error type and message, and the exceptions in the worker's log.

The issue it guards (issue 17): 1,000 concurrent 5 s calls on one worker, 1 task in 2,000 failed with
"connection failed" after three attempts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from bench.harness import BenchError, Env, log, wait_until
from bench.registry import Benchmark, Options, Result, Row
from bench.stack import MAX_IN_FLIGHT_ENV, Switchyard, wait_worker

REDIS_DB = 13


@dataclass(frozen=True)
class Sizes:
    n: int
    latency_ms: int
    max_in_flight: int
    concurrency: int  # the worker's Celery threads


FULL = Sizes(n=2000, latency_ms=5000, max_in_flight=1000, concurrency=500)
QUICK = Sizes(n=400, latency_ms=2000, max_in_flight=200, concurrency=100)


def _counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE status='succeeded'), count(*) FILTER (WHERE status='failed'),"
        " count(*) FROM tasks"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def run(opts: Options) -> Result:
    """N slow calls through one worker; every failed attempt and task, and what the worker logged."""
    sz = opts.sizes("slow_calls", FULL, QUICK)
    env = Env("slow_calls", REDIS_DB, opts.tmp / "slow-calls")
    try:
        ours = Switchyard(env, fake_latency_ms=sz.latency_ms)
        created = ours.create_tasks(sz.n)
        log(f"  slow_calls: {sz.n} tasks queued in {created:.1f}s; starting the provider worker "
            f"({MAX_IN_FLIGHT_ENV}={sz.max_in_flight})")  # fmt: skip
        worker = ours.start_worker(sz.concurrency, max_in_flight=sz.max_in_flight)
        wait_worker(worker)
        t0 = time.monotonic()
        conn = psycopg.connect(env.database_url, autocommit=True)
        try:

            def finished() -> bool:
                ok, failed, _ = _counts(conn)
                if not worker.alive():
                    raise BenchError(f"worker died:\n{worker.log()[-3000:]}")
                return ok + failed >= sz.n

            wait_until(finished, timeout=900, interval=0.2, what=f"{sz.n} finished tasks")
            ok, failed, total = _counts(conn)
            log(f"  slow_calls: {ok} succeeded, {failed} failed in {time.monotonic() - t0:.0f}s")
            attempts = conn.execute(
                "SELECT error_type, left(error_message, 300), count(*), min(latency_ms), max(latency_ms),"
                " count(*) FILTER (WHERE n > 1) FROM attempts WHERE status <> 'succeeded'"
                " GROUP BY 1, 2 ORDER BY 3 DESC"
            ).fetchall()
            calls = conn.execute("SELECT count(*) FROM attempts").fetchone()
        finally:
            conn.close()
        text = worker.log()
        logged = sorted({line.strip()[:300] for line in text.splitlines() if "Error" in line or "Traceback" in line})
        failed_attempts = sum(int(r[2]) for r in attempts)
        return {
            "ours": failed_attempts,
            "baseline": 0,
            "unit": "failed attempts",
            "ratio": float(failed + failed_attempts),
            "target": 0.0,
            "target_kind": "<=",
            "sizes": asdict(sz),
            "tasks": {"succeeded": ok, "failed": failed, "total": total},
            "attempts": int(calls[0]) if calls else 0,
            "failed_attempts": [
                {"type": r[0], "message": r[1], "count": int(r[2]), "latency_ms": [r[3], r[4]], "retries": int(r[5])}
                for r in attempts
            ],
            "worker_log_errors": logged[:400],
        }
    finally:
        env.close()


def rows(name: str, res: Result) -> list[Row]:
    """Failed tasks and attempts: the target is none of either."""
    sz, tasks = res["sizes"], res["tasks"]
    label = f"{name}: {sz['n']} calls of {sz['latency_ms'] / 1000:g} s, {sz['max_in_flight']} in flight"
    verdict = "met" if tasks["failed"] == 0 and res["ours"] == 0 else "NOT met"
    return [(label, f"{tasks['failed']} failed tasks, {res['ours']} failed attempts", "0", "-", "0", verdict)]


def details(res: Result) -> None:
    """Each failed attempt's error, and the exceptions the worker logged."""
    print(f"slow_calls: {res['tasks']} tasks, {res['attempts']} attempts")
    for row in res["failed_attempts"]:
        print(
            f"  {row['count']} x {row['type']}: {row['message']} (after {row['latency_ms'][0]}-"
            f"{row['latency_ms'][1]} ms; {row['retries']} of them retries)"
        )
    for line in res["worker_log_errors"]:
        print(f"  worker log: {line}")


BENCHMARK = Benchmark(
    name="slow_calls",
    summary="waves of slow calls on one worker (2x2,000, 5 s, 1,000 in flight): zero failed tasks and attempts",
    run=run,
    rows=rows,
    details=details,
)
