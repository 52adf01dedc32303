"""Liveness and readiness; no key needed."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from switchyard.gateway_api.deps import StateDep
from switchyard.gateway_api.responses import FastJSONResponse, error_body

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> FastJSONResponse:
    return FastJSONResponse({"status": "ok"})


@router.get("/readyz")
def readyz(state: StateDep) -> FastJSONResponse:
    """Database, broker and Redis reachable; 503 names what is not."""
    checks: dict[str, str] = {}
    try:
        with state.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        with state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    if state.redis is not None:
        try:
            state.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
    down = [name for name, value in checks.items() if value != "ok"]
    if down:
        body = error_body("service_unavailable", f"not ready: {', '.join(down)} unreachable")
        body["checks"] = checks
        return FastJSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return FastJSONResponse({"status": "ready", "checks": checks})
