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

from switchyard.core.errors import InvalidRequest, MalformedRequest, NotFound, UnsupportedMediaType
from switchyard.core.validation import invalid_request
from switchyard.gateway_api import sync
from switchyard.gateway_api.api_docs import errors, request_body
from switchyard.gateway_api.bodies import unparsed_body_error
from switchyard.gateway_api.deps import Member, StateDep, admission
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.gateway_api.schemas import PredictRequest, PredictResponse
from switchyard.gateway_api.state import ApiState
from switchyard.ml.catalog import signature_for
from switchyard.ml.images import IMAGE_MEDIA_TYPES, image_inputs
from switchyard.tasks.schemas import TaskCreate
from switchyard.workers.queues import ML

router = APIRouter(prefix="/v1/predict", tags=["predict"])

DEFAULT_WAIT_S = 30.0


_CSV_EXAMPLE = (
    "leverage,volatility,esg_score,liquidity_ratio,sector_risk,country_risk,revenue_growth,carbon_intensity\n"
    "0.9,0.2,68.4,1.0,2.0,0.14,0.05,286.5\n"
)
# The body is read here, not by FastAPI: JSON, a CSV body or a multipart upload.
_BODY = request_body(
    PredictRequest,
    more={
        "text/csv": {
            "schema": {"type": "string", "description": "One row per prediction; a header row is skipped."},
            "example": _CSV_EXAMPLE,
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary", "description": "A CSV file."}},
                "required": ["file"],
            }
        },
    },
    parameters=[
        {
            "name": "input",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "With CSV, for a model whose signature is not known here: the input the rows fill.",
        }
    ],
)


@router.post(
    "/{model}",
    dependencies=[admission(ML)],
    response_model=PredictResponse,
    responses=errors(404, 409, 429, 502, 503, 504),
    openapi_extra=_BODY,
)
async def predict(model: str, request: Request, principal: Member, state: StateDep) -> FastJSONResponse:
    """Run a prediction and answer with its outputs: `{"inputs": {name: array}}`, or CSV rows for a model with
    one 2-D input (a `text/csv` body, or a multipart upload in `file`)."""
    started = time.perf_counter()
    if model not in state.config.models:
        # The model is the resource the path names: unknown, it is a 404 (as for GET /v1/models/{model}).
        raise NotFound(f"model '{model}' not found", param="model", code="model_not_found")
    task_input, options = await _read_body(request, state, model)
    version = request.query_params.get("version")
    if version is not None:
        options = {**options, "version": version}
    try:
        body = TaskCreate(type="predict", model=model, input=task_input, options=options)
    except ValidationError as exc:
        raise invalid_request(exc) from None

    with state.waiters.hold(principal.tenant_id):
        task_id = await sync.create(state, principal, body, request)
        task = await sync.wait_for(state, principal, task_id, float(options.get("timeout_s") or DEFAULT_WAIT_S))
    if task["status"] != "succeeded":
        raise sync.failure(task)
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
            **{key: result[key] for key in ("version", "top_k") if key in result},
        },
        headers=sync.task_headers(task, request),
    )


async def _read_body(request: Request, state: ApiState, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The task's input (`{"inputs": ...}` or, in JSON, `{"images": [base64, ...]}`) and its options."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "text/csv":
        return {"inputs": _csv_inputs((await request.body()).decode("utf-8-sig", "replace"), state, model, request)}, {}
    if content_type in IMAGE_MEDIA_TYPES:
        return {"inputs": await _image_inputs(state, model, request, [await request.body()], "body")}, {}
    if content_type == "multipart/form-data":
        form = await request.form()
        uploads = [u for u in form.getlist("file") if not isinstance(u, str)]
        if not uploads:
            kind = "an image" if state.config.models[model].image is not None else "a CSV file"
            raise InvalidRequest(f"a multipart upload needs {kind} in the 'file' field", param="file")
        if state.config.models[model].image is not None:
            # Every `file` is an image: one request, one task, one batch.
            blobs = [await upload.read() for upload in uploads]
            return {"inputs": await _image_inputs(state, model, request, blobs, "file")}, {}
        text = (await uploads[0].read()).decode("utf-8-sig", "replace")
        return {"inputs": _csv_inputs(text, state, model, request)}, {}
    accepted = "application/json, text/csv, multipart/form-data or an image"
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise unparsed_body_error(
            request, MalformedRequest("request body is not valid JSON", param="body"), accepted
        ) from None
    if not isinstance(payload, dict) or not ("inputs" in payload or "images" in payload):
        raise unparsed_body_error(
            request, InvalidRequest('the body must be {"inputs": {name: array}}', param="inputs"), accepted
        )
    unknown = set(payload) - {"inputs", "images", "options"}
    if unknown:
        raise InvalidRequest("unknown field", param=sorted(unknown)[0])
    options = payload.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidRequest("options must be an object", param="options")
    # Base64 images are decoded when the task is checked (on a thread: see tasks.service._plain).
    return {k: payload[k] for k in ("inputs", "images") if k in payload}, options


async def _image_inputs(
    state: ApiState, model: str, request: Request, blobs: list[bytes], param: str
) -> dict[str, Any]:
    """Images decoded and preprocessed as the model's config says, on a thread (blocking, CPU-bound work)."""
    spec = state.config.models[model]
    if spec.image is None:
        raise UnsupportedMediaType(f"model '{model}' does not take images", param=param)
    limit = state.settings.max_images_per_request
    if len(blobs) > limit:
        raise InvalidRequest(f"at most {limit} images a request, {len(blobs)} were sent", param=param)
    signature = signature_for(state.signatures, model, request.query_params.get("version"))
    pixels = state.settings.max_image_pixels
    inputs: dict[str, Any] = await anyio.to_thread.run_sync(
        lambda: image_inputs(model, spec, signature, blobs, pixels, param=param)["inputs"]
    )
    return inputs


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
    elif name is None:
        raise InvalidRequest("for a model without a local signature, name the input: ?input=NAME", param="input")
    try:
        # newline="": the csv module reads line ends itself (a lone \r is one, not an error in a field).
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row and any(c.strip() for c in row)]
    except csv.Error as exc:
        raise InvalidRequest(f"the CSV cannot be read: {exc}", param="file") from None
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
