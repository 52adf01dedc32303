"""Run the benchmarks of DESIGN.md "Performance targets", each against a baseline measured in the same run.

    .venv/bin/python -m bench.run [--only enqueue,end_to_end,in_flight,ml_batching,dag,ws_fanout,sync_overhead]
        [--quick] [--profile]

Prints a table of ratios (never asserts on timings) and writes bench/results/latest.json.

- enqueue:    POST /v1/tasks req/s at 32 connections vs a bare FastAPI INSERT + LPUSH endpoint (target >= 0.7x).
- end_to_end: chat tasks/s through the fake provider (0 ms), N tasks queued first, one provider worker
              (threads, 64) vs plain Celery no-op tasks with the same pool and concurrency (target >= 0.6x).
- in_flight:  N chat tasks, fake latency 1 s, one worker with 500 threads: completion rate vs the ideal
              500/s (target >= 0.8x with >= 500 in flight); also peak in flight and RSS per in-flight call.
- ml_batching: POST /v1/predict/risk-classifier predictions/s at 64 clients, one ML worker (threads, 64) with
              onnx micro-batching (max_batch_size 64, 2 ms) vs the same worker with max_batch_size 1 (target
              >= 3x). Supporting, no target: the same stack unbatched with one ONNX Runtime intra-op thread, and
              OnnxAdapter.predict from 64 threads in-process (three shipped models), batching on vs off.
- dag:        workflow runs, fake at 0 ms, one provider worker (threads, 64) and one control worker (threads,
              16): per-step overhead of a 10-step chain and of a 100-wide for_each plus its fan-in, submit to
              last step done, vs a plain Celery chain / chord of no-op tasks (threads, 64; Redis result
              backend for the chord) (target <= 1.5x, lower is better).
- ws_fanout:  1,000 WebSocket listeners subscribed to one tenant (2 load-generator processes), chat tasks at
              1/s: event delivery latency p50/p99 (receive - created_at) vs a bare Redis pub/sub fan-out of
              the same shape (1,000 redis-py asyncio subscribers, and one) on the same Redis; no target.
              Supporting: the same at 20 tasks/s (overload on 2 cores: deliveries/s is the capacity).
- sync_overhead: /v1/chat/completions through the openai SDK, one call at a time, fake at 0 ms: p50 added
              over calling the fake directly, vs what LiteLLM's Router adds (in this process) (target <= 1.0x,
              lower is better; bench/sync_overhead.py).

Each benchmark has its own fresh Postgres database and Redis DB (flushed before and after) and stops every
process it started, also on failure. `--profile` also samples the API and the worker with py-spy (that
costs CPU on a small machine: do not read the ratios of a profiled run as results).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis

from bench.harness import (
    CHAT_BODY,
    FAKE_CONFIG,
    ML_CONFIG,
    PG_ADMIN_URL,
    REDIS_BASE,
    BenchError,
    Env,
    LoadResult,
    cpu_seconds,
    load,
    machine_busy_pct,
    machine_cpu_ticks,
    rss_mb,
    run_raw,
    sql_one,
    wait_http,
    wait_log,
    wait_until,
)
from bench.sync_overhead import bench_sync_overhead
from tests.processes import ROOT, Process, cli, free_port

RESULTS_DIR = Path(__file__).with_name("results")
PROVIDER_QUEUE = "provider"
# The pool both sides run: the one `switchyard worker` picks for provider calls.
POOL = "threads"
CONNECTIONS = 32


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- shared set-up ---------------------------------------------------------------------------------------------


class Switchyard:
    """Our stack inside an Env: migrated database, config pointing at the fake, API, an admin key."""

    def __init__(self, env: Env, *, fake_latency_ms: int | None, api: bool = True) -> None:
        self.env = env
        env.run_cli("migrate")
        fake_port = free_port()
        self.fake_url = f"http://127.0.0.1:{fake_port}"
        config = env.tmp / "switchyard.yaml"
        config.write_text(FAKE_CONFIG.format(fake=self.fake_url))
        env.env["SWITCHYARD_CONFIG"] = str(config)
        self.fake: Process | None = None
        if fake_latency_ms is not None:
            self.fake = env.start(
                "fake", cli("fake-provider", "--port", str(fake_port), "--latency-ms", str(fake_latency_ms))
            )
            wait_http(f"{self.fake_url}/healthz", self.fake)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.api: Process | None = None
        if api:
            self.api = env.start("api", cli("api", "--port", self.url.rsplit(":", 1)[1]))
            wait_http(f"{self.url}/healthz", self.api)
        self.key = env.run_cli("keys", "create", "--tenant", "bench", "--role", "admin").strip().splitlines()[-1]

    def create_tasks(self, n: int) -> float:
        """Queue n chat tasks through the API (no worker consumes yet); returns the seconds it took."""
        t0 = time.perf_counter()
        remaining = n
        for _ in range(5):
            res = run_raw(f"{self.url}/v1/tasks", auth=self.key, connections=16, total=remaining)
            have = self.count("SELECT count(*) FROM tasks")
            remaining = n - have
            if remaining <= 0:
                break
            log(f"  {res.non_2xx} non-2xx / {res.errors} errors while creating tasks; {remaining} to go")
        have = self.count("SELECT count(*) FROM tasks")
        queued = self.env.redis.llen(PROVIDER_QUEUE)
        if have != n or queued != n:
            raise BenchError(f"wanted {n} queued tasks, have {have} rows and {queued} messages")
        return time.perf_counter() - t0

    def count(self, query: str) -> int:
        return int(sql_one(self.env.database_url, query))

    def start_worker(self, concurrency: int) -> Process:
        return self.env.start(
            "worker-provider",
            cli(
                "worker",
                "--queues",
                PROVIDER_QUEUE,
                "--pool",
                POOL,
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "INFO",
            ),
        )

    def window_s(self) -> float:
        """First claim to last finish, from the rows' own timestamps."""
        return float(
            sql_one(
                self.env.database_url,
                "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM tasks WHERE status='succeeded'",
            )
        )


class Sampler:
    """Polls `sample()` every `interval` seconds on a thread until stopped."""

    def __init__(self, sample: Callable[[], None], interval: float) -> None:
        self._sample = sample
        self._interval = interval
        self._stop = threading.Event()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception as exc:
                self.errors.append(repr(exc))
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Profiler:
    """py-spy record of one process, as collapsed stacks, when --profile is on."""

    def __init__(self, enabled: bool, pid: int, name: str, seconds: float) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = RESULTS_DIR / f"profile-{name}.txt"
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not enabled or not Path(exe).exists():
            return
        argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "100", "--threads",
                "--duration", str(max(1, round(seconds))), "--nonblocking", "-o", str(self.path)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_worker(proc: Process) -> float:
    return wait_log(proc, "ready.", timeout=90)


# --- 1. enqueue ------------------------------------------------------------------------------------------------


def bench_enqueue(tmp: Path, quick: bool, profile: bool) -> dict[str, Any]:
    warm_s, measure_s, rounds = (2.0, 4.0, 1) if quick else (3.0, 10.0, 2)
    env = Env("enqueue", 12, tmp / "enqueue")
    try:
        # No worker and no fake: only the front is measured; its messages stay in Redis (counted below).
        ours = Switchyard(env, fake_latency_ms=None)
        base_port = free_port()
        base_url = f"http://127.0.0.1:{base_port}"
        baseline = env.start(
            "baseline-api",
            [sys.executable, "-m", "bench.baselines", "api", "--port", str(base_port)],
            {"BENCH_DATABASE_URL": env.database_url, "BENCH_REDIS_URL": env.redis_url},
        )
        wait_http(f"{base_url}/healthz", baseline)
        assert ours.api is not None
        runs: dict[str, list[LoadResult]] = {"ours": [], "baseline": []}
        cpu_ms: dict[str, list[float]] = {"ours": [], "baseline": []}
        # Alternate so that neither side always runs on the warmer (or fuller) database.
        for r in range(rounds):
            for side, url, key in (("baseline", base_url, None), ("ours", ours.url, ours.key)):
                load(f"{url}/v1/tasks", auth=key, connections=CONNECTIONS, seconds=warm_s)
                pid = ours.api.pid if side == "ours" else baseline.pid
                prof = Profiler(profile and side == "ours" and r == 0, pid, "enqueue-api", measure_s)
                cpu0 = cpu_seconds(pid)
                try:
                    res = load(f"{url}/v1/tasks", auth=key, connections=CONNECTIONS, seconds=measure_s)
                finally:
                    prof.stop()
                # CPU of the server process per request: less sensitive than req/s to other load on the machine.
                cpu_ms[side].append(1000 * (cpu_seconds(pid) - cpu0) / max(1, res.requests))
                runs[side].append(res)
                if side == "baseline" and (res.non_2xx or res.errors):
                    raise BenchError(f"the baseline answered {res.non_2xx} non-2xx and {res.errors} errors")
                log(f"  enqueue round {r + 1} {side:8}: {res.rps:8.0f} req/s  p50 {res.latency_p50_ms:.1f} ms  "
                    f"p99 {res.latency_p99_ms:.1f} ms  non-2xx {res.non_2xx}  errors {res.errors}  "
                    f"server CPU {cpu_ms[side][-1]:.2f} ms/req")  # fmt: skip
        # Every 2xx must be a row and a message in Redis: the API really publishes. Requests still in flight
        # when the load tool stopped finish first.
        last: list[tuple[int, int]] = []

        def settled() -> bool:
            last.append((ours.count("SELECT count(*) FROM tasks"), int(env.redis.llen(PROVIDER_QUEUE))))
            return len(last) > 1 and last[-1] == last[-2] and last[-1][0] == last[-1][1]

        try:
            wait_until(settled, timeout=10, interval=0.5, what="rows and messages to match")
        except BenchError:
            pass  # reported below as a mismatch
        rows = ours.count("SELECT count(*) FROM tasks")
        events = ours.count("SELECT count(*) FROM events")
        messages = int(env.redis.llen(PROVIDER_QUEUE))
        base_rows = int(sql_one(env.database_url, "SELECT count(*) FROM baseline_tasks"))
        base_pushed = int(env.redis.llen("bench:baseline:tasks"))
        ours_rps = statistics.mean(r.rps for r in runs["ours"])
        base_rps = statistics.mean(r.rps for r in runs["baseline"])
        return {
            "ours": ours_rps,
            "baseline": base_rps,
            "unit": "req/s",
            "ratio": ours_rps / base_rps,
            "target": 0.7,
            "target_kind": ">=",
            "connections": CONNECTIONS,
            "warmup_s": warm_s,
            "measure_s": measure_s,
            "server_cpu_ms_per_request": {k: statistics.mean(v) for k, v in cpu_ms.items()},
            "rounds": {k: [asdict(x) for x in v] for k, v in runs.items()},
            "check": {
                "task_rows": rows,
                "event_rows": events,
                "provider_queue_messages": messages,
                "baseline_rows": base_rows,
                "baseline_pushed": base_pushed,
                "every_row_published": rows == messages,
            },
        }
    finally:
        env.close()


# --- 2. end-to-end ---------------------------------------------------------------------------------------------


def bench_end_to_end(tmp: Path, quick: bool, profile: bool) -> dict[str, Any]:
    n, concurrency = (400, 64) if quick else (2000, 64)
    env = Env("e2e", 13, tmp / "e2e")
    try:
        # Ours: N tasks queued through the API with no worker, then one provider worker drains them.
        ours = Switchyard(env, fake_latency_ms=0)
        created_s = ours.create_tasks(n)
        log(f"  end_to_end: {n} tasks queued in {created_s:.1f}s; starting the provider worker ({concurrency} {POOL})")
        worker = ours.start_worker(concurrency)
        t_ready = wait_worker(worker)
        cpu0 = cpu_seconds(worker.pid)
        prof = Profiler(profile, worker.pid, "e2e-worker", 600)

        def done() -> bool:
            failed = ours.count("SELECT count(*) FROM tasks WHERE status='failed'")
            if failed:
                raise BenchError(f"{failed} tasks failed:\n{worker.log()[-3000:]}")
            return ours.count("SELECT count(*) FROM tasks WHERE status='succeeded'") >= n

        try:
            wait_until(done, timeout=600, interval=0.05, what=f"{n} succeeded tasks")
        finally:
            prof.stop()
        t_done = time.monotonic()
        ours_cpu_ms = 1000 * (cpu_seconds(worker.pid) - cpu0) / n
        ours_window = ours.window_s()
        ours_wall = t_done - t_ready
        worker.stop()
        for proc in (ours.api, ours.fake):
            if proc is not None:
                proc.stop()

        # Baseline: N no-op messages published first, then one plain Celery worker, same pool and concurrency.
        from bench.baselines import BASELINE_QUEUE, DONE_KEY, NOOP_TASK, make_baseline_celery

        env.redis.flushdb()
        publisher = make_baseline_celery(env.redis_url)
        for i in range(n):
            publisher.send_task(NOOP_TASK, args=[f"noop-{i}"], queue=BASELINE_QUEUE)
        publisher.close()
        if env.redis.llen(BASELINE_QUEUE) != n:
            raise BenchError(f"published {n} no-op messages, {env.redis.llen(BASELINE_QUEUE)} in the queue")
        bworker = env.start(
            "baseline-worker",
            # Celery's own command line, so that a green pool patches the standard library before imports.
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.baselines:celery_app",
                "worker",
                "-Q",
                BASELINE_QUEUE,
                "-P",
                POOL,
                "-c",
                str(concurrency),
                "-n",
                f"bench-baseline-{os.getpid()}@%h",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            {"BENCH_REDIS_URL": env.redis_url},
        )
        b_ready = wait_worker(bworker)
        b_cpu0 = cpu_seconds(bworker.pid)
        wait_until(lambda: env.redis.llen(DONE_KEY) >= n, timeout=600, interval=0.05, what=f"{n} no-op tasks")
        b_done = time.monotonic()
        base_cpu_ms = 1000 * (cpu_seconds(bworker.pid) - b_cpu0) / n
        times = [float(t) for t in env.redis.lrange(DONE_KEY, 0, -1)]
        base_window = max(times) - min(times)
        base_wall = b_done - b_ready
        bworker.stop()

        ours_rate, base_rate = n / ours_window, n / base_window
        return {
            "ours": ours_rate,
            "baseline": base_rate,
            "unit": "tasks/s",
            "ratio": ours_rate / base_rate,
            "target": 0.6,
            "target_kind": ">=",
            "n": n,
            "concurrency": concurrency,
            "pool": POOL,
            "ours_window_s": ours_window,
            "baseline_window_s": base_window,
            "ours_from_ready": {"seconds": ours_wall, "rate": n / ours_wall},
            "baseline_from_ready": {"seconds": base_wall, "rate": n / base_wall},
            "ratio_from_ready": (n / ours_wall) / (n / base_wall),
            "worker_cpu_ms_per_task": {"ours": ours_cpu_ms, "baseline": base_cpu_ms},
            "create_s": created_s,
        }
    finally:
        env.close()


# --- 3. in-flight ----------------------------------------------------------------------------------------------


def bench_in_flight(tmp: Path, quick: bool, profile: bool) -> dict[str, Any]:
    n, concurrency, latency_ms = (1000, 500, 1000) if quick else (2000, 500, 1000)
    ideal = concurrency / (latency_ms / 1000)
    env = Env("inflight", 14, tmp / "inflight")
    try:
        ours = Switchyard(env, fake_latency_ms=latency_ms)
        created_s = ours.create_tasks(n)
        log(f"  in_flight: {n} tasks queued in {created_s:.1f}s; starting the provider worker ({concurrency} {POOL})")
        worker = ours.start_worker(concurrency)
        t_ready = wait_worker(worker)
        rss_ready = rss_mb(worker.pid)
        cpu0 = cpu_seconds(worker.pid)
        peaks = {"running": 0, "rss": rss_ready, "succeeded": 0, "failed": 0}
        series: list[tuple[float, int, int, float]] = []
        conn = psycopg.connect(env.database_url, autocommit=True)

        def sample() -> None:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status='running'), count(*) FILTER (WHERE status='succeeded'),"
                " count(*) FILTER (WHERE status='failed') FROM tasks"
            ).fetchone()
            assert row is not None
            rss = rss_mb(worker.pid)
            series.append((round(time.monotonic() - t_ready, 2), row[0], row[1], round(rss, 1)))
            peaks["running"] = max(peaks["running"], row[0])
            peaks["rss"] = max(peaks["rss"], rss)
            peaks["succeeded"], peaks["failed"] = row[1], row[2]

        sampler = Sampler(sample, 0.1)
        prof = Profiler(profile, worker.pid, "inflight-worker", 600)
        try:

            def finished() -> bool:
                if peaks["failed"]:
                    raise BenchError(f"{peaks['failed']} tasks failed:\n{worker.log()[-3000:]}")
                if not worker.alive():
                    raise BenchError(f"worker died:\n{worker.log()[-3000:]}")
                return peaks["succeeded"] >= n

            wait_until(finished, timeout=300, interval=0.05, what=f"{n} succeeded tasks")
        finally:
            sampler.stop()
            prof.stop()
            conn.close()
        t_done = time.monotonic()
        rss_after = rss_mb(worker.pid)
        cpu_ms = 1000 * (cpu_seconds(worker.pid) - cpu0) / n
        window = ours.window_s()
        call_ms = sql_one(
            env.database_url,
            "SELECT json_build_array(avg(latency_ms), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),"
            " max(latency_ms)) FROM attempts",
        )
        rate = n / window
        fake_calls = None
        try:
            import httpx

            fake_calls = httpx.get(f"{ours.fake_url}/control/stats", timeout=5).json().get("total")
        except Exception:
            pass
        growth = peaks["rss"] - rss_ready
        return {
            "ours": rate,
            "baseline": ideal,
            "unit": "tasks/s",
            "ratio": rate / ideal,
            "target": 0.8,
            "target_kind": ">=",
            "n": n,
            "concurrency": concurrency,
            "latency_ms": latency_ms,
            "window_s": window,
            "from_ready": {"seconds": t_done - t_ready, "rate": n / (t_done - t_ready)},
            "peak_in_flight": peaks["running"],
            # Little's law at the provider: how many calls were really outstanding there, on average.
            "effective_in_flight_at_provider": rate * latency_ms / 1000,
            "in_flight_target": 500,
            "rss_mb": {"ready": rss_ready, "peak": peaks["rss"], "after": rss_after},
            "rss_growth_per_in_flight_mb": growth / peaks["running"] if peaks["running"] else None,
            "rss_target_mb": 0.5,
            "fake_calls": fake_calls,
            "worker_cpu_ms_per_task": cpu_ms,
            "provider_call_ms": {"mean": call_ms[0], "p50": call_ms[1], "max": call_ms[2]},
            "sampler_errors": sampler.errors[:5],
            "series": series,
            "create_s": created_s,
        }
    finally:
        env.close()


# --- 4. ML micro-batching --------------------------------------------------------------------------------------

ML_MODEL = "risk-classifier"
ML_CLIENTS = 64
# The onnx provider's options per side; the worker command line is the same for all. `baseline` and
# `batching` differ only in max_batch_size and make the headline ratio. `unbatched_1t` is supporting, with no
# target: unbatched with one ONNX Runtime intra-op thread, which does not spin between session runs.
ML_SIDES: dict[str, dict[str, int]] = {
    "baseline": {"max_batch_size": 1, "max_batch_wait_ms": 2},
    "batching": {"max_batch_size": 64, "max_batch_wait_ms": 2},
    "unbatched_1t": {"max_batch_size": 1, "max_batch_wait_ms": 2, "intra_op_threads": 1},
}
# In-process supporting figures: the stack's model, the 200-tree regressor, and the isolation forest (the
# shipped model whose single-row session run costs most).
ML_LAYER_MODELS = ("risk_classifier", "revenue_regressor", "anomaly_detector")


def _reference(model_file: str) -> tuple[str, list[list[float]]]:
    ref = json.loads((ROOT / "models" / f"{model_file}.reference.json").read_text())
    return ref["input"], ref["inputs"]


def _ml_stack_run(tmp: Path, side: str, rnd: int, warm_s: float, measure_s: float, profile: bool) -> dict[str, Any]:
    """One fresh stack (database, Redis DB 11, API, one ML worker) with `side`'s provider options, 64 clients."""
    options = ML_SIDES[side]
    env = Env(f"ml_{side}", 11, tmp / f"ml-{side}-{rnd}")
    try:
        env.run_cli("migrate")
        config = env.tmp / "switchyard.yaml"
        provider_options = ", ".join(f"{k}: {v}" for k, v in options.items())
        config.write_text(
            ML_CONFIG.format(provider_options=provider_options, model_path=ROOT / "models" / "risk_classifier.onnx")
        )
        env.env["SWITCHYARD_CONFIG"] = str(config)
        url = f"http://127.0.0.1:{free_port()}"
        api = env.start("api", cli("api", "--port", url.rsplit(":", 1)[1]))
        wait_http(f"{url}/healthz", api)
        key = env.run_cli("keys", "create", "--tenant", "bench", "--role", "admin").strip().splitlines()[-1]
        worker = env.start(
            "worker-ml", cli("worker", "--queues", "ml", "--concurrency", str(ML_CLIENTS), "--loglevel", "INFO")
        )
        wait_worker(worker)

        name, rows = _reference("risk_classifier")
        body = json.dumps({"inputs": {name: [rows[0]]}}).encode()
        endpoint = f"{url}/v1/predict/{ML_MODEL}"
        import httpx

        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        first = httpx.post(endpoint, content=body, headers=headers, timeout=30)
        if first.status_code != 200 or "batch_size" not in first.json():
            raise BenchError(f"POST {endpoint} answered {first.status_code}: {first.text[:500]}")

        def drain() -> None:
            """The load tool drops its connections when it stops, but the API still waits for their tasks: wait
            until none is queued or running, so that the next phase does not start with 64 extra waits."""
            live = "SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')"
            try:
                wait_until(lambda: sql_one(env.database_url, live) == 0, timeout=30, interval=0.1, what="drain")
            except BenchError:
                log("  warning: predict tasks still queued or running 30 s after the load stopped")
            time.sleep(0.5)  # the API answers them (to closed sockets) right after

        load(endpoint, auth=key, connections=ML_CLIENTS, seconds=warm_s, body=body)
        drain()
        t0 = sql_one(env.database_url, "SELECT now()")
        cpu0 = {"worker": cpu_seconds(worker.pid), "api": cpu_seconds(api.pid)}
        ticks0 = machine_cpu_ticks()
        prof = Profiler(profile and rnd == 0, worker.pid, f"ml-worker-{side}", measure_s)
        try:
            res = load(endpoint, auth=key, connections=ML_CLIENTS, seconds=measure_s, body=body)
        finally:
            prof.stop()
        ticks1 = machine_cpu_ticks()
        cpu = {"worker": cpu_seconds(worker.pid) - cpu0["worker"], "api": cpu_seconds(api.pid) - cpu0["api"]}
        t1 = sql_one(env.database_url, "SELECT now()")
        drain()

        ok = res.requests - res.non_2xx
        predictions = ok * 1  # one row per request
        window = "created_at >= %s AND created_at < %s"
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            # Every response's batch_size is its task's result->>'batch_size': all tasks of the window.
            sizes = conn.execute(
                f"SELECT (result->>'batch_size')::int AS b, count(*) FROM tasks WHERE {window}"
                " AND status = 'succeeded' GROUP BY b ORDER BY b",
                (t0, t1),
            ).fetchall()
            statuses: dict[str, int] = dict(
                conn.execute(f"SELECT status, count(*) FROM tasks WHERE {window} GROUP BY status", (t0, t1)).fetchall()
            )
            timing = conn.execute(
                "SELECT avg(extract(epoch FROM started_at - created_at)) * 1000,"
                " avg(extract(epoch FROM finished_at - started_at)) * 1000"
                f" FROM tasks WHERE {window} AND status = 'succeeded'",
                (t0, t1),
            ).fetchone()
            calls = conn.execute(
                "SELECT avg(a.latency_ms), avg(a.compute_ms / greatest(a.predictions, 1)) FROM attempts a"
                " JOIN tasks t ON t.id = a.task_id WHERE t.created_at >= %s AND t.created_at < %s",
                (t0, t1),
            ).fetchone()
        assert timing is not None
        assert calls is not None
        hist = {int(b): int(n) for b, n in sizes if b is not None}
        answered = sum(hist.values())
        busy_s = (ticks1[0] - ticks0[0]) / os.sysconf("SC_CLK_TCK")
        result = {
            "side": side,
            "round": rnd,
            "provider_options": options,
            "load": asdict(res),
            "ok_responses": ok,
            "predictions_per_s": predictions / res.seconds,
            "worker_cpu_ms_per_prediction": 1000 * cpu["worker"] / max(1, predictions),
            "api_cpu_ms_per_prediction": 1000 * cpu["api"] / max(1, predictions),
            "worker_cpu_cores": cpu["worker"] / res.seconds,
            "api_cpu_cores": cpu["api"] / res.seconds,
            # Everything but the API and the worker: Postgres, Redis, the load tool, this runner.
            "other_cpu_cores": max(0.0, busy_s - cpu["worker"] - cpu["api"]) / res.seconds,
            "machine_busy_pct": 100.0 * (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1]),
            "cores": os.cpu_count(),
            "batch_size_histogram": hist,
            "batch_size_mean": sum(b * n for b, n in hist.items()) / answered if answered else 0.0,
            "batch_size_max": max(hist) if hist else None,
            "tasks_in_window": statuses,
            # created_at -> started_at: the API's insert and publish, the broker, the worker's pick-up and claim.
            "queue_wait_ms_mean": float(timing[0] or 0),
            "execution_ms_mean": float(timing[1] or 0),
            # attempts.latency_ms: the adapter call, including the wait for a batch to form and run.
            "provider_call_ms_mean": float(calls[0] or 0),
            # attempts.compute_ms: this prediction's share (by rows) of its session run's wall time.
            "session_wall_ms_per_prediction": float(calls[1] or 0),
        }
        log(
            f"  ml_batching round {rnd + 1} {side:12} {provider_options}: "
            f"{result['predictions_per_s']:5.0f} pred/s  p50 {res.latency_p50_ms:.0f} ms  "
            f"p99 {res.latency_p99_ms:.0f} ms  non-2xx {res.non_2xx}  errors {res.errors}  "
            f"batch mean {result['batch_size_mean']:.2f} (max {result['batch_size_max']})  "
            f"worker CPU {result['worker_cpu_ms_per_prediction']:.2f} ms/pred"
        )
        if options["max_batch_size"] == 1 and hist and max(hist) > 1:
            raise BenchError(f"the max_batch_size 1 worker reported batches of {max(hist)}")
        return result
    finally:
        env.close()


def _inference_layer(model_file: str, max_batch_size: int, warm_s: float, measure_s: float) -> dict[str, Any]:
    """64 threads calling `OnnxAdapter.predict` with one row each, in this process, with no stack around it."""
    from switchyard.core.config import ProviderConfig
    from switchyard.providers.onnx_adapter import OnnxAdapter

    name, rows = _reference(model_file)
    path = str(ROOT / "models" / f"{model_file}.onnx")
    adapter = OnnxAdapter(ProviderConfig(kind="onnx", max_batch_size=max_batch_size, max_batch_wait_ms=2))
    try:
        adapter.predict(path, {"inputs": {name: [rows[0]]}}, 10)  # make the session outside the timing

        def run(seconds: float) -> tuple[float, float, list[tuple[int, int, float]]]:
            per_thread: list[tuple[int, int, float]] = [(0, 0, 0.0)] * ML_CLIENTS
            failures: list[str] = []
            deadline = time.monotonic() + seconds

            def client(i: int) -> None:
                n = batch_rows = 0
                session_ms = 0.0
                request = {"inputs": {name: [rows[i % len(rows)]]}}
                try:
                    while time.monotonic() < deadline:
                        out = adapter.predict(path, request, 10)
                        n += 1
                        batch_rows += out.output["batch_size"]
                        session_ms += out.usage.compute_ms
                except Exception as exc:
                    failures.append(repr(exc))
                per_thread[i] = (n, batch_rows, session_ms)

            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(ML_CLIENTS)]
            cpu0, t0 = time.process_time(), time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 30)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            if any(t.is_alive() for t in threads) or failures:
                raise BenchError(f"in-process predict on {model_file}: {failures[:3] or 'threads did not stop'}")
            return elapsed, cpu, per_thread

        run(warm_s)
        elapsed, cpu, per_thread = run(measure_s)
    finally:
        adapter.close()
    n = sum(p[0] for p in per_thread)
    return {
        "model": model_file,
        "max_batch_size": max_batch_size,
        "predictions": n,
        "seconds": elapsed,
        "predictions_per_s": n / elapsed,
        # CPU of this whole process (all threads, ONNX Runtime's included) per prediction.
        "cpu_us_per_prediction": 1e6 * cpu / max(1, n),
        # Wall time inside session.run per prediction; unbatched runs overlap, so this exceeds elapsed / n.
        "session_wall_us_per_prediction": 1000 * sum(p[2] for p in per_thread) / max(1, n),
        "batch_size_mean": sum(p[1] for p in per_thread) / max(1, n),
    }


def bench_ml_batching(tmp: Path, quick: bool, profile: bool) -> dict[str, Any]:
    warm_s, measure_s, rounds = (2.0, 4.0, 1) if quick else (3.0, 10.0, 2)
    layer_warm_s, layer_s = (0.5, 2.0) if quick else (1.0, 5.0)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in ML_SIDES}
    # Alternate, baseline first, each run on a fresh stack: no side always runs on the warmer machine.
    for rnd in range(rounds):
        for side in ML_SIDES:
            runs[side].append(_ml_stack_run(tmp, side, rnd, warm_s, measure_s, profile))

    layer_runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        m: {"baseline": [], "batching": []} for m in ML_LAYER_MODELS
    }
    for rnd in range(rounds):
        for model_file in ML_LAYER_MODELS:
            for side in ("baseline", "batching"):
                size = ML_SIDES[side]["max_batch_size"]
                layer_runs[model_file][side].append(_inference_layer(model_file, size, layer_warm_s, layer_s))
            b, o = layer_runs[model_file]["baseline"][-1], layer_runs[model_file]["batching"][-1]
            log(
                f"  ml_batching in-process round {rnd + 1} {model_file:17}: batching {o['predictions_per_s']:6.0f}"
                f" pred/s (batch mean {o['batch_size_mean']:.1f}, CPU {o['cpu_us_per_prediction']:.0f} us/pred)"
                f" vs off {b['predictions_per_s']:6.0f} pred/s (CPU {b['cpu_us_per_prediction']:.0f} us/pred)"
                f" = {o['predictions_per_s'] / b['predictions_per_s']:.2f}x"
            )

    def avg(items: list[dict[str, Any]], key: str) -> float:
        return statistics.mean(float(r[key] or 0) for r in items)

    layer: dict[str, dict[str, Any]] = {}
    for model_file, sides in layer_runs.items():
        layer[model_file] = {
            side: {
                k: avg(items, k)
                for k in (
                    "predictions_per_s",
                    "cpu_us_per_prediction",
                    "session_wall_us_per_prediction",
                    "batch_size_mean",
                )  # fmt: skip
            }
            for side, items in sides.items()
        }
        layer[model_file]["ratio"] = (
            layer[model_file]["batching"]["predictions_per_s"] / layer[model_file]["baseline"]["predictions_per_s"]
        )

    summary: dict[str, dict[str, Any]] = {}
    for side, items in runs.items():
        summary[side] = {
            k: avg(items, k)
            for k in (
                "predictions_per_s",
                "batch_size_mean",
                "worker_cpu_ms_per_prediction",
                "api_cpu_ms_per_prediction",
                "session_wall_ms_per_prediction",
                "provider_call_ms_mean",
                "queue_wait_ms_mean",
                "execution_ms_mean",
                "worker_cpu_cores",
                "api_cpu_cores",
                "other_cpu_cores",
                "machine_busy_pct",
            )
        }
        summary[side].update(
            latency_p50_ms=statistics.mean(r["load"]["latency_p50_ms"] or 0 for r in items),
            latency_p99_ms=statistics.mean(r["load"]["latency_p99_ms"] or 0 for r in items),
            non_2xx=sum(r["load"]["non_2xx"] for r in items),
            socket_errors=sum(r["load"]["errors"] for r in items),
            batch_size_max=max(r["batch_size_max"] or 0 for r in items),
            batch_size_histogram={
                b: sum(r["batch_size_histogram"].get(b, 0) for r in items)
                for b in sorted({b for r in items for b in r["batch_size_histogram"]})
            },
            provider_options=ML_SIDES[side],
        )
    ours, base = summary["batching"]["predictions_per_s"], summary["baseline"]["predictions_per_s"]
    return {
        "ours": ours,
        "baseline": base,
        "unit": "pred/s",
        "ratio": ours / base,
        "target": 3.0,
        "target_kind": ">=",
        "model": ML_MODEL,
        "clients": ML_CLIENTS,
        "rows_per_request": 1,
        "warmup_s": warm_s,
        "measure_s": measure_s,
        "summary": summary,
        "unbatched_1t_ratio": summary["unbatched_1t"]["predictions_per_s"] / base,
        "batching_vs_unbatched_1t": ours / summary["unbatched_1t"]["predictions_per_s"],
        "rounds": runs,
        "inference_layer": {
            "threads": ML_CLIENTS,
            "warmup_s": layer_warm_s,
            "measure_s": layer_s,
            "models": layer,
            "rounds": layer_runs,
        },
    }


# --- 5. DAG ----------------------------------------------------------------------------------------------------

# Redis DBs of this benchmark: ours and the baseline's (broker and chord results). 11-15 are the others'.
DAG_REDIS_DB = 8
DAG_BASELINE_REDIS_DB = 6
DAG_CHAIN_STEPS = 10
DAG_FAN_WIDTH = 100
DAG_POLL_S = 0.02
DAG_PROVIDER_CONCURRENCY = 64
DAG_CONTROL_CONCURRENCY = 16
DAG_RUN_TIMEOUT_S = 120.0
# name -> (workflow name, steps per run); the fan-out counts its 100 items and the fan-in step.
DAG_SHAPES = {"chain": ("bench_chain", DAG_CHAIN_STEPS), "fanout": ("bench_fanout", DAG_FAN_WIDTH + 1)}
_CELERY_SUCCEEDED = re.compile(r"Task ([\w.]+)\[[^\]]+\] succeeded in ([\d.e-]+)s")


def _chat_step(step_id: str, content: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "chat",
        "model": "chat-default",
        "input": {"messages": [{"role": "user", "content": content}]},
        **extra,
    }


def _dag_definitions() -> dict[str, dict[str, Any]]:
    """The chain (each step renders the previous step's output) and the fan-out (for_each, no max_parallel, then
    a fan-in step over all the items' outputs)."""
    chain = [_chat_step("s0", "{{ input.text }}")]
    for i in range(1, DAG_CHAIN_STEPS):
        chain.append(_chat_step(f"s{i}", f"{{{{ steps.s{i - 1}.output.content }}}}", depends_on=[f"s{i - 1}"]))
    fanout = [
        _chat_step("fan", "item {{ item }}", for_each="{{ input.numbers }}"),
        _chat_step("join", "{{ steps.fan.output | length }} items", depends_on=["fan"]),
    ]
    return {
        "chain": {"name": DAG_SHAPES["chain"][0], "steps": chain},
        "fanout": {"name": DAG_SHAPES["fanout"][0], "steps": fanout},
    }


DAG_INPUTS: dict[str, dict[str, Any]] = {
    "chain": {"text": "hello bench"},
    # Not `items`/`values`/`keys`: Jinja would resolve those to the dict's methods.
    "fanout": {"numbers": list(range(DAG_FAN_WIDTH))},
}


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _dag_ours_once(client: Any, url: str, shape: str) -> dict[str, Any]:
    """POST a run, poll GET /v1/runs/{id} every 20 ms until it reads `succeeded`. Times in seconds since the
    POST was sent: to the run's own finished_at, and to the poll that saw it; plus the run's own created→finished."""
    name, steps = DAG_SHAPES[shape]
    t0 = time.time()
    resp = client.post(f"{url}/v1/workflows/{name}/runs", json={"input": DAG_INPUTS[shape]})
    t_post = time.time()
    if resp.status_code != 202:
        raise BenchError(f"POST /v1/workflows/{name}/runs answered {resp.status_code}: {resp.text[:500]}")
    run_id = resp.json()["id"]
    polls = 0
    while True:
        time.sleep(DAG_POLL_S)
        got = client.get(f"{url}/v1/runs/{run_id}")
        polls += 1
        if got.status_code != 200:
            raise BenchError(f"GET /v1/runs/{run_id} answered {got.status_code}: {got.text[:500]}")
        view = got.json()
        if view["status"] == "succeeded":
            t_seen = time.time()
            break
        if view["status"] in ("failed", "canceled"):
            raise BenchError(f"run {run_id} ({name}) {view['status']}: {view.get('error')}")
        if time.time() - t0 > DAG_RUN_TIMEOUT_S:
            raise BenchError(f"run {run_id} ({name}) still {view['status']} after {DAG_RUN_TIMEOUT_S:.0f}s")
    bad = {k: v["status"] for k, v in view["steps"].items() if v["status"] != "succeeded"}
    if bad or len(view["steps"]) != (steps if shape == "chain" else 2):
        raise BenchError(f"run {run_id} succeeded with steps {bad or list(view['steps'])}")
    if shape == "fanout" and len(view["steps"]["fan"]["output"]) != DAG_FAN_WIDTH:
        raise BenchError(f"run {run_id}: the fan-out step has {len(view['steps']['fan']['output'])} outputs")
    finished, created = _ts(view["finished_at"]), _ts(view["created_at"])
    return {
        "run_id": run_id,
        "submit_to_done_s": finished - t0,
        "polled_s": t_seen - t0,
        "run_created_to_finished_s": finished - created,
        "submit_s": t_post - t0,
        "polls": polls,
    }


def _dag_baseline_once(publisher: Any, client: redis.Redis, shape: str, token: str) -> dict[str, Any]:
    """apply_async a chain of 10 no-ops, or a chord of 100 no-ops and a join; poll the key the last task RPUSHes
    its time.time() to every 20 ms. Times in seconds since apply_async was called."""
    from celery import chain, chord

    from bench.baselines import DAG_DONE_KEY, DAG_ITEM_TASK, DAG_JOIN_TASK, DAG_STEP_TASK

    key = DAG_DONE_KEY.format(token=token)
    if shape == "chain":
        last = DAG_CHAIN_STEPS - 1
        sigs = [publisher.signature(DAG_STEP_TASK, args=(token, i, last), immutable=True) for i in range(last + 1)]
        canvas = chain(*sigs)
    else:
        header = [publisher.signature(DAG_ITEM_TASK, args=(i,)) for i in range(DAG_FAN_WIDTH)]
        canvas = chord(header, publisher.signature(DAG_JOIN_TASK, args=(token,)), app=publisher)
    t0 = time.time()
    result = canvas.apply_async()
    t_post = time.time()
    while True:
        time.sleep(DAG_POLL_S)
        if client.llen(key):
            t_seen = time.time()
            break
        if time.time() - t0 > DAG_RUN_TIMEOUT_S:
            raise BenchError(f"the baseline {shape} {token} did not finish in {DAG_RUN_TIMEOUT_S:.0f}s")
    record = client.lrange(key, 0, -1)
    # The client's result backend keeps every published result until it is read or forgotten (and unsubscribes
    # from its channel when it goes): forget them now, outside the timing, and not at interpreter exit.
    node: Any = result
    while node is not None:
        node.forget()
        node = node.parent
    if shape == "fanout" and int(record[1]) != DAG_FAN_WIDTH:
        raise BenchError(f"the baseline chord's join got {int(record[1])} results")
    return {"submit_to_done_s": float(record[0]) - t0, "polled_s": t_seen - t0, "submit_s": t_post - t0}


def _celery_durations(text: str) -> dict[str, list[float]]:
    """Task name -> the `succeeded in` seconds Celery logged for it (INFO)."""
    out: dict[str, list[float]] = {}
    for name, secs in _CELERY_SUCCEEDED.findall(text):
        out.setdefault(name, []).append(float(secs))
    return out


def _dag_breakdown(database_url: str, shape: str, run_ids: list[str]) -> dict[str, float]:
    """Where a run's time went, in ms (means over the runs), from the rows' own timestamps (all set by Python's
    clock in the API and the workers, so one clock)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        runs = {
            r[0]: (r[1].timestamp(), r[2].timestamp())
            for r in conn.execute("SELECT id, created_at, finished_at FROM runs WHERE id = ANY(%s)", (run_ids,))
        }
        rows = conn.execute(
            "SELECT t.run_id, t.step_id, t.created_at, t.started_at, t.finished_at, a.latency_ms FROM tasks t"
            " LEFT JOIN attempts a ON a.task_id = t.id WHERE t.run_id = ANY(%s) ORDER BY t.created_at",
            (run_ids,),
        ).fetchall()
    tasks: dict[str, list[tuple[str, float, float, float, float]]] = {}
    for run_id, step_id, created, started, finished, latency in rows:
        tasks.setdefault(run_id, []).append(
            (step_id, created.timestamp(), started.timestamp(), finished.timestamp(), float(latency or 0) / 1000)
        )
    parts: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        parts.setdefault(key, []).append(seconds * 1000)

    for run_id, (run_created, run_finished) in runs.items():
        mine = tasks[run_id]
        add("run_created_to_first_task_created", mine[0][1] - run_created)
        if shape == "chain":
            for i, (_, created, started, finished, latency) in enumerate(mine):
                add("task_created_to_claimed", started - created)
                add("task_claimed_to_finished", finished - started)
                add("provider_call", latency)
                if i + 1 < len(mine):
                    add("task_finished_to_next_task_created", mine[i + 1][1] - finished)
            add("last_task_finished_to_run_finished", run_finished - mine[-1][3])
        else:
            fan = [t for t in mine if t[0] == "fan"]
            join = next(t for t in mine if t[0] == "join")
            add("fan_tasks_created_spread", max(t[1] for t in fan) - min(t[1] for t in fan))
            add("first_fan_task_created_to_last_claimed", max(t[2] for t in fan) - min(t[1] for t in fan))
            add("first_fan_task_created_to_last_finished", max(t[3] for t in fan) - min(t[1] for t in fan))
            add("fan_task_claimed_to_finished", statistics.mean(t[3] - t[2] for t in fan))
            add("last_fan_task_finished_to_join_created", join[1] - max(t[3] for t in fan))
            add("join_created_to_finished", join[3] - join[1])
            add("join_finished_to_run_finished", run_finished - join[3])
    return {k: statistics.mean(v) for k, v in parts.items()}


def bench_dag(tmp: Path, quick: bool, profile: bool) -> dict[str, Any]:
    rounds, warm = (3, 1) if quick else (10, 2)
    import httpx
    from celery import Celery

    from bench.baselines import BASELINE_QUEUE, make_baseline_celery

    env = Env("dag", DAG_REDIS_DB, tmp / "dag")
    base_url = f"{REDIS_BASE}/{DAG_BASELINE_REDIS_DB}"
    base_redis = redis.Redis.from_url(base_url)
    base_redis.flushdb()
    publisher: Celery | None = None
    client: httpx.Client | None = None
    try:
        # Ours: API, fake at 0 ms, one provider worker (threads x64) and one control worker (threads x16).
        ours = Switchyard(env, fake_latency_ms=0)
        provider = ours.start_worker(DAG_PROVIDER_CONCURRENCY)
        control = env.start(
            "worker-control",
            cli("worker", "--queues", "control", "--pool", POOL, "--concurrency", str(DAG_CONTROL_CONCURRENCY),
                "--loglevel", "INFO"),
        )  # fmt: skip
        # Baseline: plain Celery, same pool and concurrency as our provider worker, broker and results in its DB.
        bworker = env.start(
            "baseline-worker",
            [sys.executable, "-m", "celery", "-A", "bench.baselines:dag_celery_app", "worker", "-Q", BASELINE_QUEUE,
             "-P", POOL, "-c", str(DAG_PROVIDER_CONCURRENCY), "-n", f"bench-dag-baseline-{os.getpid()}@%h",
             "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            {"BENCH_REDIS_URL": base_url},
        )  # fmt: skip
        for proc in (provider, control, bworker):
            wait_worker(proc)
        assert ours.api is not None
        client = httpx.Client(headers={"Authorization": f"Bearer {ours.key}"}, timeout=30)
        for shape, definition in _dag_definitions().items():
            got = client.post(f"{ours.url}/v1/workflows", json=definition)
            if got.status_code != 201:
                raise BenchError(f"registering {shape} answered {got.status_code}: {got.text[:1000]}")
        publisher = make_baseline_celery(base_url, result_backend=base_url)

        ours_procs = {"api": ours.api, "provider_worker": provider, "control_worker": control}
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {s: {"ours": [], "baseline": []} for s in DAG_SHAPES}
        cpu: dict[str, dict[str, dict[str, float]]] = {
            s: {"ours": dict.fromkeys(ours_procs, 0.0), "baseline": {"worker": 0.0}} for s in DAG_SHAPES
        }
        logs: dict[str, dict[str, dict[str, list[float]]]] = {s: {"ours": {}, "baseline": {}} for s in DAG_SHAPES}

        def measured(shape: str, side: str, once: Callable[[], dict[str, Any]], keep: bool) -> None:
            procs = ours_procs if side == "ours" else {"worker": bworker}
            log_from = {n: len(p.log()) for n, p in procs.items() if n != "api"}
            cpu0 = {n: cpu_seconds(p.pid) for n, p in procs.items()}
            sample = once()
            # The worker logs its last lines (and finishes its acks) just after the run reads done.
            time.sleep(0.2)
            if not keep:
                return
            samples[shape][side].append(sample)
            for n, p in procs.items():
                cpu[shape][side][n] += cpu_seconds(p.pid) - cpu0[n]
            for n, start in log_from.items():
                for task, secs in _celery_durations(procs[n].log()[start:]).items():
                    logs[shape][side].setdefault(task, []).extend(secs)

        # Alternate the sides (and the shapes) so that neither always runs on a warmer or busier machine.
        for rnd in range(warm + rounds):
            keep = rnd >= warm
            for shape in DAG_SHAPES:
                measured(shape, "ours", partial(_dag_ours_once, client, ours.url, shape), keep)
                once = partial(_dag_baseline_once, publisher, base_redis, shape, f"{shape}-{rnd}")
                measured(shape, "baseline", once, keep)
            if keep:
                line = []
                for shape, (_, steps) in DAG_SHAPES.items():
                    last_o, last_b = samples[shape]["ours"][-1], samples[shape]["baseline"][-1]
                    line.append(f"{shape} {1000 * last_o['submit_to_done_s'] / steps:.1f} vs "
                                f"{1000 * last_b['submit_to_done_s'] / steps:.2f} ms/step")  # fmt: skip
                log(f"  dag round {rnd - warm + 1}/{rounds}: " + "; ".join(line))
            else:
                log(f"  dag warm-up round {rnd + 1}/{warm} done")

        shapes: dict[str, dict[str, Any]] = {}
        for shape, (_, steps) in DAG_SHAPES.items():
            per_step: dict[str, dict[str, dict[str, float]]] = {}
            for side in ("ours", "baseline"):
                keys = ["submit_to_done_s", "polled_s", "submit_s"]
                if side == "ours":
                    keys.append("run_created_to_finished_s")
                per_step[side] = {}
                for k in keys:
                    ms = [1000 * x[k] / steps for x in samples[shape][side]]
                    per_step[side][k.removesuffix("_s")] = {
                        "median": statistics.median(ms), "mean": statistics.mean(ms), "min": min(ms), "max": max(ms)
                    }  # fmt: skip
            o = per_step["ours"]["submit_to_done"]["median"]
            b = per_step["baseline"]["submit_to_done"]["median"]
            n_runs = len(samples[shape]["ours"])
            shapes[shape] = {
                "ours": o,
                "baseline": b,
                "unit": "ms/step",
                "ratio": o / b,
                "target": 1.5,
                "target_kind": "<=",
                "steps": steps,
                "runs": n_runs,
                "per_step_ms": per_step,
                "ratio_polled": per_step["ours"]["polled"]["median"] / per_step["baseline"]["polled"]["median"],
                # Supporting: the baseline timed from apply_async's return (the client's publishing left out).
                "ratio_vs_baseline_after_submit": o
                / statistics.median(
                    1000 * (x["submit_to_done_s"] - x["submit_s"]) / steps for x in samples[shape]["baseline"]
                ),
                "cpu_ms_per_step": {
                    side: {n: 1000 * v / (n_runs * steps) for n, v in cpu[shape][side].items()}
                    for side in ("ours", "baseline")
                },
                "celery_task_ms": {
                    side: {
                        task: {"count_per_run": len(v) / n_runs, "mean_ms": 1000 * statistics.mean(v)}
                        for task, v in logs[shape][side].items()
                    }
                    for side in ("ours", "baseline")
                },
                "breakdown_ms": _dag_breakdown(env.database_url, shape, [x["run_id"] for x in samples[shape]["ours"]]),
                "samples": samples[shape],
            }
        chain_res, fan_res = shapes["chain"], shapes["fanout"]
        return {
            **{k: chain_res[k] for k in ("ours", "baseline", "unit", "ratio", "target", "target_kind")},
            "fanout": {k: fan_res[k] for k in ("ours", "baseline", "unit", "ratio", "target", "target_kind")},
            "measure": "median over runs of (last step done - submit) / steps; submit = just before the POST "
            "(ours) or apply_async (baseline); done = the run's finished_at (ours), the last task's time.time() "
            "(baseline)",
            "rounds": rounds,
            "warmup_rounds": warm,
            "poll_s": DAG_POLL_S,
            "concurrency": {
                "provider": DAG_PROVIDER_CONCURRENCY,
                "control": DAG_CONTROL_CONCURRENCY,
                "baseline": DAG_PROVIDER_CONCURRENCY,
            },  # fmt: skip
            "pool": POOL,
            "shapes": shapes,
        }
    finally:
        if client is not None:
            client.close()
        if publisher is not None:
            publisher.close()
        try:
            env.close()
        finally:
            base_redis.flushdb()
            base_redis.close()


# --- 6. WebSocket fan-out --------------------------------------------------------------------------------------

# Redis DB of this benchmark (pub/sub channels are server-wide whatever the DB: every channel name here is
# this run's own). 6-15 are the other benchmarks' and the tests'.
WS_REDIS_DB = 7
# Listener processes, for ours and for the baselines alike; with 2 cores there is no room for more.
WS_LISTENER_PROCS = 2
WS_EVENTS_PER_TASK = 3  # task.queued, task.started, task.succeeded
WS_PROVIDER_CONCURRENCY = 64
WS_WARMUP_TASKS = 10
# After the last expected event was numbered: how long a listener may go without a message before the
# missing ones count as lost, and the longest a collection may take.
WS_QUIET_S = 10.0
WS_DEADLINE_S = 300.0


# phase -> (tasks/s, seconds of submitting), in the order they run, each on fresh listeners.
# `headline`: a modest steady rate for 1,000 listeners on this 2-core machine: 3 events/s, ~3,000 deliveries/s
# offered, about a third of what our API delivers when saturated (~9,400/s measured; 2 tasks/s, ~6,000/s, already
# queues). `overload` (supporting): the rate first asked for, 20 tasks/s = 60 events/s = ~60,000 deliveries/s
# offered, which neither our API nor the bare Redis fan-out's Python subscribers keep up with on 2 cores: its
# latencies are mostly backlog, the figure to read there is deliveries/s (the capacity).
WS_PHASES: dict[str, tuple[float, float]] = {"headline": (1.0, 20.0), "overload": (20.0, 10.0)}


def _ws_plan(quick: bool) -> tuple[int, dict[str, tuple[float, float]]]:
    """(listeners, phases)."""
    if quick:
        return 100, {"headline": (1.0, 5.0), "overload": (20.0, 3.0)}
    return 1000, WS_PHASES


def _start_listeners(
    env: Env, name: str, mode_args: list[str], listeners: int, procs: int
) -> list[tuple[Process, Path]]:
    """`procs` load-generator processes sharing `listeners` between them; wait until each has subscribed all."""
    group: list[tuple[Process, Path]] = []
    for i in range(procs):
        count = listeners // procs + (1 if i < listeners % procs else 0)
        out = env.tmp / f"{name}-{i}"
        argv = [
            sys.executable,
            "-m",
            "bench.fanout_listeners",
            *mode_args,
            "--listeners",
            str(count),
            "--out",
            str(out),
        ]
        group.append((env.start(f"{name}-{i}", argv), out))
    for proc, _ in group:
        wait_log(proc, "READY", timeout=180, interval=0.1)
    return group


def _ready(group: list[tuple[Process, Path]]) -> list[dict[str, Any]]:
    return [json.loads(out.with_name(out.name + ".ready.json").read_text()) for _, out in group]


def _collect(group: list[tuple[Process, Path]], expected: list[int], *, keep_times: bool = False) -> dict[str, Any]:
    """Tell the listeners which ids they should all have, wait for their reports, merge them. With keep_times,
    also the time (epoch s) each event first arrived, in id order."""
    for _, out in group:
        tmp_stop = out.with_name(out.name + ".stop.tmp")
        tmp_stop.write_text(json.dumps({"expected": expected, "quiet_s": WS_QUIET_S, "deadline_s": WS_DEADLINE_S}))
        tmp_stop.rename(out.with_name(out.name + ".stop"))
    for proc, out in group:

        def reported(proc: Process = proc, out: Path = out) -> bool:
            if out.with_name(out.name + ".json").exists():
                return True
            if not proc.alive():
                raise BenchError(f"{proc.name} exited before reporting:\n{proc.log()[-3000:]}")
            return False

        wait_until(reported, timeout=WS_DEADLINE_S + 60, interval=0.1, what=f"{proc.name}'s report")
    parts = [json.loads(out.with_name(out.name + ".json").read_text()) for _, out in group]

    def read(path: Path) -> array[float]:
        values: array[float] = array("d")
        with path.open("rb") as f:
            values.frombytes(f.read())
        return values

    lat: list[float] = sorted(x for _, out in group for x in read(out.with_name(out.name + ".lat")))
    kinds = sorted({k for p in parts for k in p["by_type"]})
    by_type: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        values = sorted(x for _, out in group for x in read(out.with_name(f"{out.name}.lat.{kind}")))
        by_type[kind] = {"n": len(values), **_ms_percentiles(values)}
    # Per event: the first and the last listener to get it, over all processes.
    spans: dict[str, list[float]] = {}
    for p in parts:
        for seq, (origin, first, last) in p["events"].items():
            have = spans.get(seq)
            spans[seq] = [origin, first, last] if have is None else [origin, min(have[1], first), max(have[2], last)]
    first_ms = sorted(1000 * (s[1] - s[0]) for s in spans.values())
    last_ms = sorted(1000 * (s[2] - s[0]) for s in spans.values())
    spread_ms = sorted(1000 * (s[2] - s[1]) for s in spans.values())
    first_receive = min((p["first_receive"] for p in parts if p["first_receive"]), default=0.0)
    last_receive = max((p["last_receive"] for p in parts), default=0.0)
    window = last_receive - first_receive
    totals = {k: sum(p["totals"][k] for p in parts) for k in parts[0]["totals"]}
    frames = sum(p["frames"] for p in parts)
    return {
        "listeners": sum(p["listeners"] for p in parts),
        "subscribed": sum(p["subscribed"] for p in parts),
        "processes": len(parts),
        "open_s": max(p["open_s"] for p in parts),
        "failure_counts": {k: sum(p["failure_counts"][k] for p in parts) for k in parts[0]["failure_counts"]},
        "failures_sample": [f for p in parts for v in p["failures"].values() for f in v][:10],
        "extensions": sorted({e for p in parts for e in p["extensions"]}),
        "expected_per_listener": max(p["expected_per_listener"] for p in parts),
        "deliveries": len(lat),
        "deliveries_per_s": len(lat) / window if window > 0 else None,
        "receive_window_s": window,
        "mean_frame_bytes": sum(p["mean_frame_chars"] * p["frames"] for p in parts) / frames if frames else 0.0,
        **_ms_percentiles(lat),
        "by_type": by_type,
        "per_event": {
            "events": len(spans),
            "first_listener": _ms_percentiles(first_ms, already_ms=True),
            "last_listener": _ms_percentiles(last_ms, already_ms=True),
            "spread": _ms_percentiles(spread_ms, already_ms=True),
        },
        "check": {
            **totals,
            "listeners_with_problems": sum(p["listeners_with_problems"] for p in parts),
            "closed_by_server": sum(p["closed_by_server"] for p in parts),
            "close_reasons": sorted({r for p in parts for r in p["close_reasons"]}),
            "problem_listeners_sample": [x for p in parts for x in p["problem_listeners_sample"]][:10],
        },
        "listener_cpu_s": sum(p["cpu_s_while_receiving"] for p in parts),
        **({"first_receive_by_event": [spans[k][1] for k in sorted(spans, key=int)]} if keep_times else {}),
    }


def _ms_percentiles(values: list[float], *, already_ms: bool = False) -> dict[str, float | None]:
    """p50, p99 and max of sorted `values` (seconds, unless already_ms), in ms."""
    scale = 1.0 if already_ms else 1000.0

    def at(p: float) -> float | None:
        return scale * values[min(len(values) - 1, int(p * len(values)))] if values else None

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": scale * values[-1] if values else None}


async def _submit_paced(url: str, key: str, rate: float, n: int) -> dict[str, Any]:
    """n POST /v1/tasks, the i-th sent at t0 + i/rate whatever the earlier ones are doing (open loop)."""
    import httpx

    statuses: dict[str, int] = {}
    latencies: list[float] = []
    lag: list[float] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits) as client:
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            start = time.perf_counter()
            lag.append(start - (t0 + i / rate))
            try:
                resp = await client.post("/v1/tasks", content=CHAT_BODY)
                status = str(resp.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(one(i) for i in range(n)))
        seconds = time.perf_counter() - t0
    latencies.sort()
    return {
        "tasks": n,
        "rate_asked": rate,
        "seconds": seconds,
        "statuses": statuses,
        "post_latency": _ms_percentiles(latencies),
        "max_send_lag_ms": 1000 * max(lag) if lag else None,
    }


def _publish_paced(client: redis.Redis, channel: str, offsets: list[float], size: int) -> dict[str, Any]:
    """The baseline's publisher: one message of `size` bytes per offset, the i-th at t0 + offsets[i], each
    carrying its seq and time.time() just before PUBLISH; returns how many subscribers Redis said got each."""
    n = len(offsets)
    empty = len(orjson.dumps({"seq": n, "t": time.time(), "pad": ""}))
    pad = "x" * max(0, size - empty)
    receivers: list[int] = []
    t0 = time.perf_counter()
    # Numbered from 1, as event ids are: a listener gets the ids above its position (0 here).
    for i, offset in enumerate(offsets):
        wait = t0 + offset - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        message = orjson.dumps({"seq": i + 1, "t": time.time(), "pad": pad})
        receivers.append(int(client.publish(channel, message)))
    seconds = time.perf_counter() - t0
    return {
        "messages": n,
        "seconds": seconds,
        "rate": n / seconds if seconds > 0 else 0.0,
        "payload_bytes": len(orjson.dumps({"seq": n, "t": time.time(), "pad": pad})),
        "receivers_min": min(receivers, default=0),
        "receivers_max": max(receivers, default=0),
    }


def _publish_schedule(phase: dict[str, Any]) -> tuple[list[float], str]:
    """When the baseline publishes, relative to its start: when the relay published our events (as the relay
    probe saw them: bursts of a task's three events included), or evenly at our event rate if the probe missed
    any."""
    times: list[float] = phase["relay_probe"].get("first_receive_by_event", [])
    if len(times) == phase["events"] and times:
        return [t - times[0] for t in times], "the relay's publish times replayed"
    return [i / phase["event_rate"] for i in range(phase["events"])], "evenly at our event rate"


def _wait_events_numbered(database_url: str, tenant_id: str, after: int, want: int, timeout: float) -> list[int]:
    """The tenant's event ids after `after`, once `want` of them are numbered and none waits for a number."""
    query = (
        "SELECT count(*) FILTER (WHERE seq > %s), count(*) FILTER (WHERE seq IS NULL) FROM events WHERE tenant_id = %s"
    )

    def numbered() -> bool:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute(query, (after, tenant_id)).fetchone()
        assert row is not None
        return bool(row[0] >= want and row[1] == 0)

    wait_until(numbered, timeout=timeout, interval=0.1, what=f"{want} numbered events")
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT seq FROM events WHERE tenant_id = %s AND seq > %s ORDER BY seq", (tenant_id, after)
        ).fetchall()
    return [int(r[0]) for r in rows]


def _ws_baseline(
    env: Env, name: str, listeners: int, procs: int, offsets: list[float], schedule: str, size: int
) -> dict[str, Any]:
    """Bare Redis pub/sub of the same shape: `listeners` redis-py asyncio subscribers in `procs` processes,
    one publisher sending a message of `size` bytes at each offset; stops its processes when done."""
    channel = f"bench:ws_fanout:{secrets.token_hex(6)}:{name}"
    group = _start_listeners(
        env, name, ["redis", "--redis-url", env.redis_url, "--channel", channel, "--format", "bench"], listeners, procs
    )
    try:
        ready = _ready(group)
        ticks0 = machine_cpu_ticks()
        published = _publish_paced(env.redis, channel, offsets, size)
        published["schedule"] = schedule
        res = _collect(group, list(range(1, len(offsets) + 1)))
        ticks1 = machine_cpu_ticks()
        res["machine_busy_pct"] = 100.0 * (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1])
        res["publisher"] = published
        res["ready"] = ready
        log(
            f"  ws_fanout baseline {name}: {res['subscribed']} subscribers, {res['deliveries']} deliveries, "
            f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, missing {res['check']['missing']}, "
            f"duplicates {res['check']['duplicates']}"
        )
        return res
    finally:
        for proc, _ in group:
            proc.stop()


def _ws_ours_phase(
    env: Env,
    ours: Switchyard,
    procs: dict[str, Process],
    tenant_id: str,
    phase: str,
    listeners: int,
    rate: float,
    submit_s: float,
    after: int,
    profile: bool,
) -> dict[str, Any]:
    """One phase on our stack: fresh listeners (and the relay probe), n tasks POSTed at `rate`, every listener's
    report; the listener processes are stopped at the end."""
    from switchyard.events.bus import tenant_channel

    n_tasks = round(rate * submit_s)
    groups: list[list[tuple[Process, Path]]] = []
    try:
        # One plain Redis subscriber on the tenant's channel: when the relay published each event.
        probe = _start_listeners(
            env, f"{phase}-relay-probe",
            ["redis", "--redis-url", env.redis_url, "--channel", tenant_channel(tenant_id), "--format", "relay"], 1, 1,
        )  # fmt: skip
        groups.append(probe)
        ws_url = ours.url.replace("http://", "ws://") + "/v1/ws"
        t_open = time.monotonic()
        group = _start_listeners(
            env, f"{phase}-ws", ["ws", "--url", ws_url, "--key", ours.key], listeners, WS_LISTENER_PROCS
        )
        groups.append(group)
        open_s = time.monotonic() - t_open
        ready = _ready(group)
        subscribed = sum(r["subscribed"] for r in ready)
        log(f"  ws_fanout {phase}: {subscribed}/{listeners} WebSocket listeners subscribed in {open_s:.1f}s "
            f"({WS_LISTENER_PROCS} processes); submitting {n_tasks} chat tasks at {rate:g}/s")  # fmt: skip
        if subscribed == 0:
            raise BenchError(f"no WebSocket listener could subscribe: {ready}")
        time.sleep(1.0)  # let the handshake burst settle

        cpu0 = {k: cpu_seconds(p.pid) for k, p in procs.items()}
        ticks0, wall0 = machine_cpu_ticks(), time.monotonic()
        prof = Profiler(profile, procs["api"].pid, f"ws-fanout-api-{phase}", submit_s + 30)
        try:
            submit = asyncio.run(_submit_paced(ours.url, ours.key, rate, n_tasks))
            expected = _wait_events_numbered(
                env.database_url, tenant_id, after, WS_EVENTS_PER_TASK * n_tasks, timeout=120
            )
            res = _collect(group, expected)
            relay = _collect(probe, expected, keep_times=True)
        finally:
            prof.stop()
        ticks1, wall = machine_cpu_ticks(), time.monotonic() - wall0
    finally:
        for g in groups:
            for proc, _ in g:
                proc.stop()
    cpu = {k: cpu_seconds(p.pid) - cpu0[k] for k, p in procs.items()}
    # The listener processes exit once they have reported: their own count (from READY to the report).
    cpu["listeners"] = res["listener_cpu_s"]
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        statuses: dict[str, int] = dict(conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
    log(
        f"  ws_fanout {phase} ours: {res['deliveries']} deliveries, p50 {res['p50_ms']:.1f} ms, p99 "
        f"{res['p99_ms']:.1f} ms, {res['deliveries_per_s'] or 0:.0f}/s; missing {res['check']['missing']}, "
        f"duplicates {res['check']['duplicates']}, closed by server {res['check']['closed_by_server']}; relay "
        f"probe p50 {relay['p50_ms']:.1f} ms"
    )
    return {
        "listeners": listeners,
        "tasks": n_tasks,
        "task_rate": rate,
        "events": len(expected),
        "event_rate": len(expected) / submit["seconds"],
        "last_seq": max(expected),
        "open_s": open_s,
        "submit": submit,
        "task_statuses": statuses,
        "ours_detail": res,
        "relay_probe": relay,
        "measured_s": wall,
        "cpu_s": cpu,
        "cpu_cores": {k: v / wall for k, v in cpu.items()},
        "api_cpu_us_per_delivery": 1e6 * cpu["api"] / max(1, res["deliveries"]),
        "machine_busy_pct": 100.0 * (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1]),
    }


def _ws_compare(phase: dict[str, Any], single: dict[str, Any], fanout: dict[str, Any]) -> None:
    """Add the baselines, the ratios and the breakdown to a phase's figures."""
    res, relay, n = phase["ours_detail"], phase["relay_probe"], phase["listeners"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    phase["baseline_single"], phase["baseline_fanout"] = single, fanout
    phase["ratios"] = {
        f"vs_{n}_subscribers": {p: ratio(res[f"{p}_ms"], fanout[f"{p}_ms"]) for p in ("p50", "p99")},
        "vs_1_subscriber": {p: ratio(res[f"{p}_ms"], single[f"{p}_ms"]) for p in ("p50", "p99")},
    }
    phase["breakdown_ms"] = {
        "created_to_relay_published_p50": relay["p50_ms"],
        "created_to_relay_published_p99": relay["p99_ms"],
        "relay_published_to_listener_p50": (res["p50_ms"] or 0) - (relay["p50_ms"] or 0),
        "relay_published_to_listener_p99": (res["p99_ms"] or 0) - (relay["p99_ms"] or 0),
        "first_listener_p50": res["per_event"]["first_listener"]["p50_ms"],
        "last_listener_p50": res["per_event"]["last_listener"]["p50_ms"],
        "fanout_spread_p50": res["per_event"]["spread"]["p50_ms"],
        "fanout_spread_p99": res["per_event"]["spread"]["p99_ms"],
    }


def _redis_parser() -> str:
    """Which RESP parser redis-py uses in the baseline's subscribers: hiredis (C) when installed."""
    from importlib.util import find_spec

    return "hiredis" if find_spec("hiredis") else "redis-py's pure-Python one (hiredis is not installed)"


def bench_ws_fanout(tmp: Path, quick: bool, profile: bool) -> dict[str, Any]:
    listeners, phases = _ws_plan(quick)
    env = Env("ws_fanout", WS_REDIS_DB, tmp / "ws_fanout")
    try:
        # Room for every listener (the default limit is 1,000 per tenant, across API processes), and for the
        # previous phase's connections while the API is still closing them.
        env.env["SWITCHYARD_WS_MAX_CONNECTIONS_PER_TENANT"] = str(max(4 * listeners, 1000))
        ours = Switchyard(env, fake_latency_ms=0)
        assert ours.api is not None
        assert ours.fake is not None
        provider = ours.start_worker(WS_PROVIDER_CONCURRENCY)
        # The control worker runs the event relay (numbering, then publishing on Redis).
        control = env.start("worker-control", cli("worker", "--queues", "control,webhooks", "--loglevel", "INFO"))
        for proc in (provider, control):
            wait_worker(proc)
        wait_log(control, "event_relay_leading", timeout=60)
        tenant_id = str(sql_one(env.database_url, "SELECT id FROM tenants WHERE name = 'bench'"))

        # Warm the path (API, workers, relay) before anyone listens; the listeners then start after its events.
        import httpx

        with httpx.Client(headers={"Authorization": f"Bearer {ours.key}"}, timeout=30) as client:
            for _ in range(WS_WARMUP_TASKS):
                got = client.post(
                    f"{ours.url}/v1/tasks", content=CHAT_BODY, headers={"Content-Type": "application/json"}
                )
                if got.status_code != 202:
                    raise BenchError(f"POST /v1/tasks answered {got.status_code}: {got.text[:500]}")
        warm = _wait_events_numbered(env.database_url, tenant_id, 0, WS_EVENTS_PER_TASK * WS_WARMUP_TASKS, 60)

        procs = {"api": ours.api, "control_worker": control, "provider_worker": provider, "fake": ours.fake}
        results: dict[str, dict[str, Any]] = {}
        after = max(warm)
        for phase, (rate, submit_s) in phases.items():
            results[phase] = _ws_ours_phase(
                env, ours, procs, tenant_id, phase, listeners, rate, submit_s, after, profile
            )
            after = results[phase]["last_seq"]
            time.sleep(2.0)  # the API closes the phase's connections and releases their slots
        api_log = ours.api.log()
        for proc in (ours.api, provider, control, ours.fake):
            proc.stop()

        # The baselines, with our stack stopped: per phase, as many messages as our events, published when the
        # relay published them (so at the same rate, in the same bursts), as large as our average frame, to one
        # subscriber and then to as many as our listeners.
        for phase, res in results.items():
            offsets, schedule = _publish_schedule(res)
            size = round(res["ours_detail"]["mean_frame_bytes"])
            single = _ws_baseline(env, f"{phase}-redis-1", 1, 1, offsets, schedule, size)
            fanout = _ws_baseline(
                env, f"{phase}-redis-{listeners}", listeners, WS_LISTENER_PROCS, offsets, schedule, size
            )
            _ws_compare(res, single, fanout)

        head = results["headline"]
        versus = head["ratios"][f"vs_{listeners}_subscribers"]
        return {
            "ours": head["ours_detail"]["p50_ms"],
            "baseline": head["baseline_fanout"]["p50_ms"],
            "unit": "ms p50",
            "ratio": versus["p50"],
            "target": None,
            "target_kind": "none: report it",
            "p99": {
                "ours": head["ours_detail"]["p99_ms"],
                "baseline": head["baseline_fanout"]["p99_ms"],
                "ratio": versus["p99"],
            },  # fmt: skip
            "measure": "per (listener, event) delivery: receive time at the listener (time.time() after the client "
            "library parsed the frame) - the event's created_at (ours) or the publisher's time.time() before "
            "PUBLISH (baselines); one machine clock",
            "listeners": listeners,
            "listener_processes": WS_LISTENER_PROCS,
            "phases": results,
            "cores": os.cpu_count(),
            "redis_parser": _redis_parser(),
            "api_log_warnings": [ln for ln in api_log.splitlines() if re.search(r"(?i)warn|error|exception", ln)][:20],
        }
    finally:
        env.close()


# --- the run ---------------------------------------------------------------------------------------------------

BENCHMARKS: dict[str, Callable[[Path, bool, bool], dict[str, Any]]] = {
    "enqueue": bench_enqueue,
    "end_to_end": bench_end_to_end,
    "in_flight": bench_in_flight,
    "ml_batching": bench_ml_batching,
    "dag": bench_dag,
    "ws_fanout": bench_ws_fanout,
    "sync_overhead": bench_sync_overhead,
}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/meminfo") as f:
            info["ram_gb"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            for name in ("synchronous_commit", "fsync", "shared_buffers", "max_connections"):
                info[f"pg_{name}"] = conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
    except psycopg.Error as exc:
        info["postgres"] = f"unreachable: {exc}"
    try:
        client = redis.Redis.from_url(REDIS_BASE)
        info["redis"] = client.info("server")["redis_version"]
        client.close()
    except redis.RedisError as exc:
        info["redis"] = f"unreachable: {exc}"
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout + ""
        info["wrk"] = out.split("[")[0].strip() or "present"
    from importlib.metadata import version

    info["git"] = git_state()
    info["packages"] = {p: version(p) for p in ("celery", "kombu", "fastapi", "uvicorn", "sqlalchemy", "psycopg")}
    return info


def git_state() -> dict[str, Any]:
    """The product code measured: HEAD plus a digest of uncommitted changes under switchyard/."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        diff = subprocess.run(["git", "diff", "HEAD", "--", "switchyard"], cwd=ROOT, capture_output=True, text=True)
        files = subprocess.run(
            ["git", "diff", "HEAD", "--name-only", "--", "switchyard"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return {}
    return {
        "head": rev.stdout.strip(),
        "uncommitted_product_files": files.stdout.split(),
        "uncommitted_diff_sha1": hashlib.sha1(diff.stdout.encode()).hexdigest()[:12] if diff.stdout else None,
    }


def verdict(res: dict[str, Any]) -> str:
    ok = res["ratio"] >= res["target"] if res["target_kind"] == ">=" else res["ratio"] <= res["target"]
    return "met" if ok else "NOT met"


def print_table(results: dict[str, dict[str, Any]]) -> None:
    rows: list[tuple[str, ...]] = []
    for name, res in results.items():
        if "error" in res:
            rows.append((name, "ERROR: " + res["error"].splitlines()[0][:100]))
            continue
        if name == "dag":
            for shape, label in (("chain", "dag chain, 10 steps"), ("fanout", "dag fan-out, 100 + join")):
                sh = res["shapes"][shape]
                rows.append((label, f"{sh['ours']:.1f} ms/step", f"{sh['baseline']:.2f} ms/step",
                             f"{sh['ratio']:.2f}x", f"<={sh['target']:.1f}x", verdict(sh)))  # fmt: skip
            continue
        if name == "ws_fanout":
            rows.extend(_ws_fanout_rows(res))
            continue
        unit = res["unit"]
        base = f"{res['baseline']:.0f} {unit}" + (" (ideal)" if name == "in_flight" else "")
        rows.append((name, f"{res['ours']:.0f} {unit}", base, f"{res['ratio']:.2f}x",
                     f"{res['target_kind']}{res['target']:.1f}x", verdict(res)))  # fmt: skip
        if name == "ml_batching":
            # Supporting rows, without a target: unbatched without intra-op spinning, and no stack around it.
            one = res["summary"]["unbatched_1t"]["predictions_per_s"]
            rows.append(("  stack, unbatched, 1 intra-op thread", f"{one:.0f} pred/s", base,
                         f"{res['unbatched_1t_ratio']:.2f}x", "-", "supporting, no target"))  # fmt: skip
            for model, layer in res["inference_layer"]["models"].items():
                rows.append((f"  in-process {model}", f"{layer['batching']['predictions_per_s']:.0f} pred/s",
                             f"{layer['baseline']['predictions_per_s']:.0f} pred/s", f"{layer['ratio']:.2f}x",
                             "-", "supporting, no target"))  # fmt: skip
    width = max([len("benchmark")] + [len(r[0]) for r in rows])
    print()
    header = f"{'benchmark':<{width}} {'ours':>16} {'baseline':>24} {'ratio':>7} {'target':>8}  verdict"
    print(header)
    print("-" * len(header))
    for row in rows:
        if len(row) == 2:
            print(f"{row[0]:<{width}} {row[1]}")
        else:
            print(f"{row[0]:<{width}} {row[1]:>16} {row[2]:>24} {row[3]:>7} {row[4]:>8}  {row[5]}")
    print()
    enq = results.get("enqueue")
    if enq and "error" not in enq:
        c, cpu = enq["check"], enq["server_cpu_ms_per_request"]
        print(
            f"enqueue:    server CPU {cpu['ours']:.2f} ms/request (ours) vs {cpu['baseline']:.2f} (baseline); "
            f"{c['task_rows']} task rows, {c['provider_queue_messages']} messages in Redis "
            f"({'every row published' if c['every_row_published'] else 'MISMATCH'})"
        )
    e2e = results.get("end_to_end")
    if e2e and "error" not in e2e:
        cpu = e2e["worker_cpu_ms_per_task"]
        print(
            f"end_to_end: worker CPU {cpu['ours']:.2f} ms/task (ours) vs {cpu['baseline']:.2f} (baseline); "
            f"timed from worker 'ready.': ours {e2e['ours_from_ready']['rate']:.0f}/s, "
            f"baseline {e2e['baseline_from_ready']['rate']:.0f}/s = {e2e['ratio_from_ready']:.2f}x"
        )
    inf = results.get("in_flight")
    if inf and "error" not in inf:
        per = inf["rss_growth_per_in_flight_mb"]
        rss = inf["rss_mb"]
        print(
            f"in_flight:  peak {inf['peak_in_flight']} running at once (target >= {inf['in_flight_target']}); "
            f"provider call {inf['provider_call_ms']['p50']:.0f} ms p50 for a {inf['latency_ms']} ms fake "
            f"(~{inf['effective_in_flight_at_provider']:.0f} calls really outstanding at the fake); "
            f"worker CPU {inf['worker_cpu_ms_per_task']:.2f} ms/task"
        )
        if per is not None:
            print(
                f"            worker RSS {rss['ready']:.0f} MB at ready -> {rss['peak']:.0f} MB peak: "
                f"{per:.3f} MB per in-flight call (target <= {inf['rss_target_mb']} MB)"
            )
    ml = results.get("ml_batching")
    if ml and "error" not in ml:
        print(
            f"ml_batching: {ml['clients']} clients, POST /v1/predict/{ml['model']} with 1 row, "
            f"{ml['measure_s']:.0f} s x {len(ml['rounds']['batching'])} round(s) per side, fresh stack each"
        )
        for side, sm in ml["summary"].items():
            options = ", ".join(f"{k} {v}" for k, v in sm["provider_options"].items() if k != "max_batch_wait_ms")
            print(
                f"  {side:12} ({options}): p50 {sm['latency_p50_ms']:.0f} ms, p99 {sm['latency_p99_ms']:.0f} ms, "
                f"non-2xx {sm['non_2xx']}, socket errors {sm['socket_errors']}; batch_size mean "
                f"{sm['batch_size_mean']:.2f}, max {sm['batch_size_max']}"
            )
            print(
                f"    per prediction: worker CPU {sm['worker_cpu_ms_per_prediction']:.2f} ms, API CPU "
                f"{sm['api_cpu_ms_per_prediction']:.2f} ms, session wall {sm['session_wall_ms_per_prediction']:.3f} ms,"
                f" adapter call {sm['provider_call_ms_mean']:.2f} ms, "
                f"created->started {sm['queue_wait_ms_mean']:.0f} ms"
            )
            print(
                f"    cores: worker {sm['worker_cpu_cores']:.2f}, API {sm['api_cpu_cores']:.2f}, rest "
                f"{sm['other_cpu_cores']:.2f} (machine {sm['machine_busy_pct']:.0f}% busy)"
            )
        for model, layer in ml["inference_layer"]["models"].items():
            b, o = layer["baseline"], layer["batching"]
            print(
                f"  in-process {model}: CPU {o['cpu_us_per_prediction']:.0f} us/pred batched (mean batch "
                f"{o['batch_size_mean']:.1f}) vs {b['cpu_us_per_prediction']:.0f} us/pred unbatched; session wall "
                f"{o['session_wall_us_per_prediction']:.1f} vs {b['session_wall_us_per_prediction']:.0f} us/pred"
            )

    dag = results.get("dag")
    if dag and "error" not in dag:
        print(
            f"dag: {dag['rounds']} runs per shape and side (after {dag['warmup_rounds']} warm-up rounds), medians; "
            f"submit -> last step done, per step; polls every {1000 * dag['poll_s']:.0f} ms"
        )
        for shape, sh in dag["shapes"].items():
            o, b = sh["per_step_ms"]["ours"], sh["per_step_ms"]["baseline"]
            cpu_o, cpu_b = sh["cpu_ms_per_step"]["ours"], sh["cpu_ms_per_step"]["baseline"]
            print(
                f"  {shape:6}: ours {o['submit_to_done']['median']:.1f} ms/step (run created->finished "
                f"{o['run_created_to_finished']['median']:.1f}, seen by polling {o['polled']['median']:.1f}, "
                f"POST {o['submit']['median'] * sh['steps']:.0f} ms/run); "
                f"baseline {b['submit_to_done']['median']:.2f} (seen by polling {b['polled']['median']:.2f}, "
                f"apply_async {b['submit']['median']:.2f}); polled ratio {sh['ratio_polled']:.2f}x"
            )
            print(
                f"          CPU per step: ours API {cpu_o['api']:.2f} + provider worker {cpu_o['provider_worker']:.2f}"
                f" + control worker {cpu_o['control_worker']:.2f} ms; baseline worker {cpu_b['worker']:.2f} ms"
            )
            tasks = ", ".join(
                f"{t.split('.')[-1]} x{v['count_per_run']:.0f}/run {v['mean_ms']:.1f} ms"
                for t, v in sh["celery_task_ms"]["ours"].items()
            )
            print(f"          our Celery tasks: {tasks}")
            print("          ours, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in sh["breakdown_ms"].items()))

    ws = results.get("ws_fanout")
    if ws and "error" not in ws:
        _print_ws_fanout(ws)


def _ws_offered(ph: dict[str, Any]) -> float:
    """Deliveries/s a phase offered: the event rate times the listeners subscribed."""
    o = ph["ours_detail"]
    return float(o["expected_per_listener"] * o["subscribed"] * ph["event_rate"] / max(1, ph["events"]))


def _ws_fanout_rows(res: dict[str, Any]) -> list[tuple[str, ...]]:
    """The table's rows for ws_fanout, per phase: p50 and p99 against as many bare subscribers as listeners,
    then (headline only) against one. No target."""
    n = res["listeners"]
    rows: list[tuple[str, ...]] = []
    # The headline first, then the supporting phases.
    for phase, ph in sorted(res["phases"].items(), key=lambda kv: kv[0] != "headline"):
        fan, one, o = ph["baseline_fanout"], ph["baseline_single"], ph["ours_detail"]
        for pct in ("p50", "p99"):
            if phase == "headline":
                label, verdict_text = (
                    f"ws_fanout {n} listeners, {ph['task_rate']:g} tasks/s, {pct}",
                    "no target: report it",
                )
            else:
                behind = (o["deliveries_per_s"] or 0) < 0.9 * _ws_offered(ph)
                label = f"  {phase}, {ph['task_rate']:g} tasks/s, {pct}"
                verdict_text = "supporting: backlog" if behind else "supporting, no target"
            rows.append((label, f"{o[f'{pct}_ms']:.1f} ms", f"{fan[f'{pct}_ms']:.2f} ms ({n} redis subs)",
                         f"{ph['ratios'][f'vs_{n}_subscribers'][pct]:.1f}x", "-", verdict_text))  # fmt: skip
        if phase == "headline":
            for pct in ("p50", "p99"):
                rows.append((f"  {pct} vs 1 bare redis subscriber, {ph['task_rate']:g}/s", f"{o[f'{pct}_ms']:.1f} ms",
                             f"{one[f'{pct}_ms']:.2f} ms (1 redis sub)", f"{ph['ratios']['vs_1_subscriber'][pct]:.1f}x",
                             "-", "supporting, no target"))  # fmt: skip
        if phase == "overload":
            dps = o["deliveries_per_s"] or 0.0
            fan_dps = fan["deliveries_per_s"] or 0.0
            capacity = " (capacity)" if dps < 0.9 * _ws_offered(ph) else ""
            rows.append((f"  {phase}: deliveries/s{capacity}", f"{dps:.0f}/s", f"{fan_dps:.0f}/s ({n} redis subs)",
                         f"{dps / fan_dps if fan_dps else 0:.2f}x", "-", "supporting, no target"))  # fmt: skip
    return rows


def _print_ws_fanout(res: dict[str, Any]) -> None:
    n = res["listeners"]
    print(
        f"ws_fanout: {n} WebSocket listeners (tenant-wide subscription each) in {res['listener_processes']} "
        "load-generator processes, fresh ones per phase; latency = receive time at the listener - the event's "
        "created_at; baselines: bare Redis pub/sub, redis-py asyncio subscribers in the same number of processes "
        f"(RESP parser: {res['redis_parser']})"
    )
    for phase, ph in res["phases"].items():
        o, fan, one = ph["ours_detail"], ph["baseline_fanout"], ph["baseline_single"]
        c, b, cores = o["check"], ph["breakdown_ms"], ph["cpu_cores"]
        sub = ph["submit"]
        print(
            f"  [{phase}] {ph['tasks']} chat tasks POSTed at {ph['task_rate']:g}/s (POST p50 "
            f"{sub['post_latency']['p50_ms']:.0f} ms, p99 {sub['post_latency']['p99_ms']:.0f} ms, statuses "
            f"{sub['statuses']}) -> {ph['events']} events ({ph['event_rate']:.0f}/s), {o['mean_frame_bytes']:.0f} B "
            f"per frame on average; {o['subscribed']}/{n} subscribed in {ph['open_s']:.1f}s; WebSocket extensions: "
            f"{', '.join(o['extensions'])}"
        )
        offered = _ws_offered(ph)
        print(
            f"    ours: {o['deliveries']} deliveries of {o['expected_per_listener'] * o['subscribed']} expected, "
            f"{o['deliveries_per_s'] or 0:.0f}/s delivered over {o['receive_window_s']:.1f}s ({offered:.0f}/s "
            f"offered); p50 {o['p50_ms']:.1f} ms, p99 {o['p99_ms']:.1f} ms, max {o['max_ms']:.0f} ms; by type "
            "(p50/p99): " + ", ".join(f"{k} {v['p50_ms']:.1f}/{v['p99_ms']:.1f}" for k, v in o["by_type"].items())
        )
        if o["deliveries_per_s"] and o["deliveries_per_s"] < 0.9 * offered:
            print(
                "    (delivered < offered: the API's fan-out fell behind, so these latencies are mostly backlog; "
                "deliveries/s is its capacity here)"
            )
        reasons = f" {c['close_reasons']}" if c["close_reasons"] else ""
        print(
            f"    check: missing {c['missing']}, duplicates {c['duplicates']}, out of order {c['out_of_order']}, "
            f"unexpected {c['unexpected']}; listeners with a problem {c['listeners_with_problems']}; closed by the "
            f"server {c['closed_by_server']}{reasons} (slow-consumer limit: SWITCHYARD_WS_MAX_QUEUE, default 1,000 "
            f"events behind); at connect {o['failure_counts']}"
        )
        for label, base in ((f"{n} redis subscribers", fan), ("1 redis subscriber", one)):
            pub = base["publisher"]
            print(
                f"    baseline, {label}: {base['deliveries']} deliveries ({base['subscribed']} subscribed), p50 "
                f"{base['p50_ms']:.2f} ms, p99 {base['p99_ms']:.2f} ms, max {base['max_ms']:.1f} ms; missing "
                f"{base['check']['missing']}, duplicates {base['check']['duplicates']}; {pub['messages']} messages "
                f"of {pub['payload_bytes']} B at {pub['rate']:.0f}/s ({pub['schedule']}), PUBLISH reached "
                f"{pub['receivers_min']}-{pub['receivers_max']} subscribers"
            )
        print(
            f"    ratios: p50 {ph['ratios'][f'vs_{n}_subscribers']['p50']:.1f}x, p99 "
            f"{ph['ratios'][f'vs_{n}_subscribers']['p99']:.1f}x against {n} subscribers; p50 "
            f"{ph['ratios']['vs_1_subscriber']['p50']:.1f}x, p99 {ph['ratios']['vs_1_subscriber']['p99']:.1f}x "
            "against one"
        )
        relay = f"{b['created_to_relay_published_p50']:.1f}/{b['created_to_relay_published_p99']:.1f}"
        rest = f"{b['relay_published_to_listener_p50']:.1f}/{b['relay_published_to_listener_p99']:.1f}"
        probe_types = ", ".join(
            f"{k} {v['p50_ms']:.1f}/{v['p99_ms']:.1f}" for k, v in ph["relay_probe"]["by_type"].items()
        )
        print(
            f"    where ours goes (ms, p50/p99): created_at -> relay published (one plain subscriber on "
            f"switchyard:events:<tenant>) {relay} ({probe_types}); relay published -> listener (Redis, the API's "
            f"fan-out, the sockets, the listener) {rest}"
        )
        print(
            f"      per event: first listener {b['first_listener_p50']:.1f}, last listener {b['last_listener_p50']:.1f}"
            f", spread first->last {b['fanout_spread_p50']:.1f} p50 / {b['fanout_spread_p99']:.1f} p99 (bare "
            f"redis, {n} subscribers: spread {fan['per_event']['spread']['p50_ms']:.1f} p50)"
        )
        print(
            f"    CPU cores while measured ({ph['measured_s']:.0f}s): API {cores['api']:.2f}, listeners "
            f"{cores['listeners']:.2f}, control worker {cores['control_worker']:.2f}, provider worker "
            f"{cores['provider_worker']:.2f}, fake {cores['fake']:.2f} (machine {ph['machine_busy_pct']:.0f}% busy);"
            f" API CPU {ph['api_cpu_us_per_delivery']:.0f} us per delivery, so "
            f"{ph['api_cpu_us_per_delivery'] * o['subscribed'] / 1000:.0f} ms of API CPU per event fanned out to all "
            f"{o['subscribed']}: a task's three events are published within tens of ms of each other (the fake "
            "answers at once), so the second and the third wait for the first's fan-out (see by type)"
        )
    print(
        "  the path: the writer's commit (API for task.queued, provider worker for started/succeeded) -> the relay"
        " numbers the rows in its own transaction (one more Postgres commit, fsync) and PUBLISHes -> Redis -> the "
        f"API's hub -> one queue per listener -> {n} sends (permessage-deflate per socket, one write each) in one "
        "Python process"
    )
    print(
        f"  machine: {res['cores']} cores shared by everything: Postgres, Redis, the API, both workers, the fake, "
        f"the {res['listener_processes']} listener processes and this runner; a listener's receive time includes "
        "its own queueing on those cores (so does a baseline listener's)"
    )
    if res["api_log_warnings"]:
        print(
            f"  API log: {len(res['api_log_warnings'])} warning/error lines, first: {res['api_log_warnings'][0][:200]}"
        )


def _interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="smaller N and shorter runs, for a smoke test")
    parser.add_argument("--profile", action="store_true", help="py-spy the API and the worker (skews ratios)")
    args = parser.parse_args(argv)
    names = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in names if x not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    # A SIGTERM must still run the finally blocks that stop processes and drop databases.
    signal.signal(signal.SIGTERM, _interrupted)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Another engineer may change the product while this runs: record what was measured, before and after.
    code_before = git_state()
    dirty = code_before.get("uncommitted_product_files")
    log(f"measuring switchyard at {code_before.get('head')}" + (f" + uncommitted changes to {dirty}" if dirty else ""))
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for name in names:
            busy = machine_busy_pct()
            log(f"{name}: starting (machine {busy:.0f}% busy before it)")
            if busy > 15:
                log("  warning: something else is using the CPU; the ratios of this run are skewed")
            t0 = time.monotonic()
            try:
                results[name] = BENCHMARKS[name](tmp, args.quick, args.profile)
            except BenchError as exc:
                results[name] = {"error": str(exc)}
                log(f"{name}: FAILED: {exc}")
            results[name]["machine_busy_before_pct"] = round(busy, 1)
            log(f"{name}: done in {time.monotonic() - t0:.0f}s")
    print_table(results)
    info = machine()
    if info.get("git") != code_before:
        log("  warning: the product code changed during the run; re-run for figures of one version")
    out = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "profiled": args.profile,
        "duration_s": round(time.monotonic() - started, 1),
        "code_at_start": code_before,
        "code_changed_during_run": info.get("git") != code_before,
        "machine": info,
        "results": results,
    }
    path = RESULTS_DIR / "latest.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)} ({out['duration_s']:.0f}s)")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
