"""`GET /metrics`: Prometheus's text format, no key needed (like /healthz: what it shows are counts by route,
model and deployment, never a tenant's data unless SWITCHYARD_METRICS_TENANT_LABEL asks for tenant ids; keep the
port off the internet or put the path behind the ingress's own rules)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from switchyard.gateway_api.deps import StateDep
from switchyard.observability.state import StateCollector, render

router = APIRouter(tags=["metrics"])


# Not in the OpenAPI document: it is for Prometheus, not API clients (docs/api.md, "Metrics").
@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, state: StateDep) -> Response:
    """This process's families (every API process's with --workers N) and the shared state's gauges."""
    collector: StateCollector | None = getattr(request.app.state, "metrics_state", None)
    if collector is None:
        collector = StateCollector(
            state.db, state.config, state.health, state.limits, cache_s=state.settings.metrics_state_cache_s
        )
        request.app.state.metrics_state = collector
    body, content_type = render(collector)
    return Response(body, media_type=content_type)
