"""batch: a chat batch through the fake provider (0 ms), against plain tasks on the same stack, same run.

One API process and one `switchyard worker` on the provider, batch and control queues (threads, 64), which runs
the batch lines in its batch process (`SWITCHYARD_BATCH_PROCESS=false` in the environment: in the worker itself):
- end_to_end side (the baseline): N tasks queued through `POST /v1/tasks`, then drained; tasks/s over the
  window from the first claim to the last finish, from the rows;
- batch side: a JSONL file of M chat lines uploaded with the official openai SDK (`files.create`), a batch
  created (`batches.create`) and polled until `completed`; lines/s over the same kind of window, from the
  rows of its line tasks (target ours >= 0.9x: the batch machinery costs little per line). The time from
  `batches.create` to `completed` (validation, release windows, finalizing the output file) is reported too.
- interactive calls: sequential `/v1/chat/completions` calls with the SDK on the idle stack, then while the
  batch runs; ratio = p50 during the batch / p50 idle (target <= 1.5x: a batch does not starve interactive
  traffic).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import openai
import psycopg

from bench.harness import BenchError, Env, log, sql_one, wait_until
from bench.registry import Benchmark, Options, Result, Row, standard_row
from bench.stack import POOL, Switchyard, wait_worker

REDIS_DB = 3
MESSAGES = [{"role": "user", "content": "Say hello in one word."}]


@dataclass(frozen=True)
class Sizes:
    tasks: int
    lines: int
    interactive_idle: int
    concurrency: int


FULL = Sizes(tasks=2000, lines=10_000, interactive_idle=60, concurrency=64)
QUICK = Sizes(tasks=400, lines=2000, interactive_idle=30, concurrency=64)


def _window(env: Env, where: str) -> float:
    query = f"SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM tasks WHERE {where}"
    return float(sql_one(env.database_url, query))


def _phases(env: Env, batch_id: str) -> dict[str, float]:
    """When each phase of the batch began, in seconds after its creation (from the rows)."""
    marks = {
        "in_progress": "b.in_progress_at",
        "first_line_started": "(SELECT min(started_at) FROM tasks WHERE batch_id = b.id)",
        "last_line_finished": "(SELECT max(finished_at) FROM tasks WHERE batch_id = b.id)",
        "finalizing": "b.finalizing_at",
        "completed": "b.completed_at",
    }
    return {
        name: float(
            sql_one(
                env.database_url,
                f"SELECT extract(epoch FROM {mark} - b.created_at) FROM batches b WHERE b.id = '{batch_id}'",
            )
        )
        for name, mark in marks.items()
    }


def _split_ms(env: Env, since: str, until: str) -> dict[str, float]:
    """Medians of where the interactive calls made in a window spent their time, from their rows: waiting in the
    queue (created to claimed) and executing (claimed to finished)."""
    query = (
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) "
        f"FROM tasks WHERE batch_id IS NULL AND created_at >= '{since}' AND created_at < '{until}'"
    )
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    queued, executing = (float(v or 0) * 1000 for v in row) if row else (0.0, 0.0)
    return {"queued_ms": queued, "executing_ms": executing}


def _now(env: Env) -> str:
    return str(sql_one(env.database_url, "SELECT clock_timestamp()::text"))


def _chat_p50_ms(client: openai.OpenAI, n: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.chat.completions.create(model="chat-default", messages=MESSAGES)  # type: ignore[arg-type]
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), times


def _batch_file(lines: int) -> bytes:
    rows = (
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "chat-default", "messages": [{"role": "user", "content": f"batch line {i}"}]},
        }
        for i in range(lines)
    )
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def run(opts: Options) -> Result:
    """Plain tasks first, then interactive calls on the idle stack, then the batch with interactive calls."""
    sz = opts.sizes("batch", FULL, QUICK)
    env = Env("batch", REDIS_DB, opts.tmp / "batch")
    try:
        ours = Switchyard(env, fake_latency_ms=0)
        created_s = ours.create_tasks(sz.tasks)
        log(f"  batch: {sz.tasks} plain tasks queued in {created_s:.1f}s")
        worker = ours.start_worker(sz.concurrency, queues="provider,batch,control")
        wait_worker(worker)
        wait_until(
            lambda: ours.count("SELECT count(*) FROM tasks WHERE status='succeeded'") >= sz.tasks,
            timeout=600,
            interval=0.05,
            what=f"{sz.tasks} plain tasks",
        )
        tasks_window = _window(env, "batch_id IS NULL AND status='succeeded'")
        client = openai.OpenAI(base_url=f"{ours.url}/v1", api_key=ours.key, max_retries=0, timeout=60)
        idle_since = _now(env)
        idle_p50, _ = _chat_p50_ms(client, sz.interactive_idle)
        idle_split = _split_ms(env, idle_since, _now(env))
        log(f"  batch: plain tasks {sz.tasks / tasks_window:.0f}/s; interactive p50 idle {idle_p50:.1f} ms")

        uploaded = client.files.create(file=("lines.jsonl", _batch_file(sz.lines)), purpose="batch")
        during_since = _now(env)
        t0 = time.perf_counter()
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        create_s = time.perf_counter() - t0
        log(f"  batch: batches.create answered in {create_s:.1f}s")
        during: list[float] = []
        stop = threading.Event()

        def interactive() -> None:
            while not stop.is_set():
                during.extend(_chat_p50_ms(client, 1)[1])

        caller = threading.Thread(target=interactive, daemon=True)
        caller.start()
        try:
            seen: dict[str, float] = {}
            slowest = 0.0
            while True:
                r0 = time.perf_counter()
                batch = client.batches.retrieve(batch.id)
                slowest = max(slowest, time.perf_counter() - r0)
                seen.setdefault(batch.status, round(time.perf_counter() - t0, 1))
                if batch.status in ("completed", "failed", "expired", "cancelled"):
                    break
                if time.perf_counter() - t0 > 900:
                    raise BenchError(f"batch {batch.id} still {batch.status} after 900 s")
                time.sleep(0.2)
        finally:
            stop.set()
            caller.join(60)
        create_to_completed = time.perf_counter() - t0
        during_split = _split_ms(env, during_since, _now(env))
        log(f"  batch: interactive calls' medians idle {idle_split}, during the batch {during_split}")
        log(f"  batch: statuses first seen (s): {seen}; slowest retrieve {slowest:.2f}s")
        counts = batch.request_counts
        if batch.status != "completed" or counts is None or counts.completed != sz.lines:
            raise BenchError(f"batch ended {batch.status} with {counts}: {batch.errors}")
        lines_window = _window(env, f"batch_id = '{batch.id}'")
        phases = _phases(env, batch.id)
        log("  batch: phases (s from create): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
        worker.stop()
        lines_rate = sz.lines / lines_window
        tasks_rate = sz.tasks / tasks_window
        during_p50 = statistics.median(during) if during else float("nan")
        log(
            f"  batch: {lines_rate:.0f} lines/s (create to completed {create_to_completed:.1f}s); "
            f"interactive p50 during {during_p50:.1f} ms over {len(during)} calls"
        )
        return {
            "ours": lines_rate,
            "baseline": tasks_rate,
            "unit": "/s",
            "ratio": lines_rate / tasks_rate,
            "target": 0.9,
            "target_kind": ">=",
            "interactive": {
                "ours": during_p50,
                "baseline": idle_p50,
                "unit": "ms p50",
                "ratio": during_p50 / idle_p50,
                "target": 1.5,
                "target_kind": "<=",
                "calls_during": len(during),
                "split_idle_ms": idle_split,
                "split_during_ms": during_split,
            },
            "create_to_completed_s": create_to_completed,
            "phases_s": phases,
            "lines_per_s_create_to_completed": sz.lines / create_to_completed,
            "sizes": asdict(sz),
            "pool": POOL,
        }
    finally:
        env.close()


def rows(name: str, res: Result) -> list[Row]:
    """Lines/s against plain tasks/s, then the interactive p50 during the batch against idle."""
    return [
        standard_row(f"{name} lines/s vs end_to_end tasks/s", res),
        standard_row(f"{name}: interactive p50 during vs idle", res["interactive"]),
    ]


def details(res: Result) -> None:
    """The wall time of the whole batch, validation and output file included."""
    sz: dict[str, Any] = res["sizes"]
    print(
        f"batch: {sz['lines']} chat lines, {sz['concurrency']} {res['pool']}; create to completed "
        f"{res['create_to_completed_s']:.1f}s ({res['lines_per_s_create_to_completed']:.0f} lines/s with "
        f"validation and the output file); {res['interactive']['calls_during']} interactive calls during the batch"
    )


BENCHMARK = Benchmark(
    name="batch",
    summary="a chat batch's lines/s vs plain tasks/s (>= 0.9x); interactive p50 during the batch vs idle (<= 1.5x)",
    run=run,
    rows=rows,
    details=details,
)
