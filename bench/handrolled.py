"""end_to_end's second baseline: what a team writes without Switchyard.

A plain Celery task that calls the provider with the official openai SDK (sync client, one per process,
shared by the pool's threads) and INSERTs the answer into a Postgres table through a psycopg connection pool.
No task rows before the call, no routing, no events, no cost accounting, no idempotency: the least a team
would ship. Same broker and Celery settings as the no-op baseline (late acks, prefetch 1, JSON), same pool
and concurrency as our provider worker.

    celery -A bench.handrolled:app worker -Q handrolled -P threads -c 64
        (environment: BENCH_REDIS_URL, BENCH_DATABASE_URL, BENCH_FAKE_URL)

The benchmark creates the table (`TABLE_DDL`), publishes N messages (`publish`), then starts the worker and
waits for N rows; a row's started_at is when its task began, finished_at when it was inserted.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from typing import Any

import openai
from celery import Celery
from kombu import Exchange, Queue
from psycopg_pool import ConnectionPool

from bench.baselines import make_baseline_celery

QUEUE = "handrolled"
TASK = "bench.handrolled_chat"
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hello bench"}]

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS handrolled_results (
    id                 varchar(40) PRIMARY KEY,
    model              varchar(200) NOT NULL,
    content            text,
    prompt_tokens      integer,
    completion_tokens  integer,
    started_at         timestamptz NOT NULL,
    finished_at        timestamptz NOT NULL DEFAULT now()
)
"""


def make_app(broker_url: str) -> Celery:
    """The no-op baseline's Celery settings, on this benchmark's own queue."""
    celery_app = make_baseline_celery(broker_url)
    celery_app.conf.update(
        task_default_queue=QUEUE,
        task_queues=[Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)],
    )
    return celery_app


# Making the app opens no connection; the worker reads its broker from BENCH_REDIS_URL.
app = make_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))

_lock = threading.Lock()
_resources: dict[str, Any] = {}


def _client_and_pool() -> tuple[openai.OpenAI, ConnectionPool]:
    """One SDK client and one connection pool per worker process, made on first use."""
    if not _resources:
        with _lock:
            if not _resources:
                # Pool bounds as ours (SWITCHYARD_DB_POOL_SIZE=10 plus max_overflow=20) and as bench.baselines'.
                pool = ConnectionPool(os.environ["BENCH_DATABASE_URL"], min_size=10, max_size=30, open=True)
                client = openai.OpenAI(base_url=os.environ["BENCH_FAKE_URL"] + "/v1", api_key="fake", timeout=30)
                _resources.update(client=client, pool=pool)
    return _resources["client"], _resources["pool"]


@app.task(name=TASK, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def chat(request_id: str, model: str, messages: list[dict[str, str]]) -> None:
    """Call the model, store its answer."""
    started = datetime.now(UTC)
    client, pool = _client_and_pool()
    reply = client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    usage = reply.usage
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO handrolled_results (id, model, content, prompt_tokens, completion_tokens, started_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (
                request_id,
                reply.model,
                reply.choices[0].message.content,
                usage.prompt_tokens if usage else None,
                usage.completion_tokens if usage else None,
                started,
            ),
        )


def publish(broker_url: str, n: int) -> None:
    """Queue n chat calls, as the code that used to call the provider inline would."""
    publisher = make_app(broker_url)
    try:
        for i in range(n):
            publisher.send_task(TASK, args=[f"req-{i}", MODEL, MESSAGES], queue=QUEUE)
    finally:
        publisher.close()
