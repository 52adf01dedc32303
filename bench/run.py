"""Run the benchmarks of DESIGN.md "Performance targets", each against a baseline measured in the same run.

    .venv/bin/python -m bench.run [--only enqueue,end_to_end,in_flight,ml_batching,dag] [--quick] [--profile]

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

Each benchmark has its own fresh Postgres database and Redis DB (flushed before and after) and stops every
process it started, also on failure. `--profile` also samples the API and the worker with py-spy (that
costs CPU on a small machine: do not read the ratios of a profiled run as results).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.harness import (
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


# --- the run ---------------------------------------------------------------------------------------------------

BENCHMARKS: dict[str, Callable[[Path, bool, bool], dict[str, Any]]] = {
    "enqueue": bench_enqueue,
    "end_to_end": bench_end_to_end,
    "in_flight": bench_in_flight,
    "ml_batching": bench_ml_batching,
    "dag": bench_dag,
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
