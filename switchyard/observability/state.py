"""The families an API process computes when scraped, from the shared truth rather than from its own counts:
queue depth and the age of the oldest task waiting to start (schedule-to-start), the webhook backlog, and each
deployment's health and breaker state (shared by the workers through Redis).

Every API process answers the same values (they come from Postgres and Redis), so a scrape may reach any of them.
The queries run on the live rows' partial indexes and their answer is kept `cache_s` (a few seconds), so a scrape
every few seconds from several Prometheus servers costs two small queries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import and_, case, func, or_, select

from switchyard.core.config import AppConfig
from switchyard.core.db import Database
from switchyard.core.models import Task, WebhookDelivery, utcnow
from switchyard.providers.health import DeploymentHealth
from switchyard.providers.status import LimitsView, deployment_status
from switchyard.workers.queues import queue_for

log = structlog.get_logger(__name__)

BREAKER_STATES = ("closed", "open", "half_open")
# The names this collector yields (tests/test_deploy_metrics.py checks the dashboard against them).
FAMILIES = (
    "switchyard_queue_depth",
    "switchyard_queue_oldest_age_seconds",
    "switchyard_webhook_backlog",
    "switchyard_deployment_up",
    "switchyard_deployment_breaker_state",
    "switchyard_deployment_in_flight",
    "switchyard_deployment_success_ratio",
    "switchyard_state_up",
)


class StateCollector(Collector):
    """Yields the shared state's gauges, read at most once per `cache_s`."""

    def __init__(
        self, db: Database, config: AppConfig, health: DeploymentHealth, limits: LimitsView, cache_s: float = 5.0
    ) -> None:
        self.db = db
        self.config = config
        self.health = health
        self.limits = limits
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: list[GaugeMetricFamily] = []
        self._at = float("-inf")

    def describe(self) -> Iterable[Any]:
        return []  # computed when collected; nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._at >= self.cache_s:
                self._cached = self._read()
                self._at = time.monotonic()
            yield from self._cached

    def _read(self) -> list[GaugeMetricFamily]:
        out: list[GaugeMetricFamily] = []
        up = 1.0
        try:
            out += self._queues()
        except Exception:
            up = 0.0
            log.warning("metrics_state_failed", part="database", exc_info=True)
        try:
            out += self._deployments()
        except Exception:
            up = 0.0
            log.warning("metrics_state_failed", part="health", exc_info=True)
        state_up = GaugeMetricFamily(
            "switchyard_state_up", "1 when the last read of the shared state (database, health store) succeeded."
        )
        state_up.add_metric([], up)
        return [*out, state_up]

    def _queues(self) -> list[GaugeMetricFamily]:
        now = utcnow()
        waiting = and_(Task.status == "queued", or_(Task.due_at.is_(None), Task.due_at <= now))
        start_at = func.coalesce(Task.due_at, Task.created_at)
        depth = GaugeMetricFamily(
            "switchyard_queue_depth",
            "Live tasks by queue and status (queued: waiting for a worker, due or not; running: claimed).",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "switchyard_queue_oldest_age_seconds",
            "Age of the oldest task due to start and not started, by queue (schedule-to-start; 0 when none).",
            labels=["queue"],
        )
        backlog = GaugeMetricFamily(
            "switchyard_webhook_backlog",
            "Webhook deliveries not yet finished, by status (pending: due now or later; delivering: in flight).",
            labels=["status"],
        )
        counts: dict[tuple[str, str], int] = {}
        ages: dict[str, float] = {}
        with self.db.autocommit() as conn:
            rows = conn.execute(
                select(
                    Task.type,
                    Task.batch_id.is_not(None),
                    Task.status,
                    func.count(),
                    func.min(case((waiting, start_at))),
                )
                .where(Task.status.in_(("queued", "running")))
                .group_by(Task.type, Task.batch_id.is_not(None), Task.status)
            ).all()
            deliveries = conn.execute(
                select(WebhookDelivery.status, func.count())
                .where(WebhookDelivery.status.in_(("pending", "delivering")))
                .group_by(WebhookDelivery.status)
            ).all()
        for task_type, batch, status, count, first in rows:
            queue = queue_for(task_type, bool(batch))
            counts[(queue, status)] = counts.get((queue, status), 0) + int(count)
            ages.setdefault(queue, 0.0)
            if first is not None:
                if first.tzinfo is None:
                    first = first.replace(tzinfo=now.tzinfo)
                ages[queue] = max(ages[queue], (now - first).total_seconds())
        for (queue, status), count in sorted(counts.items()):
            depth.add_metric([queue, status], count)
        for queue, age in sorted(ages.items()):
            oldest.add_metric([queue], max(0.0, age))
        known = dict.fromkeys(("pending", "delivering"), 0)
        known.update({status: int(count) for status, count in deliveries})
        for status, count in known.items():
            backlog.add_metric([status], count)
        return [depth, oldest, backlog]

    def _deployments(self) -> list[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "switchyard_deployment_up",
            "1 while the deployment's breaker is closed, else 0.",
            labels=["provider", "deployment"],
        )
        breaker = GaugeMetricFamily(
            "switchyard_deployment_breaker_state",
            "1 for the breaker's current state (closed, open, half_open).",
            labels=["provider", "deployment", "state"],
        )
        in_flight = GaugeMetricFamily(
            "switchyard_deployment_in_flight",
            "Calls in flight to the deployment, across every worker.",
            labels=["provider", "deployment"],
        )
        success = GaugeMetricFamily(
            "switchyard_deployment_success_ratio",
            "Share of successful calls in the breaker's rolling window (absent when the window is empty).",
            labels=["provider", "deployment"],
        )
        for dep in deployment_status(self.config, self.health, self.limits):
            labels = [dep["provider"], dep["deployment"]]
            state = dep["breaker"]["state"]
            up.add_metric(labels, 1.0 if state == "closed" else 0.0)
            for name in BREAKER_STATES:
                breaker.add_metric([*labels, name], 1.0 if state == name else 0.0)
            in_flight.add_metric(labels, dep["in_flight"])
            if dep["success_rate"] is not None:
                success.add_metric(labels, dep["success_rate"])
        return [up, breaker, in_flight, success]


def render(state: Collector | None) -> tuple[bytes, str]:
    """The text a scrape gets: this process's families (every API process's, in multiprocess mode) and the
    shared state's."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.multiprocess import MultiProcessCollector

    from switchyard.observability.exposition import multiprocess

    if multiprocess():
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if state is not None:
        extra = CollectorRegistry(auto_describe=False)
        extra.register(state)
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST
