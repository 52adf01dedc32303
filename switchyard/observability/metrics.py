"""The `switchyard_*` Prometheus families, and the calls the code paths make to move them.

Families are made once per process, on first use, from the settings: `SWITCHYARD_METRICS=false` makes none (every
call site then costs one function call and a None check), and `SWITCHYARD_METRICS_TENANT_LABEL=true` adds a
`tenant` label to the per-task families. Labels are bounded: route templates (never raw paths), models,
deployments and error types from the config file, task types and statuses. No task ids, ever.

Several processes (`switchyard api --workers N`, a prefork worker) share their values through prometheus-client's
multiprocess mode: `PROMETHEUS_MULTIPROC_DIR` must be set before prometheus-client is first imported, which the
CLI does (`observability/exposition.py`). Gauges say how they add up across processes (`multiprocess_mode`).

The families computed from the database and Redis when scraped (queue depth, oldest queued task, webhook backlog,
deployment health) live in `observability/state.py`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from switchyard.settings import get_settings

# Provider calls take from tens of milliseconds (an embedding) to minutes (a long generation).
LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# Time to first token: well under a second when healthy, several when a provider queues.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
# HTTP requests: fast admin and enqueue calls, and synchronous calls that last as long as the provider's.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# The gateway's own time around a call: milliseconds, which is what a regression would move.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Families:
    """Every family this process can move (made by `families()`)."""

    tenant_label: bool
    http_requests: Counter
    http_duration: Histogram
    overhead: Histogram
    ttft: Histogram
    tasks: Counter
    attempts: Counter
    attempt_duration: Histogram
    tokens: Counter
    cost: Counter
    fallbacks: Counter
    in_flight: Gauge
    relay_lag: Gauge
    relayed: Counter
    duty_runs: Counter
    duty_last_run: Gauge
    webhook_deliveries: Counter
    refusals: Counter
    time_limits: Counter
    handoffs: Counter

    def tenant(self, tenant_id: str) -> tuple[str, ...]:
        """The tenant label's value, when the setting asks for one."""
        return (tenant_id,) if self.tenant_label else ()


def _make(tenant_label: bool) -> Families:
    tenant = ["tenant"] if tenant_label else []
    return Families(
        tenant_label=tenant_label,
        http_requests=Counter(
            "switchyard_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
        ),
        http_duration=Histogram(
            "switchyard_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (a stream's whole length), by route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
        ),
        overhead=Histogram(
            "switchyard_gateway_overhead_seconds",
            "Synchronous calls: the request's time until its answer was ready minus its attempts' provider time.",
            ["type"],
            buckets=OVERHEAD_BUCKETS,
        ),
        ttft=Histogram(
            "switchyard_time_to_first_token_seconds",
            "Streamed chat: time from the provider call's start to its first delta published, by logical model.",
            ["model"],
            buckets=TTFT_BUCKETS,
        ),
        tasks=Counter(
            "switchyard_tasks",
            "Tasks finished by the workers, by type, logical model and final status.",
            ["type", "model", "status", *tenant],
        ),
        attempts=Counter(
            "switchyard_attempts",
            "Provider calls, by deployment and error type (`none` for a success).",
            ["provider", "deployment", "model", "error_type"],
        ),
        attempt_duration=Histogram(
            "switchyard_attempt_duration_seconds",
            "Provider calls' latency, by deployment.",
            ["provider", "deployment"],
            buckets=LLM_BUCKETS,
        ),
        tokens=Counter(
            "switchyard_tokens",
            "Tokens of provider calls, by logical model and direction (input, output).",
            ["model", "direction", *tenant],
        ),
        cost=Counter("switchyard_cost_usd", "Cost of provider calls in USD, by logical model.", ["model", *tenant]),
        fallbacks=Counter(
            "switchyard_fallbacks",
            "Tasks moved to a fallback model after their model's deployments failed.",
            ["from_model", "to_model"],
        ),
        in_flight=Gauge(
            "switchyard_calls_in_flight",
            "Tasks a worker holds in flight (claimed, not finished), by lane.",
            ["lane"],
            multiprocess_mode="livesum",
        ),
        relay_lag=Gauge(
            "switchyard_relay_lag_seconds",
            "Age of the oldest event of the relay's latest batch when it was published (commit to publish).",
            multiprocess_mode="mostrecent",
        ),
        relayed=Counter("switchyard_relay_events", "Events numbered and published by the relay."),
        duty_runs=Counter(
            "switchyard_duty_runs",
            "Runs of the periodic duties (sweeps) by the leader, by duty and outcome.",
            ["duty", "outcome"],
        ),
        duty_last_run=Gauge(
            "switchyard_duty_last_run_timestamp_seconds",
            "When the duty last ran to completion (Unix time); take the max across workers (the leader moves).",
            ["duty"],
            multiprocess_mode="max",
        ),
        webhook_deliveries=Counter(
            "switchyard_webhook_deliveries",
            "Webhook delivery attempts by outcome (succeeded, failed for good, retry scheduled).",
            ["outcome"],
        ),
        refusals=Counter(
            "switchyard_quota_refusals",
            "Admissions refused by a limit or budget, by reason (rate_limit_exceeded, daily_usd, monthly_usd, "
            "max_per_call_usd, ...).",
            ["reason"],
        ),
        time_limits=Counter(
            "switchyard_task_time_limits",
            "Celery tasks that ran past their soft or hard time limit in a thread or solo pool worker (the soft "
            "limit raised SoftTimeLimitExceeded in the task; a hard one can only be reported).",
            ["task", "limit"],
        ),
        handoffs=Counter(
            "switchyard_handoff_tasks",
            "Tasks a worker took from the hand-off (workers/handoff.py) rather than from a Celery message, by queue.",
            ["queue"],
        ),
    )


_lock = threading.Lock()
_families: Families | None = None
_decided = False


def families() -> Families | None:
    """This process's families, made on first use; None when metrics are off (SWITCHYARD_METRICS=false)."""
    global _families, _decided
    if _decided:
        return _families
    with _lock:
        if not _decided:
            settings = get_settings()
            _families = _make(settings.metrics_tenant_label) if settings.metrics else None
            _decided = True
    return _families


# --- what the code paths call (each a no-op when metrics are off) -----------------------------------------------


def attempt_ended(
    provider: str,
    deployment: str,
    model: str,
    error_type: str | None,
    latency_s: float,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float,
    tenant_id: str,
) -> None:
    """A provider call ended (its row is being written)."""
    m = families()
    if m is None:
        return
    m.attempts.labels(provider, deployment, model, error_type or "none").inc()
    m.attempt_duration.labels(provider, deployment).observe(latency_s)
    tenant = m.tenant(tenant_id)
    if input_tokens:
        m.tokens.labels(model, "input", *tenant).inc(input_tokens)
    if output_tokens:
        m.tokens.labels(model, "output", *tenant).inc(output_tokens)
    if cost_usd:
        m.cost.labels(model, *tenant).inc(cost_usd)


def task_finished(task_type: str, model: str, status: str, tenant_id: str) -> None:
    """A task reached its final status in a worker."""
    m = families()
    if m is not None:
        m.tasks.labels(task_type, model, status, *m.tenant(tenant_id)).inc()


def fell_back(from_model: str, to_model: str) -> None:
    """A task moved on to a fallback model."""
    m = families()
    if m is not None:
        m.fallbacks.labels(from_model, to_model).inc()


def first_token(model: str, seconds: float) -> None:
    """A streamed call published its first delta."""
    m = families()
    if m is not None:
        m.ttft.labels(model).observe(seconds)


def in_flight(lane: str, change: int) -> None:
    """A worker took (+1) or let go of (-1) a task."""
    m = families()
    if m is not None:
        m.in_flight.labels(lane).inc(change)


def relayed(count: int, oldest_created_iso: str) -> None:
    """The relay published a batch; its oldest event was committed at `oldest_created_iso`."""
    m = families()
    if m is None or not count:
        return
    from datetime import UTC, datetime

    created = datetime.fromisoformat(oldest_created_iso)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    m.relayed.inc(count)
    m.relay_lag.set(max(0.0, time.time() - created.timestamp()))


def duty_ran(duty: str, ok: bool) -> None:
    """The leader ran a periodic duty (ok) or saw it fail."""
    m = families()
    if m is None:
        return
    m.duty_runs.labels(duty, "ok" if ok else "failed").inc()
    if ok:
        m.duty_last_run.labels(duty).set(time.time())


def webhook_delivered(outcome: str) -> None:
    """A webhook delivery attempt was recorded: succeeded, failed (for good) or retry."""
    m = families()
    if m is not None:
        m.webhook_deliveries.labels(outcome).inc()


def refused(reason: str) -> None:
    """An admission was refused by a limit or a budget (`reason`: the error's code)."""
    m = families()
    if m is not None:
        m.refusals.labels(reason).inc()


def task_time_limit(task: str, limit: str) -> None:
    """A Celery task (by name) ran past its `soft` or `hard` time limit."""
    m = families()
    if m is not None:
        m.time_limits.labels(task, limit).inc()


def handed_off(queue: str, count: int) -> None:
    """A worker popped `count` task ids from a queue's hand-off."""
    m = families()
    if m is not None:
        m.handoffs.labels(queue).inc(count)


def gateway_overhead(task: dict[str, Any], started: float | None) -> None:
    """A synchronous call's answer is ready: its time so far minus its attempts' provider time."""
    m = families()
    if m is None or started is None:
        return
    provider_ms = sum(a.get("latency_ms") or 0 for a in task.get("attempts") or ())
    m.overhead.labels(task.get("type") or "unknown").observe(
        max(0.0, time.perf_counter() - started - provider_ms / 1000.0)
    )
