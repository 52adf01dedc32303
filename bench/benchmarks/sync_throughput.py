"""sync_throughput: `/v1/chat/completions` req/s at 32 connections against one `switchyard api` process and one
`switchyard worker` (provider and control queues, SWITCHYARD_MAX_IN_FLIGHT=1000), vs LiteLLM's proxy
(`litellm --config ... --num_workers 1`, no database, a master key) routing the same model to the same fake
provider (target >= 3x).

Same body (an OpenAI chat request), same wrk settings and duration for both; rounds alternate the proxy and
ours so that neither always runs on the warmer machine. Every response must be a 2xx: non-2xx and socket
errors are counted per side and reported, and ours must have recorded a succeeded task per 2xx.

A third side, `limited`, is ours again with a key that has limits (rpm, tpm, max_concurrent) and a budget
(per call, daily, monthly) set high enough never to refuse: the cost of admission (one Redis script) and
settlement on the hot path, against the same run's unlimited key (target >= 0.9x).

A fourth side, `pii`, is ours with a PII guardrail (`mask`) on the request, on a message holding an email and a
phone number, against the same run's `ours` (target >= 0.9x).

A fifth side, `nometrics`, is a second API process started with SWITCHYARD_METRICS=false (no middleware, no
overhead histogram) in front of the same worker: `ours` (metrics on, the default) against it gives the cost of
the API's metrics on the hot path (target >= 0.95x). The worker's own metrics (a few increments per task) are on
for both sides: a worker's families are made when the process starts, and two workers on one queue would
each take the other side's tasks.

A sixth side, `traced`, is a third API process with tracing on (SWITCHYARD_TRACING=true, exporting OTLP/HTTP to
a sink in the bench process that answers 200 and drops the spans) in front of the same worker, whose tracing
stays off for the same reason: the API side's cost of tracing, against `ours` (tracing off, the default).
Reported, no target.

A seventh side, `celery`, is a fourth API process with SWITCHYARD_HANDOFF=false in front of the same worker: every
task a Celery message, as before the hand-off (workers/handoff.py). `ours` against it is what the hand-off buys.
Reported, no target.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from bench.harness import BenchError, Env, LoadResult, Profiler, cpu_seconds, load, load_tool, log, sql_one
from bench.registry import Benchmark, Options, Result, Row, standard_row
from bench.stack import (
    CONNECTIONS,
    CONTROL_QUEUE,
    LITELLM_MODEL,
    MAX_IN_FLIGHT_ENV,
    PROVIDER_QUEUE,
    LiteLLMProxy,
    Switchyard,
    wait_worker,
)
from tests.processes import Process, cli, free_port, wait_http

REDIS_DB = 4
# Never reached in a run, so every call pays the whole admission and settlement and none is refused.
LIMITS = '{"rpm": 100000000, "tpm": 1000000000, "rph": 1000000000, "max_concurrent": 100000}'
BUDGET = '{"max_per_call_usd": 100, "daily_usd": 1000000, "monthly_usd": 10000000}'
BODY = b'{"model":"%s","messages":[{"role":"user","content":"hello bench"}]}' % LITELLM_MODEL.encode()
# The same call with a PII guardrail on the request and two values to mask.
PII_BODY = (
    b'{"model":"%s","messages":[{"role":"user","content":"hello bench, I am jane.doe@example.com, (415) 555-2671"}],'
    b'"guardrails":{"pii":{"mode":"mask"}}}' % LITELLM_MODEL.encode()
)


@dataclass(frozen=True)
class Sizes:
    warm_s: float
    measure_s: float
    rounds: int
    fake_latency_ms: int
    max_in_flight: int
    # Threads of our worker's pool: above the connections, so that the pool never limits the calls.
    worker_concurrency: int


FULL = Sizes(warm_s=3.0, measure_s=10.0, rounds=3, fake_latency_ms=0, max_in_flight=1000, worker_concurrency=64)
QUICK = Sizes(warm_s=1.0, measure_s=3.0, rounds=1, fake_latency_ms=0, max_in_flight=1000, worker_concurrency=64)


class _OtlpSink:
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing (the exporter's cost is the API's)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _check_answer(url: str, key: str, side: str, body: bytes = BODY) -> None:
    """One request with the benchmark's body: a 200 with the fake's answer (ours through a task)."""
    got = httpx.post(
        f"{url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    if got.status_code != 200 or not got.json()["choices"][0]["message"]["content"]:
        raise BenchError(f"{side} answered {got.status_code}: {got.text[:500]}")
    if side == "ours" and "x-switchyard-task-id" not in got.headers:
        raise BenchError("our /v1/chat/completions answered without a task id")
    if body is PII_BODY and "<EMAIL_1>" not in got.json()["choices"][0]["message"]["content"]:
        raise BenchError(f"the PII guardrail did not mask the request: {got.text[:500]}")


def _summary(runs: list[LoadResult], cpu_ms: list[float]) -> dict[str, Any]:
    return {
        "rps": statistics.mean(r.rps for r in runs),
        "latency_p50_ms": statistics.mean(r.latency_p50_ms or 0 for r in runs),
        "latency_p99_ms": statistics.mean(r.latency_p99_ms or 0 for r in runs),
        "requests": sum(r.requests for r in runs),
        "non_2xx": sum(r.non_2xx for r in runs),
        "socket_errors": sum(r.errors for r in runs),
        "server_cpu_ms_per_request": statistics.mean(cpu_ms),
    }


def run(opts: Options) -> Result:
    """Alternating rounds, the proxy first: warm-up then a measured wrk run per side."""
    sz = opts.sizes("sync_throughput", FULL, QUICK)
    env = Env("sync_throughput", REDIS_DB, opts.tmp / "sync_throughput")
    try:
        ours = Switchyard(env, fake_latency_ms=sz.fake_latency_ms)
        worker = ours.start_worker(
            sz.worker_concurrency, queues=f"{PROVIDER_QUEUE},{CONTROL_QUEUE}", max_in_flight=sz.max_in_flight
        )
        wait_worker(worker)
        proxy = LiteLLMProxy(env, ours.fake_url)
        assert ours.api is not None
        limited = env.run_cli("keys", "create", "--tenant", "bench-limited", "--role", "member").strip()
        limited = limited.splitlines()[-1]
        sql_one(
            env.database_url,
            "UPDATE api_keys SET limits = %s::jsonb, budget = %s::jsonb WHERE prefix = %s RETURNING id",
            LIMITS,
            BUDGET,
            limited[:10],
        )
        _check_answer(ours.url, ours.key, "ours")
        _check_answer(ours.url, limited, "ours")
        _check_answer(ours.url, ours.key, "ours", PII_BODY)
        _check_answer(proxy.url, proxy.key, "LiteLLM's proxy")
        bare_url = f"http://127.0.0.1:{free_port()}"
        bare = env.start(
            "api-nometrics", cli("api", "--port", bare_url.rsplit(":", 1)[1]), {"SWITCHYARD_METRICS": "false"}
        )
        wait_http(f"{bare_url}/healthz", bare)
        if httpx.get(f"{bare_url}/metrics").status_code != 404:
            raise BenchError("the API started with SWITCHYARD_METRICS=false serves /metrics")
        _check_answer(bare_url, ours.key, "ours")
        sink = _OtlpSink()
        traced_url = f"http://127.0.0.1:{free_port()}"
        traced = env.start(
            "api-traced",
            cli("api", "--port", traced_url.rsplit(":", 1)[1]),
            {"SWITCHYARD_TRACING": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_SERVICE_NAME": "bench"},
        )
        wait_http(f"{traced_url}/healthz", traced)
        _check_answer(traced_url, ours.key, "ours")
        # The same worker behind an API that publishes every task as a Celery message (no hand-off).
        celery_url = f"http://127.0.0.1:{free_port()}"
        by_celery = env.start(
            "api-celery", cli("api", "--port", celery_url.rsplit(":", 1)[1]), {"SWITCHYARD_HANDOFF": "false"}
        )
        wait_http(f"{celery_url}/healthz", by_celery)
        _check_answer(celery_url, ours.key, "ours")
        sides: dict[str, tuple[str, str, list[Process]]] = {
            "proxy": (proxy.url, proxy.key, [proxy.proc]),
            "ours": (ours.url, ours.key, [ours.api, worker]),
            "limited": (ours.url, limited, [ours.api, worker]),
            "pii": (ours.url, ours.key, [ours.api, worker]),
            "nometrics": (bare_url, ours.key, [bare, worker]),
            "traced": (traced_url, ours.key, [traced, worker]),
            "celery": (celery_url, ours.key, [by_celery, worker]),
        }
        bodies = {side: PII_BODY if side == "pii" else BODY for side in sides}
        runs: dict[str, list[LoadResult]] = {k: [] for k in sides}
        cpu_ms: dict[str, list[float]] = {k: [] for k in sides}
        ok_total = {k: 0 for k in sides}
        for r in range(sz.rounds):
            for side, (url, key, procs) in sides.items():
                endpoint = f"{url}/v1/chat/completions"
                warm = load(endpoint, auth=key, connections=CONNECTIONS, seconds=sz.warm_s, body=bodies[side])
                prof = Profiler(opts.profile and side == "ours" and r == 0, procs[0].pid, "sync-api", sz.measure_s)
                cpu0 = sum(cpu_seconds(p.pid) for p in procs)
                try:
                    res = load(endpoint, auth=key, connections=CONNECTIONS, seconds=sz.measure_s, body=bodies[side])
                finally:
                    prof.stop()
                # Server-side CPU (ours: API + worker) per request: less sensitive than req/s to other load.
                cpu_ms[side].append(1000 * (sum(cpu_seconds(p.pid) for p in procs) - cpu0) / max(1, res.requests))
                runs[side].append(res)
                ok_total[side] += warm.requests - warm.non_2xx + res.requests - res.non_2xx
                log(f"  sync_throughput round {r + 1} {side:7}: {res.rps:7.0f} req/s  p50 {res.latency_p50_ms:.1f} ms"
                    f"  p99 {res.latency_p99_ms:.1f} ms  non-2xx {res.non_2xx}  socket errors {res.errors}  "
                    f"server CPU {cpu_ms[side][-1]:.2f} ms/req")  # fmt: skip
        # The extra API processes' pools are let go first: with the proxy's they fill Postgres' connections.
        bare.stop()
        traced.stop()
        by_celery.stop()
        sink.close()
        succeeded = ours.count("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
        failed = ours.count("SELECT count(*) FROM tasks WHERE status = 'failed'")
        summary = {side: _summary(runs[side], cpu_ms[side]) for side in sides}
        ours_ok = sum(ok_total[side] for side in sides if side != "proxy")
        o, b = summary["ours"]["rps"], summary["proxy"]["rps"]
        return {
            "ours": o,
            "baseline": b,
            "unit": "req/s",
            "ratio": o / b,
            "target": 3.0,
            "target_kind": ">=",
            "connections": CONNECTIONS,
            "load_tool": load_tool(),
            "sizes": asdict(sz),
            "worker": f"{PROVIDER_QUEUE},{CONTROL_QUEUE}, {sz.worker_concurrency} threads, "
            f"{MAX_IN_FLIGHT_ENV}={sz.max_in_flight}",
            "summary": summary,
            "rounds": {k: [asdict(x) for x in v] for k, v in runs.items()},
            # The same API and worker with a key that has limits and a budget, vs the unlimited key.
            "limits": {
                "ours": summary["limited"]["rps"],
                "baseline": o,
                "unit": "req/s",
                "ratio": summary["limited"]["rps"] / o,
                "target": 0.9,
                "target_kind": ">=",
            },
            # The same API and worker with a PII guardrail (mask) on the request, vs no guardrail.
            "pii": {
                "ours": summary["pii"]["rps"],
                "baseline": o,
                "unit": "req/s",
                "ratio": summary["pii"]["rps"] / o,
                "target": 0.9,
                "target_kind": ">=",
            },
            # The same worker behind an API with metrics on (the default) vs one with SWITCHYARD_METRICS=false.
            "metrics": {
                "ours": o,
                "baseline": summary["nometrics"]["rps"],
                "unit": "req/s",
                "ratio": o / summary["nometrics"]["rps"],
                "target": 0.95,
                "target_kind": ">=",
            },
            # The same worker behind an API with tracing on (exporting to a sink) vs ours (tracing off).
            "tracing": {
                "ours": summary["traced"]["rps"],
                "baseline": o,
                "unit": "req/s",
                "ratio": summary["traced"]["rps"] / o,
                "target": None,
                "target_kind": None,
            },
            # The hand-off (the default) vs the same worker behind an API that sends Celery messages.
            "handoff": {
                "ours": o,
                "baseline": summary["celery"]["rps"],
                "unit": "req/s",
                "ratio": o / summary["celery"]["rps"],
                "target": None,
                "target_kind": None,
            },
            "check": {
                # Every 2xx of ours is a succeeded task; more tasks than 2xx are the requests wrk dropped at its end.
                "ours_2xx_incl_warmup": ours_ok,
                "ours_tasks_succeeded": succeeded,
                "ours_tasks_failed": failed,
                "every_2xx_a_task": succeeded >= ours_ok,
                "proxy_2xx_incl_warmup": ok_total["proxy"],
            },
        }
    finally:
        env.close()


def rows(name: str, res: Result) -> list[Row]:
    """req/s ours vs the proxy."""
    return [
        standard_row(f"{name}: /v1/chat/completions, 32 conns", res, baseline_note=" (LiteLLM proxy)"),
        standard_row(f"{name} with limits + budget", res["limits"], baseline_note=" (no limits)"),
        *([standard_row(f"{name} with a PII guardrail", res["pii"], baseline_note=" (none)")] if "pii" in res else []),
        *(
            [standard_row(f"{name} with metrics", res["metrics"], baseline_note=" (metrics off)")]
            if "metrics" in res
            else []
        ),
        *(
            [standard_row(f"{name} with tracing (API)", res["tracing"], baseline_note=" (tracing off)")]
            if "tracing" in res
            else []
        ),
        *(
            [standard_row(f"{name} with the hand-off", res["handoff"], baseline_note=" (Celery messages)")]
            if "handoff" in res
            else []
        ),
    ]


def details(res: Result) -> None:
    """Latency, errors and CPU per side, and the task check."""
    s, c = res["summary"], res["check"]
    for side, label in (
        ("ours", "ours   "),
        ("limited", "limited"),
        ("pii", "pii    "),
        ("nometrics", "nometrics"),
        ("traced", "traced "),
        ("celery", "celery "),
        ("proxy", "proxy  "),
    ):
        if side not in s:
            continue
        x = s[side]
        print(
            f"sync_throughput {label}: {x['rps']:.0f} req/s, p50 {x['latency_p50_ms']:.1f} ms, p99 "
            f"{x['latency_p99_ms']:.1f} ms, {x['requests']} requests measured, non-2xx {x['non_2xx']}, socket "
            f"errors {x['socket_errors']}, server CPU {x['server_cpu_ms_per_request']:.2f} ms/request"
        )
    print(
        f"  worker: {res['worker']}; load: {res['load_tool']}; check: {c['ours_2xx_incl_warmup']} 2xx (warm-ups "
        f"included), {c['ours_tasks_succeeded']} tasks succeeded, {c['ours_tasks_failed']} failed"
        + ("" if c["every_2xx_a_task"] else " (MISMATCH: fewer tasks than 2xx)")
    )


BENCHMARK = Benchmark(
    name="sync_throughput",
    summary="/v1/chat/completions req/s, 32 connections, 1 API + 1 worker vs LiteLLM's proxy (>= 3x)",
    run=run,
    rows=rows,
    details=details,
)
