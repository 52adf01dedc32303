"""The ASGI middleware that counts HTTP requests and times them, by route template and status.

It sits on every request's path, so it does little: a clock read at each end, the route template FastAPI left in
the scope, and label children cached per (method, route, status) so that a request costs two dictionary lookups
and two increments, not prometheus-client's label resolution (bench/metrics_middleware.py)."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.observability.metrics import Families

# Paths no route matched (404s from scanners): one label value, not one per path tried.
UNMATCHED = "unmatched"
# The scope key where the request's start is kept for the gateway's overhead (`metrics.gateway_overhead`).
STARTED = "switchyard_started"
# Any other method a client sends is counted as `other`: the label stays bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Counts and times each HTTP request under its route template (`/v1/tasks/{task_id}`, never the raw path)."""

    def __init__(self, app: ASGIApp, families: Families) -> None:
        self.app = app
        self.requests = families.http_requests
        self.duration = families.http_duration
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[STARTED] = started
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template: str = getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED
        method: str = scope["method"]
        if method not in METHODS:
            method = "other"
        key = (method, template, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(method, template, str(status))
        counter.inc()
        hkey = (method, template)
        histogram = self._histograms.get(hkey)
        if histogram is None:
            histogram = self._histograms[hkey] = self.duration.labels(method, template)
        histogram.observe(seconds)
