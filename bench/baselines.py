"""The baselines our numbers are divided by, run as real processes like ours.

- `api`: a bare FastAPI endpoint, `POST /v1/tasks`, that does one INSERT (psycopg AsyncConnectionPool) and one
  Redis LPUSH (redis.asyncio), served by uvicorn exactly as `switchyard api` serves ours (one process,
  log_level=warning, no access log, uvicorn's default loop and HTTP implementation).
- `worker`: a plain Celery app on the same Redis broker, with the same Celery settings as ours (late acks,
  reject on worker lost, no results, prefetch multiplier 1, JSON), whose task is a no-op that records its
  completion time in Redis (one RPUSH) so the benchmark can time the drain.
- `dag_celery_app`: the same app plus the Redis result backend (chords need one), for the DAG benchmark: a
  `chain` of no-op steps whose last one records its time, and a `chord` of no-op items (their results stored,
  as a chord needs) whose join records its time.

    python -m bench.baselines api --port 8001 --database-url postgresql://... --redis-url redis://.../12
    python -m bench.baselines worker --concurrency 64      (broker from BENCH_REDIS_URL)
    celery -A bench.baselines:dag_celery_app worker -Q baseline -P threads -c 64   (broker and results too)
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import click
import redis
from celery import Celery
from kombu import Exchange, Queue
from pydantic import BaseModel

BASELINE_QUEUE = "baseline"
NOOP_TASK = "bench.noop"
DONE_KEY = "bench:noop:done"
PUSH_KEY = "bench:baseline:tasks"
DAG_STEP_TASK = "bench.dag_step"
DAG_ITEM_TASK = "bench.dag_item"
DAG_JOIN_TASK = "bench.dag_join"
DAG_DONE_KEY = "bench:dag:done:{token}"

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS baseline_tasks (
    id          varchar(40) PRIMARY KEY,
    type        varchar(16) NOT NULL,
    model       varchar(200) NOT NULL,
    status      varchar(16) NOT NULL,
    input       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)
"""


# --- the bare FastAPI endpoint -----------------------------------------------------------------------------------


class Body(BaseModel):
    """The request body, parsed and validated by FastAPI as any endpoint would (at module level, so that the
    string annotation resolves)."""

    type: str
    model: str
    input: dict[str, Any]


def create_api() -> Any:
    from fastapi import FastAPI
    from psycopg.types.json import Jsonb
    from psycopg_pool import AsyncConnectionPool
    from redis import asyncio as aioredis

    database_url = os.environ["BENCH_DATABASE_URL"]
    redis_url = os.environ["BENCH_REDIS_URL"]

    resources: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Pool bounds as ours: SWITCHYARD_DB_POOL_SIZE=10 plus max_overflow=20.
        pool = AsyncConnectionPool(database_url, min_size=10, max_size=30, open=False)
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute(TABLE_DDL)
        resources["pool"] = pool
        resources["redis"] = aioredis.Redis.from_url(redis_url)
        try:
            yield
        finally:
            await resources["redis"].aclose()
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/tasks", status_code=202)
    async def create_task(body: Body) -> dict[str, str]:
        task_id = "task_" + secrets.token_hex(12)
        async with resources["pool"].connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO baseline_tasks (id, type, model, status, input) VALUES (%s, %s, %s, 'queued', %s)",
                (task_id, body.type, body.model, Jsonb(body.input)),
            )
        await resources["redis"].lpush(PUSH_KEY, task_id)
        return {"id": task_id, "status": "queued"}

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


# --- the plain Celery app ----------------------------------------------------------------------------------------


def make_baseline_celery(broker_url: str, result_backend: str | None = None) -> Celery:
    """The same Celery settings as `switchyard.workers.celery_app.make_celery`, minus what a no-op never uses.
    With `result_backend`, results are still ignored unless a task asks to keep them (a chord's header does)."""
    app = Celery("bench_baseline", broker=broker_url, backend=result_backend)
    app.conf.update(
        broker_transport_options={"visibility_timeout": 3600},
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=BASELINE_QUEUE,
        task_queues=[Queue(BASELINE_QUEUE, Exchange(BASELINE_QUEUE, type="direct"), routing_key=BASELINE_QUEUE)],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )
    return app


# Making the app opens no connection; the worker reads its broker from BENCH_REDIS_URL.
celery_app = make_baseline_celery(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
# The DAG baseline's app: broker and result backend in the same Redis DB.
dag_celery_app = make_baseline_celery(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
    result_backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
)

_redis: redis.Redis | None = None
_redis_lock = threading.Lock()


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        with _redis_lock:
            if _redis is None:
                _redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _redis


@celery_app.task(name=NOOP_TASK, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def noop(task_id: str) -> None:
    """Nothing but a record that it ran (the benchmark counts these and takes the first/last time)."""
    _client().rpush(DONE_KEY, repr(time.time()))


# --- the DAG baseline: chain and chord of no-ops -----------------------------------------------------------------


def _done(token: str) -> None:
    _client().rpush(DAG_DONE_KEY.format(token=token), repr(time.time()))


@dag_celery_app.task(name=DAG_STEP_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)  # type: ignore[untyped-decorator]
def dag_step(token: str, index: int, last: int) -> None:
    """One step of `chain(dag_step.si(...) x N)`: nothing, but the last step records when the chain ended."""
    if index == last:
        _done(token)


@dag_celery_app.task(name=DAG_ITEM_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=False)  # type: ignore[untyped-decorator]
def dag_item(index: int) -> int:
    """One header task of `chord([dag_item.s(i) ...], dag_join.s(token))`: its result is what the join gets."""
    return index


@dag_celery_app.task(name=DAG_JOIN_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)  # type: ignore[untyped-decorator]
def dag_join(results: list[int], token: str) -> None:
    """The chord's body: records when the fan-in ran (and how many results it got)."""
    _client().rpush(DAG_DONE_KEY.format(token=token), repr(time.time()), len(results))


# --- entry points ------------------------------------------------------------------------------------------------


@click.group()
def main() -> None:
    """Baseline processes for bench.run."""


@main.command()
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, required=True)
def api(host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        "bench.baselines:create_api",
        factory=True,
        host=host,
        port=port,
        workers=1,
        log_level="warning",
        access_log=False,
    )


@main.command()
@click.option("--concurrency", type=int, required=True)
@click.option("--pool", default="threads")
@click.option("--loglevel", default="INFO")
def worker(concurrency: int, pool: str, loglevel: str) -> None:
    celery_app.worker_main(
        [
            "worker",
            "-Q",
            BASELINE_QUEUE,
            "-P",
            pool,
            "-c",
            str(concurrency),
            "--loglevel",
            loglevel,
            "-n",
            f"bench-baseline-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
