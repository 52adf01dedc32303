"""`/v1/workflows` and `/v1/runs`: register definitions (JSON or YAML), start, read, cancel and retry runs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio.to_thread
import orjson
from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchyard.core.errors import MalformedRequest
from switchyard.core.validation import invalid_request
from switchyard.gateway_api.api_docs import errors, request_body
from switchyard.gateway_api.bodies import YAML_TYPES, media_type, unparsed_body_error
from switchyard.gateway_api.deps import Member, StateDep, TxDep, Viewer, admission
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.webhooks.service import WebhookTarget
from switchyard.workflows import service
from switchyard.workflows.schemas import RunPage, RunView, WorkflowList, WorkflowView
from switchyard.workflows.spec import WorkflowSpec

router = APIRouter(tags=["workflows"])

RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
# Versions are a 32-bit column: a larger one is no version there is, and Postgres would refuse to compare it.
MAX_VERSION = 2**31 - 1


class RunCreate(BaseModel):
    """Starts a run: the workflow's `input`, a `version` (the latest if left out), a `webhook` for its events."""

    model_config = ConfigDict(extra="forbid")
    input: dict[str, Any] = Field(default_factory=dict)
    version: Annotated[int, Field(ge=1, le=MAX_VERSION)] | None = None
    webhook: WebhookTarget | None = None


# openapi_extra documents the bodies that these endpoints read themselves (YAML, or an empty body).
@router.post(
    "/v1/workflows",
    status_code=201,
    response_model=WorkflowView,
    openapi_extra=request_body(WorkflowSpec, "application/json", "application/yaml"),
)
async def register_workflow(request: Request, principal: Member, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Register a definition (JSON, or YAML as `application/yaml`); registering a name again makes a new version.

    422 names every problem: cycles, unknown steps or models, references to steps not upstream, bad templates."""
    body = await request.body()
    yaml_body = media_type(request) in YAML_TYPES

    # Parsing, the size checks, validation (every template compiled) and the database work block: off the event
    # loop. The YAML parser refuses aliases before it expands anything.
    def register() -> Any:
        raw = service.parse_body(body, yaml_body=yaml_body)
        return service.register(tx, state.config, principal.tenant_id, raw, actor=principal.key_id)

    try:
        workflow = await anyio.to_thread.run_sync(register)
    except orjson.JSONDecodeError:
        raise unparsed_body_error(
            request,
            MalformedRequest("request body is not valid JSON (send YAML as application/yaml)", param="body"),
            accepted="application/json or application/yaml",
        ) from None
    return FastJSONResponse(service.workflow_view(workflow), status_code=201)


@router.get("/v1/workflows", response_model=WorkflowList)
def list_workflows(principal: Viewer, tx: TxDep) -> FastJSONResponse:
    """The latest version of each definition: the tenant's and the shared ones."""
    return FastJSONResponse({"data": service.list_workflows(tx, principal.tenant_id)})


@router.get("/v1/workflows/{name}", response_model=WorkflowView, responses=errors(404))
def get_workflow(
    name: str, principal: Viewer, tx: TxDep, version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None
) -> FastJSONResponse:
    """A definition: its latest version, or `version`."""
    return FastJSONResponse(service.workflow_view(service.find(tx, principal.tenant_id, name, version)))


@router.post(
    "/v1/workflows/{name}/runs",
    dependencies=[admission()],
    status_code=202,
    response_model=RunView,
    responses=errors(404, 409, 429, 503),
    openapi_extra=request_body(RunCreate, required=False),
)
async def start_run(
    name: str,
    request: Request,
    principal: Member,
    tx: TxDep,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> FastJSONResponse:
    """Start a run. `Idempotency-Key`: the same key with the same request answers with the same run."""
    raw = await request.body()
    try:
        body = RunCreate.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise MalformedRequest("request body is not valid JSON", param="body") from None
        raise invalid_request(exc) from None
    counted = state.request_only(principal)
    admitted = await state.quotas.admit_async(counted) if counted is not None else None

    def start() -> tuple[dict[str, Any], bool]:
        run, replayed = service.start_run(
            tx,
            state.engine,
            tenant_id=principal.tenant_id,
            name=name,
            version=body.version,
            input=body.input,
            webhook=body.webhook,
            idempotency_key=idempotency_key,
            allow_private_webhooks=state.settings.webhook_allow_private,
            key_id=principal.key_id,
        )
        return service.run_view(tx, run), replayed

    # The database work (and a webhook host's name lookup) blocks: off the event loop.
    view, replayed = await anyio.to_thread.run_sync(start)
    headers = dict(admitted.headers) if admitted is not None else {}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return FastJSONResponse(view, status_code=202, headers=headers or None)


@router.get("/v1/runs", response_model=RunPage)
def list_runs(
    principal: Viewer,
    tx: TxDep,
    workflow: Annotated[str | None, Query(max_length=100)] = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> FastJSONResponse:
    """The tenant's runs, newest first; `next` is the `after` of the following page."""
    page = service.list_runs(tx, principal.tenant_id, workflow=workflow, status=status, after=after, limit=limit)
    return FastJSONResponse(page)


@router.get("/v1/runs/{run_id}", response_model=RunView, responses=errors(404))
def get_run(run_id: str, principal: Viewer, tx: TxDep) -> FastJSONResponse:
    """A run: status, progress, every step's status, output and tasks, cost."""
    return FastJSONResponse(service.get_run(tx, principal.tenant_id, run_id))


@router.post("/v1/runs/{run_id}/cancel", response_model=RunView, responses=errors(404, 409))
def cancel_run(run_id: str, principal: Member, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Cancel a run that has not finished: its steps not started never run. 409 once it has finished."""
    return FastJSONResponse(service.cancel_run(tx, state.engine, principal.tenant_id, run_id))


@router.post("/v1/runs/{run_id}/retry", response_model=RunView, responses=errors(404, 409))
def retry_run(run_id: str, principal: Member, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Run a failed or canceled run's failed and canceled steps again, keeping the succeeded ones' outputs."""
    return FastJSONResponse(service.retry_run(tx, state.engine, principal.tenant_id, run_id))
