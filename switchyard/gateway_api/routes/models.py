"""`GET /v1/models`: every logical model, OpenAI's list shape, with ML models' signatures; `GET
/v1/models/{model}`: one model, with its versions; `PUT /v1/models/{model}/versions`: their traffic weights."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter

from switchyard.core.config import ModelConfig
from switchyard.core.errors import NotFound
from switchyard.gateway_api.api_docs import errors
from switchyard.gateway_api.deps import Admin, StateDep, Viewer
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.gateway_api.schemas import ModelDetail, ModelList, ModelWeightsUpdate
from switchyard.gateway_api.state import ApiState
from switchyard.ml.catalog import signature_for
from switchyard.ml.versions import VersionWeights, set_weights

router = APIRouter(prefix="/v1/models", tags=["models"])


def _entry(state: ApiState, name: str, model: ModelConfig) -> dict[str, Any]:
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
    if model.labels:
        entry["labels"] = model.labels
    if model.image is not None:
        entry["image"] = model.image.model_dump(mode="json")
    return entry


@router.get("", response_model=ModelList)
async def list_models(principal: Viewer, state: StateDep) -> FastJSONResponse:
    """Every logical model (OpenAI's list shape); ML models served in process with their signature."""
    data = [_entry(state, name, model) for name, model in state.config.models.items()]
    return FastJSONResponse({"object": "list", "data": data})


def _model(state: ApiState, name: str) -> ModelConfig:
    model = state.config.models.get(name)
    if model is None:
        raise NotFound(f"model '{name}' not found", param="model", code="model_not_found")
    return model


def _detail(state: ApiState, name: str, model: ModelConfig, weights: dict[str, float] | None) -> dict[str, Any]:
    entry = _entry(state, name, model)
    if model.versions and weights is not None:
        entry["versions"] = [
            {
                "version": version,
                "weight": weights.get(version, 0.0),
                "deployments": [d.name for d in model.deployments if d.version == version],
                "signature": s.as_dict() if (s := signature_for(state.signatures, name, version)) else None,
            }
            for version in model.versions
        ]
    return entry


@router.get("/{model}", response_model=ModelDetail, responses=errors(404))
async def get_model(model: str, principal: Viewer, state: StateDep) -> FastJSONResponse:
    """One model; a model with versions lists them with their current traffic weight and signature."""
    spec = _model(state, model)
    weights = None
    if spec.versions:
        reader = VersionWeights(state.config, state.db, ttl_s=0)
        weights = await anyio.to_thread.run_sync(lambda: reader.weights(model))
    return FastJSONResponse(_detail(state, model, spec, weights))


@router.put("/{model}/versions", response_model=ModelDetail, responses=errors(403, 404, 422))
async def set_model_weights(
    model: str, body: ModelWeightsUpdate, principal: Admin, state: StateDep
) -> FastJSONResponse:
    """Change the traffic weights of a model's versions (roll forward, roll back): every worker and API
    process uses them within `model_weights_cache_s`, without a restart. A version left out gets weight 0.
    The weights route every tenant's traffic: only an admin of a tenant in SWITCHYARD_OPERATOR_TENANTS may
    (403 `operator_only` for the others)."""
    _model(state, model)
    actor = principal.key_id or "api"
    weights = body.weights
    tenant = principal.tenant_id
    operators = state.settings.operator_tenants
    stored = await anyio.to_thread.run_sync(
        lambda: set_weights(state.db, state.config, model, weights, actor, tenant, operators)
    )
    return FastJSONResponse(_detail(state, model, state.config.models[model], stored))
