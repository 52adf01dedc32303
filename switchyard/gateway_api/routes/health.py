"""Liveness and readiness; no key needed."""

from __future__ import annotations

import time

from fastapi import APIRouter
from sqlalchemy import text

from switchyard.gateway_api.deps import StateDep
from switchyard.gateway_api.responses import FastJSONResponse, error_body
from switchyard.gateway_api.schemas import Health, NotReady, Ready
from switchyard.workers.duties import DutyHealth, duty_health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> FastJSONResponse:
    """The process is alive."""
    return FastJSONResponse({"status": "ok"})


_NOT_READY = {
    "model": NotReady,
    "description": "Not ready: the message names what is down, `checks` what each dependency answered.",
    "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
}


@router.get("/readyz", response_model=Ready, responses={503: _NOT_READY})
def readyz(state: StateDep) -> FastJSONResponse:
    """Database, broker and Redis reachable, and the periodic duties run recently; 503 names what is not.
    `checks.files` tells whether the files storage answers, without making the process unready."""
    checks: dict[str, str] = {}
    duties: DutyHealth | None = None
    try:
        with state.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
            try:
                duties = duty_health(conn, state.settings, up_for_s=time.monotonic() - state.started)
            except Exception as exc:
                # Reachable, but not what this code expects (migrations not applied, say).
                checks["duties"] = f"unreadable: {type(exc).__name__}"
    except Exception as exc:
        checks.setdefault("database", f"unreachable: {type(exc).__name__}")
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
    try:
        state.files.check()
        checks["files"] = "ok"
    except Exception as exc:
        checks["files"] = f"unavailable: {type(exc).__name__}"
    # The files storage is reported, not required: only the Files and Batch APIs need it, and a bucket that is
    # down must not take every API process out of its load balancer (they answer those requests 503 meanwhile).
    down = [name for name, value in checks.items() if value != "ok" and name not in ("duties", "files")]
    problems = [f"{', '.join(down)} unreachable"] if down else []
    if "duties" in checks:
        problems.append("the duties table is unreadable (are the migrations applied?)")
    if duties is not None:
        checks["duties"] = duties.summary
        if duties.stale:
            problems.append(
                f"periodic duties not run for over {state.settings.duty_stale_after:g}s: "
                f"{', '.join(duties.stale)} (is any worker running?)"
            )
    if problems:
        body = error_body("service_unavailable", f"not ready: {'; '.join(problems)}")
        body["checks"] = checks
        if duties is not None:
            body["duties"] = duties.detail
        return FastJSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return FastJSONResponse({"status": "ready", "checks": checks, "duties": duties.detail if duties else {}})
