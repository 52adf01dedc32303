"""What Celery task events (SWITCHYARD_TASK_EVENTS, what Flower shows) cost a worker, on and off in the same run.

    .venv/bin/python -m bench.task_events_cost [--n 2000] [--rounds 2] [--ids-per-message 1]

Each round queues N chat tasks through the real API and replaces their messages with messages of K ids each
(events are per message; the API puts the ids that arrive together in one, a number that depends on load). It
then starts a provider worker (threads, 64) with task events on or off (rounds alternate) and reads its CPU from
/proc, and Redis's (INFO cpu), until all N have succeeded. No Flower runs: the events are published and nobody
reads them, as in a deployment that does not watch. (A publisher's task-sent event is paid where it publishes:
the API's publishing thread, a worker's sweeps and batch releases.)

Postgres and Redis: SWITCHYARD_BENCH_PG (admin URL) and SWITCHYARD_BENCH_REDIS (server URL, no DB number).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import psycopg

from bench.harness import Env, cpu_seconds, log, run_raw, sql_one, wait_until
from bench.stack import PROVIDER_QUEUE, Switchyard, wait_worker
from tests.processes import cli

REDIS_DB = 7


def _redis_cpu(env: Env) -> float:
    info = env.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _queue_messages(env: Env, stack: Switchyard, n: int, done_before: int, per_message: int) -> int:
    """N queued tasks, `per_message` ids a message; returns the number of messages."""
    run_raw(f"{stack.url}/v1/tasks", auth=stack.key, connections=8, total=n)
    total = done_before + n
    wait_until(
        lambda: int(sql_one(env.database_url, "SELECT count(*) FROM tasks")) >= total, timeout=60, what="the tasks"
    )
    env.redis.delete(PROVIDER_QUEUE)
    with psycopg.connect(env.database_url) as conn:
        rows = conn.execute("SELECT id, type, model FROM tasks WHERE status = 'queued'").fetchall()
    # Imported here: the module makes its Celery app from this process's settings, set by main().
    from switchyard.workers.celery_app import app
    from switchyard.workers.dispatch import CeleryDispatcher

    dispatcher = CeleryDispatcher(app)
    refs = [(task_id, task_type, model, None, None) for task_id, task_type, model in rows]
    for start in range(0, len(refs), per_message):
        dispatcher.publish_tasks(PROVIDER_QUEUE, refs[start : start + per_message])
    return int(env.redis.llen(PROVIDER_QUEUE))


def _round(env: Env, stack: Switchyard, events: bool, n: int, done_before: int, per_message: int) -> dict[str, float]:
    messages = _queue_messages(env, stack, n, done_before, per_message)
    setting = {"SWITCHYARD_TASK_EVENTS": "true" if events else "false"}
    argv = ["worker", "--queues", PROVIDER_QUEUE, "--pool", "threads", "--concurrency", "64", "--loglevel", "INFO"]
    worker = env.start("worker-events" if events else "worker-quiet", cli(*argv), setting)
    wait_worker(worker)
    worker0, redis0 = cpu_seconds(worker.pid), _redis_cpu(env)
    total = done_before + n

    def done() -> bool:
        return int(sql_one(env.database_url, "SELECT count(*) FROM tasks WHERE status = 'succeeded'")) >= total

    wait_until(done, timeout=600, interval=0.05, what=f"{total} succeeded tasks")
    worker_s, redis_s = cpu_seconds(worker.pid) - worker0, _redis_cpu(env) - redis0
    worker.stop()
    row = {"worker_us": 1e6 * worker_s / messages, "redis_us": 1e6 * redis_s / messages}
    log(
        f"  events {'on ' if events else 'off'}: {messages} messages of {per_message} task(s); per message: worker "
        f"{row['worker_us']:.0f} us CPU, Redis {row['redis_us']:.0f} us"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.task_events_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each setting, alternating")
    parser.add_argument("--ids-per-message", type=int, default=1, help="task ids each message carries (1-100)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="switchyard-events-") as tmp:
        env = Env("events", REDIS_DB, Path(tmp))
        try:
            stack = Switchyard(env, fake_latency_ms=0)
            # This process publishes the messages: same broker, and no events of its own.
            os.environ.update({k: v for k, v in env.env.items() if k.startswith("SWITCHYARD_")})
            os.environ["SWITCHYARD_TASK_EVENTS"] = "false"
            rows: dict[bool, list[dict[str, float]]] = {True: [], False: []}
            for i in range(2 * args.rounds):
                events = i % 2 == 0
                rows[events].append(_round(env, stack, events, args.n, i * args.n, args.ids_per_message))
            print(
                f"task events, {args.rounds} rounds of {args.n} tasks each, {args.ids_per_message} a message "
                "(median per message):"
            )
            for kind in ("worker_us", "redis_us"):
                on = statistics.median(r[kind] for r in rows[True])
                off = statistics.median(r[kind] for r in rows[False])
                name = kind.removesuffix("_us")
                print(f"  {name:<7} on {on:6.0f} us  off {off:6.0f} us  events cost {on - off:+5.0f} us")
        finally:
            env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
