"""`POST /v1/predict/{model}`: a predict task, submitted and awaited in one request. JSON `{"inputs": ...}`
or a CSV upload (a `text/csv` body, or a multipart form with a `file` field) for models with one 2-D input."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError

from switchyard.core.errors import GatewayTimeout, InvalidRequest, MalformedRequest, UpstreamFailed
from switchyard.core.validation import invalid_request
from switchyard.gateway_api.deps import Member, StateDep
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.gateway_api.state import ApiState
from switchyard.tasks import service
from switchyard.tasks.schemas import TaskCreate

router = APIRouter(prefix="/v1/predict", tags=["predict"])

DEFAULT_WAIT_S = 30.0
# A failed task's error type, as the status of the synchronous answer.
_FAILED_STATUS = {"invalid_request": InvalidRequest, "timeout": GatewayTimeout}


@router.post("/{model}")
async def predict(model: str, request: Request, principal: Member, state: StateDep) -> FastJSONResponse:
    started = time.perf_counter()
    inputs, options = await _read_body(request, state, model)
    try:
        body = TaskCreate(type="predict", model=model, input={"inputs": inputs}, options=options)
    except ValidationError as exc:
        raise invalid_request(exc) from None

    def create() -> str:
        with state.db.transaction() as tx:
            created = service.create_task(
                tx,
                state.config,
                state.signatures,
                state.dispatcher,
                tenant_id=principal.tenant_id,
                body=body,
                pinned_provider=request.headers.get("x-provider"),
                idempotency_key=request.headers.get("idempotency-key"),
                idempotency_ttl_s=state.settings.idempotency_ttl_s,
            )
            return created.task.id

    task_id = await anyio.to_thread.run_sync(create)
    wait_s = float(options.get("timeout_s") or DEFAULT_WAIT_S)
    if not await state.completions.wait(task_id, wait_s):
        raise GatewayTimeout(f"task {task_id} is still running after {wait_s:.0f}s; poll GET /v1/tasks/{task_id}")

    def read() -> dict[str, Any]:
        with state.db.transaction() as tx:
            return service.get_task(tx, principal.tenant_id, task_id)

    task = await anyio.to_thread.run_sync(read)
    if task["status"] != "succeeded":
        error = task["error"] or {"type": "provider_error", "message": task["status"]}
        raise _FAILED_STATUS.get(error["type"], UpstreamFailed)(f"task {task_id} {task['status']}: {error['message']}")
    result = task["result"]
    return FastJSONResponse(
        {
            "outputs": result["outputs"],
            "model": model,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "task_id": task_id,
            "provider": result.get("provider"),
            "batch_size": result.get("batch_size"),
            "cost_usd": task["cost_usd"],
        },
        headers={"x-switchyard-task-id": task_id, "x-switchyard-cost-usd": f"{task['cost_usd']:.10f}"},
    )


async def _read_body(request: Request, state: ApiState, model: str) -> tuple[Any, dict[str, Any]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "text/csv":
        return _csv_inputs((await request.body()).decode("utf-8-sig", "replace"), state, model, request), {}
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidRequest("a multipart upload needs a CSV file in the 'file' field", param="file")
        text = (await upload.read()).decode("utf-8-sig", "replace")
        return _csv_inputs(text, state, model, request), {}
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise MalformedRequest("request body is not valid JSON", param="body") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InvalidRequest('the body must be {"inputs": {name: array}}', param="inputs")
    unknown = set(payload) - {"inputs", "options"}
    if unknown:
        raise InvalidRequest("unknown field", param=sorted(unknown)[0])
    options = payload.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidRequest("options must be an object", param="options")
    return payload["inputs"], options


def _csv_inputs(text: str, state: ApiState, model: str, request: Request) -> dict[str, Any]:
    """CSV rows as the model's single 2-D input (a header row, if any, is skipped)."""
    signature = state.signatures.get(model)
    name = request.query_params.get("input")
    if signature is not None:
        matrices = [t for t in signature.inputs if len(t.shape) == 2]
        if len(signature.inputs) != 1 or not matrices:
            raise InvalidRequest(
                f"CSV upload needs a model with one 2-D input; '{model}' has other inputs", param="file"
            )
        name = matrices[0].name
    elif model not in state.config.models:
        raise InvalidRequest(f"unknown model '{model}'", param="model")
    elif name is None:
        raise InvalidRequest("for a model without a local signature, name the input: ?input=NAME", param="input")
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]
    if not rows:
        raise InvalidRequest("the CSV has no data rows", param="file")
    try:
        values = [[float(cell) for cell in row] for row in rows]
    except ValueError:
        raise InvalidRequest("every CSV cell after the header must be a number", param="file") from None
    return {name: values}


def _numeric(row: list[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True
