"""enqueue: POST /v1/tasks req/s at 32 connections vs a bare FastAPI INSERT + LPUSH endpoint (target >= 0.7x).

No worker and no fake: only the front is measured; its messages stay in Redis and are counted at the end, so
that every 2xx is checked to be a row and a published message.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import asdict, dataclass

from bench.harness import (
    BenchError,
    Env,
    LoadResult,
    Profiler,
    cpu_seconds,
    load,
    load_tool,
    log,
    sql_one,
    wait_http,
    wait_until,
)
from bench.registry import Benchmark, Options, Result
from bench.stack import CONNECTIONS, Switchyard
from tests.processes import free_port

REDIS_DB = 12


@dataclass(frozen=True)
class Sizes:
    warm_s: float
    measure_s: float
    rounds: int


FULL = Sizes(warm_s=3.0, measure_s=10.0, rounds=2)
QUICK = Sizes(warm_s=2.0, measure_s=4.0, rounds=1)


def run(opts: Options) -> Result:
    """Alternating rounds of wrk against the baseline and against ours, one API process each."""
    sz = opts.sizes("enqueue", FULL, QUICK)
    env = Env("enqueue", REDIS_DB, opts.tmp / "enqueue")
    try:
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
        for r in range(sz.rounds):
            for side, url, key in (("baseline", base_url, None), ("ours", ours.url, ours.key)):
                load(f"{url}/v1/tasks", auth=key, connections=CONNECTIONS, seconds=sz.warm_s)
                pid = ours.api.pid if side == "ours" else baseline.pid
                prof = Profiler(opts.profile and side == "ours" and r == 0, pid, "enqueue-api", sz.measure_s)
                cpu0 = cpu_seconds(pid)
                try:
                    res = load(f"{url}/v1/tasks", auth=key, connections=CONNECTIONS, seconds=sz.measure_s)
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
            last.append((ours.count("SELECT count(*) FROM tasks"), ours.queued_ids()))
            return len(last) > 1 and last[-1] == last[-2] and last[-1][0] == last[-1][1]

        try:
            wait_until(settled, timeout=10, interval=0.5, what="rows and messages to match")
        except BenchError:
            pass  # reported below as a mismatch
        rows = ours.count("SELECT count(*) FROM tasks")
        events = ours.count("SELECT count(*) FROM events")
        messages = ours.queued_ids()
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
            "load_tool": load_tool(),
            "sizes": asdict(sz),
            "server_cpu_ms_per_request": {k: statistics.mean(v) for k, v in cpu_ms.items()},
            "rounds": {k: [asdict(x) for x in v] for k, v in runs.items()},
            "check": {
                "task_rows": rows,
                "event_rows": events,
                "provider_queue_ids": messages,
                "baseline_rows": base_rows,
                "baseline_pushed": base_pushed,
                "every_row_published": rows == messages,
            },
        }
    finally:
        env.close()


def details(res: Result) -> None:
    """Server CPU per request and the rows-vs-messages check."""
    c, cpu = res["check"], res["server_cpu_ms_per_request"]
    print(
        f"enqueue:    server CPU {cpu['ours']:.2f} ms/request (ours) vs {cpu['baseline']:.2f} (baseline); "
        f"{c['task_rows']} task rows, {c['provider_queue_ids']} task ids in the messages in Redis "
        f"({'every row published' if c['every_row_published'] else 'MISMATCH'})"
    )


BENCHMARK = Benchmark(
    name="enqueue",
    summary="POST /v1/tasks req/s, 32 connections, vs bare FastAPI INSERT + LPUSH (>= 0.7x)",
    run=run,
    details=details,
)
