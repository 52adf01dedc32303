"""The OpenAPI document and the interactive docs (`/docs`, `/redoc`), which load nothing from another host.

Nothing here runs while an API request is served: the document is built from the routes once, the first time
`/openapi.json` is asked for, and completed there with what FastAPI cannot see by itself —
- the bearer scheme on every route whose dependencies include `RoleRequired` (so Swagger UI's Authorize button
  sends the key), with the role in the description;
- the request bodies of the routes that read their body themselves for speed (`request_body()` below);
- the API's one error shape for every 4xx/5xx in place of FastAPI's `HTTPValidationError`.
Swagger UI's and ReDoc's scripts come from the `fastapi-offline` package and are served under /static/docs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.responses import HTMLResponse

from switchyard.gateway_api.deps import RoleRequired
from switchyard.gateway_api.input_guard import OPENAI_TAG
from switchyard.gateway_api.schemas import ErrorResponse

DOCS_STATIC = "/static/docs"
SECURITY_SCHEME = "bearer"
_REF = "#/components/schemas/{model}"
_ERROR_REF = {"$ref": _REF.format(model=ErrorResponse.__name__)}

# Models documented as request bodies of routes that parse their body themselves, by component name.
_BODY_MODELS: dict[str, type[BaseModel]] = {}

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}}
ERROR_DESCRIPTIONS = {
    400: "Malformed request: the body is not JSON, or not of the expected shape.",
    401: "No API key, or not a valid one.",
    403: "The key's role may not do this.",
    404: "No such object for this tenant (another tenant's ids are unknown ids too).",
    409: "Conflicts with the object's state, or an Idempotency-Key reused with another request.",
    413: "The request body is over the size limit.",
    415: "The body's Content-Type is not one the endpoint takes (`param` is `Content-Type`).",
    422: "Invalid input; `param` names the field.",
    429: "A rate or budget limit; retry after `Retry-After`.",
    502: "The provider or the model failed the task (its id is in `x-switchyard-task-id`).",
    503: "A dependency (database, broker, Redis) is down; retry after `Retry-After`.",
    504: "The task is still running when the wait ended; it goes on and can be polled.",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: these statuses, in the API's error shape."""
    return {status: _error_response(status) for status in statuses}


def request_body(
    model: type[BaseModel],
    *media_types: str,
    required: bool = True,
    more: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`openapi_extra=` for a route that reads its body itself: `model` (the one its input is checked with)
    under each media type (JSON unless told), `more` content types, and query `parameters` it reads itself."""
    known = _BODY_MODELS.setdefault(model.__name__, model)
    if known is not model:
        raise ValueError(f"two request models named {model.__name__}: {known} and {model}")
    ref = {"$ref": _REF.format(model=model.__name__)}
    content: dict[str, Any] = {media: {"schema": ref} for media in media_types or ("application/json",)}
    content.update(more or {})
    extra: dict[str, Any] = {"requestBody": {"required": required, "content": content}}
    if parameters:
        extra["parameters"] = parameters
    return extra


def install_docs(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """Serve /docs and /redoc with local assets, and complete the app's OpenAPI document (`routers`: those
    the app includes, where the roles that routes need are read)."""
    app.mount(DOCS_STATIC, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-static")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            oauth2_redirect_url=None,
            # No spec validation by swagger.io's online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )

    generate = app.openapi  # FastAPI's: builds the document once (again if routes are added) and keeps it
    completed: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not completed or completed[0] is not schema:
            complete(schema, routers)
            completed[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(schema: dict[str, Any], routers: Sequence[APIRouter]) -> None:
    """Add what FastAPI's document lacks (see the module's docstring), in place."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _add_body_models(schemas)
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key (`sy_...`, made by `POST /v1/keys` or `switchyard keys create`): "
                "`Authorization: Bearer sy_...`; or, when `SWITCHYARD_JWT_JWKS_URL` is set, a JWT of the identity "
                "provider."
            ),
        }
    }
    roles = {
        (route.path_format, method.lower()): _role(route.dependant)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            openai_style = OPENAI_TAG in operation.get("tags", ())
            _complete_operation(operation, roles.get((path, method)), openai_style=openai_style)
    # FastAPI's own 422 shape: never what this API answers.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)


def _complete_operation(operation: dict[str, Any], role: str | None, *, openai_style: bool) -> None:
    responses = operation.setdefault("responses", {})
    statuses: list[int] = []
    if role is not None:
        operation["security"] = [{SECURITY_SCHEME: []}]
        needs = f"Needs an API key whose role is `{role}`" + ("." if role == "admin" else " or above.")
        operation["description"] = f"{operation.get('description', '').rstrip()}\n\n{needs}".lstrip()
        statuses.append(401)
        if role != "viewer":  # every valid key is at least a viewer
            statuses.append(403)
    if "requestBody" in operation:
        statuses += [400, 413, 415]
    elif openai_style and operation.get("parameters"):
        # A parameter holding a string that cannot be stored is refused the OpenAI way (input_guard).
        statuses.append(400)
    # The OpenAI-compatible routes answer bad input with a 400, as OpenAI does; the others with a 422.
    if "422" in responses or ("requestBody" in operation and not openai_style):
        statuses.append(422)
    if role is not None:  # a key not in the cache is looked up in the database
        statuses.append(503)
    for status in statuses:
        entry = responses.get(str(status))
        if entry is None or _fastapi_422(entry):
            responses[str(status)] = _error_response(status)
    operation["responses"] = dict(sorted(responses.items()))


def _error_response(status: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": dict(_ERROR_REF)}},
    }
    if status in (429, 503):
        entry["headers"] = _RETRY_AFTER
    return entry


def _fastapi_422(entry: dict[str, Any]) -> bool:
    schema = entry.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def _role(dependant: Dependant) -> str | None:
    for dependency in _dependencies(dependant):
        if isinstance(dependency.call, RoleRequired):
            return dependency.call.role
    return None


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependencies(dependency)


def _add_body_models(schemas: dict[str, Any]) -> None:
    """The error shape and the request models of `request_body()` (with the models they use) as components."""
    models: list[type[BaseModel]] = [ErrorResponse, *_BODY_MODELS.values()]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    for name, definition in top.get("$defs", {}).items():
        # The same model from FastAPI's generation differs only in style (`default: null` left out, say).
        existing = schemas.setdefault(name, definition)
        if set(existing.get("properties", {})) != set(definition.get("properties", {})):
            raise ValueError(f"two models would be the OpenAPI component {name}")
