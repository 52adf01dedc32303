"""`GET /v1/providers`: the health of every deployment, as the workers see it (shared through Redis; in embedded
mode, written by each worker to a file: `providers/health_snapshots`)."""

from __future__ import annotations

from fastapi import APIRouter

from switchyard.gateway_api.deps import StateDep, Viewer
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.gateway_api.schemas import DeploymentList
from switchyard.providers.status import deployment_status

router = APIRouter(prefix="/v1/providers", tags=["providers"])


@router.get("", response_model=DeploymentList)
def list_providers(principal: Viewer, state: StateDep) -> FastJSONResponse:
    """Every deployment: breaker state, recent success rate, latency p50/p95, calls in flight, rpm/tpm left."""
    return FastJSONResponse({"data": deployment_status(state.config, state.health, state.limits)})
