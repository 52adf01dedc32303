"""`GET /v1/models`: every logical model, OpenAI's list shape, with ML models' signatures."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from switchyard.gateway_api.deps import StateDep, Viewer
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.gateway_api.schemas import ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(principal: Viewer, state: StateDep) -> FastJSONResponse:
    """Every logical model (OpenAI's list shape); ML models served in process with their signature."""
    data: list[dict[str, Any]] = []
    for name, model in state.config.models.items():
        entry: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "switchyard",
            "type": model.type,
            "providers": sorted({d.provider for d in model.deployments}),
        }
        signature = state.signatures.get(name)
        if signature is not None:
            entry["signature"] = signature.as_dict()
        data.append(entry)
    return FastJSONResponse({"object": "list", "data": data})
