"""The OpenAPI document and the interactive docs, as a newcomer meets them: served by the real API process.

The document must describe every operation (its body, its success answer, its errors in the API's one error
shape, the bearer key), the answers the API really gives must match it, and /docs and /redoc must work with no
request to another host.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from jsonschema import Draft202012Validator

from switchyard.tasks.openai_mapping import EXCHANGE_FIELDS
from switchyard.tasks.schemas import ChatInput
from tests.support import Stack, chat, wait_status, wait_task

# POST routes that take no input: their endpoints read no body.
BODILESS = {
    ("post", "/v1/tasks/{task_id}/cancel"),
    ("post", "/v1/runs/{run_id}/cancel"),
    ("post", "/v1/batches/{batch_id}/cancel"),
    ("post", "/v1/runs/{run_id}/retry"),
    ("post", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"),
    ("post", "/v1/ws/ticket"),
}
UNAUTHENTICATED = {"/healthz", "/readyz"}
FEATURES = [0.9, 0.2, 68.4, 1.0, 2.0, 0.14, 0.05, 286.5]


@pytest.fixture(scope="module")
def doc(stack: Stack) -> dict[str, Any]:
    response = httpx.get(f"{stack.url}/openapi.json")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def success_status(operation: dict[str, Any]) -> str:
    return min(status for status in operation["responses"] if status.startswith("2"))


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == "$ref"] + [r for v in value.values() for r in refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    return []


# --- the document -------------------------------------------------------------------------------------------------


def test_every_operation_documents_its_success_answer(doc: dict[str, Any]) -> None:
    assert len(operations(doc)) >= 30
    for method, path, operation in operations(doc):
        status = success_status(operation)
        if status == "204":
            assert "content" not in operation["responses"][status], (method, path)
            continue
        content = operation["responses"][status].get("content")
        assert content, f"{method} {path}: no content for {status}"
        for media, entry in content.items():
            schema = entry.get("schema")
            assert schema, f"{method} {path} {status} {media}"
            assert "$ref" in schema or "type" in schema, f"{method} {path} {status} {media}"


def test_every_operation_with_input_documents_its_body(doc: dict[str, Any]) -> None:
    for method, path, operation in operations(doc):
        if method not in ("post", "put", "patch"):
            continue
        if (method, path) in BODILESS:
            assert "requestBody" not in operation, f"{method} {path} is listed as taking no body"
            continue
        body = operation.get("requestBody")
        assert body, f"{method} {path}: no requestBody"
        assert body["content"], f"{method} {path}"
        for media, entry in body["content"].items():
            assert "$ref" in entry["schema"] or "type" in entry["schema"], f"{method} {path} {media}"
    # The routes that read their body themselves document each media type they accept.
    paths = doc["paths"]
    predict = paths["/v1/predict/{model}"]["post"]["requestBody"]["content"]
    assert predict["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    assert set(predict) == {"application/json", "text/csv", "multipart/form-data"}
    assert predict["multipart/form-data"]["schema"]["required"] == ["file"]
    workflows = paths["/v1/workflows"]["post"]["requestBody"]["content"]
    assert set(workflows) == {"application/json", "application/yaml"}
    assert workflows["application/yaml"]["schema"] == {"$ref": "#/components/schemas/WorkflowSpec"}
    assert paths["/v1/workflows/{name}/runs"]["post"]["requestBody"]["required"] is False
    for path, model in (
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/embeddings", "EmbeddingRequest"),
        ("/v1/moderations", "ModerationRequest"),
    ):
        content = paths[path]["post"]["requestBody"]["content"]
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}


def test_documented_chat_request_is_what_the_endpoint_accepts(doc: dict[str, Any]) -> None:
    documented = doc["components"]["schemas"]["ChatCompletionRequest"]
    accepted = set(ChatInput.model_fields) | set(EXCHANGE_FIELDS) | {"logprobs", "top_logprobs"}
    assert set(documented["properties"]) == accepted
    assert documented["additionalProperties"] is False  # unknown fields are refused
    assert {"model", "messages"} <= set(documented["required"])


def test_bearer_key_is_the_security_of_every_v1_operation(doc: dict[str, Any]) -> None:
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert {k: scheme[k] for k in ("type", "scheme")} == {"type": "http", "scheme": "bearer"}
    for method, path, operation in operations(doc):
        if path in UNAUTHENTICATED:
            assert "security" not in operation, path
            continue
        assert path.startswith("/v1/"), path
        assert operation["security"] == [{"bearer": []}], f"{method} {path}"
        assert "401" in operation["responses"], f"{method} {path}"
        assert "Needs an API key whose role is" in operation["description"], f"{method} {path}"
    # The role is read from the route's dependencies: 403 only where a viewer's key is not enough.
    assert "403" not in doc["paths"]["/v1/tasks"]["get"]["responses"]
    assert "403" in doc["paths"]["/v1/tasks"]["post"]["responses"]
    assert "`admin`" in doc["paths"]["/v1/webhooks"]["get"]["description"]


def test_errors_are_documented_in_the_api_error_shape(doc: dict[str, Any]) -> None:
    assert "ValidationError" not in str(doc)  # neither HTTPValidationError nor its items
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorResponse"]["required"] == ["error"]
    detail = resolve(doc, schemas["ErrorResponse"]["properties"]["error"])
    assert set(detail["properties"]) == {"type", "message", "param", "code"}
    for method, path, operation in operations(doc):
        for status, response in operation["responses"].items():
            if status < "400":
                continue
            schema = response["content"]["application/json"]["schema"]
            if path == "/readyz":  # the error shape, with what each dependency answered
                assert schema == {"$ref": "#/components/schemas/NotReady"}
                assert resolve(doc, schema)["properties"]["error"] == schemas["ErrorResponse"]["properties"]["error"]
                continue
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, f"{method} {path} {status}"
        if "requestBody" in operation and "security" in operation:
            bad_input = "400" if "openai" in operation["tags"] else "422"
            assert {"400", "401", "413", bad_input} <= set(operation["responses"]), f"{method} {path}"


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    found = refs(doc)
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref


# --- the answers match the document -------------------------------------------------------------------------------


class Documented:
    """Checks answers against the document: valid for their schema, and no field the schema does not name."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def _validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        return Draft202012Validator({**schema, "components": self.doc["components"]})

    def check(self, response: httpx.Response, method: str, path: str, status: int | None = None) -> Any:
        operation = self.doc["paths"][path][method]
        expected = str(status) if status is not None else success_status(operation)
        assert str(response.status_code) == expected, response.text
        schema = operation["responses"][expected]["content"]["application/json"]["schema"]
        body = response.json()
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in self._validator(schema).iter_errors(body)]
        assert not errors, f"{method} {path}: {errors}"
        unnamed = self._unnamed(body, schema, "")
        assert not unnamed, f"{method} {path}: fields the document does not name: {unnamed}"
        return body

    def _unnamed(self, value: Any, schema: dict[str, Any], where: str) -> list[str]:
        schema = resolve(self.doc, schema)
        for option in schema.get("anyOf", []):
            if self._validator(option).is_valid(value):
                return self._unnamed(value, option, where)
        if isinstance(value, list) and "items" in schema:
            return [u for i, item in enumerate(value) for u in self._unnamed(item, schema["items"], f"{where}[{i}]")]
        if not isinstance(value, dict):
            return []
        out = []
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                out += self._unnamed(item, properties[key], f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += self._unnamed(item, schema["additionalProperties"], f"{where}.{key}")
            elif properties and not schema.get("additionalProperties"):
                out.append(f"{where}.{key}")
        return out


def test_answers_match_the_document(stack: Stack, client: httpx.Client, doc: dict[str, Any]) -> None:
    documented = Documented(doc)
    check = documented.check
    check(httpx.get(f"{stack.url}/healthz"), "get", "/healthz")
    check(httpx.get(f"{stack.url}/readyz"), "get", "/readyz")

    created = check(
        client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("Hi")}),
        "post",
        "/v1/tasks",
    )
    wait_task(client, created["id"])
    check(client.get(f"/v1/tasks/{created['id']}"), "get", "/v1/tasks/{task_id}")
    check(client.get("/v1/tasks", params={"limit": 5}), "get", "/v1/tasks")
    predict_task = client.post(
        "/v1/tasks", json={"type": "predict", "model": "risk-classifier", "input": {"inputs": {"features": [FEATURES]}}}
    )
    check(client.get(f"/v1/tasks/{wait_task(client, predict_task.json()['id'])['id']}"), "get", "/v1/tasks/{task_id}")
    check(client.get("/v1/models"), "get", "/v1/models")
    check(client.get("/v1/providers"), "get", "/v1/providers")
    for group_by in ("model", "provider", "day"):
        check(client.get("/v1/usage", params={"group_by": group_by}), "get", "/v1/usage")
    check(client.get("/v1/events", params={"limit": 20}), "get", "/v1/events")

    completion = client.post(
        "/v1/chat/completions", json={"model": "chat-default", "messages": chat("Hey")["messages"]}
    )
    check(completion, "post", "/v1/chat/completions")
    for encoding in ("float", "base64"):
        embedded = client.post(
            "/v1/embeddings", json={"model": "embed-default", "input": ["a"], "encoding_format": encoding}
        )
        check(embedded, "post", "/v1/embeddings")
    check(client.post("/v1/moderations", json={"input": "fine [[flag]]"}), "post", "/v1/moderations")
    predicted = client.post("/v1/predict/risk-classifier", json={"inputs": {"features": [FEATURES]}})
    check(predicted, "post", "/v1/predict/{model}")
    csv = "\n".join(",".join(map(str, FEATURES)) for _ in range(2))
    csv_response = client.post("/v1/predict/risk-classifier", content=csv, headers={"content-type": "text/csv"})
    check(csv_response, "post", "/v1/predict/{model}")

    name = f"doc_{secrets.token_hex(3)}"
    yaml_body = f"name: {name}\nsteps:\n  - id: a\n    type: chat\n    model: chat-default\n"
    yaml_body += "    input: {messages: [{role: user, content: '{{ input.text }}'}]}\n"
    registered = client.post("/v1/workflows", content=yaml_body, headers={"content-type": "application/yaml"})
    check(registered, "post", "/v1/workflows")
    check(client.get("/v1/workflows"), "get", "/v1/workflows")
    check(client.get(f"/v1/workflows/{name}"), "get", "/v1/workflows/{name}")
    started = check(
        client.post(f"/v1/workflows/{name}/runs", json={"input": {"text": "x"}}), "post", "/v1/workflows/{name}/runs"
    )
    wait_status(client, f"/v1/runs/{started['id']}")
    check(client.get(f"/v1/runs/{started['id']}"), "get", "/v1/runs/{run_id}")
    check(client.get("/v1/runs", params={"workflow": name}), "get", "/v1/runs")
    check(client.post(f"/v1/runs/{started['id']}/retry"), "post", "/v1/runs/{run_id}/retry", 409)

    check(client.get("/v1/webhooks"), "get", "/v1/webhooks")
    check(client.get("/v1/webhooks/signing-secret"), "get", "/v1/webhooks/signing-secret")

    made = check(
        client.post(
            "/v1/keys",
            json={"name": "doc", "role": "viewer", "models": ["chat-default"], "limits": {"rpm": 5}},
        ),
        "post",
        "/v1/keys",
    )
    check(client.get("/v1/keys", params={"limit": 2}), "get", "/v1/keys")
    check(client.get(f"/v1/keys/{made['id']}"), "get", "/v1/keys/{key_id}")
    check(client.patch(f"/v1/keys/{made['id']}", json={"budget": {"daily_usd": 1}}), "patch", "/v1/keys/{key_id}")
    assert client.delete(f"/v1/keys/{made['id']}").status_code == 204
    check(client.patch(f"/v1/keys/{made['id']}", json={"name": "x"}), "patch", "/v1/keys/{key_id}", 409)
    check(client.get("/v1/keys/key_nope"), "get", "/v1/keys/{key_id}", 404)
    check(client.post("/v1/keys", json={"tier": "nope"}), "post", "/v1/keys", 422)
    check(client.get("/v1/tenant/limits"), "get", "/v1/tenant/limits")
    check(client.put("/v1/tenant/limits", json={}), "put", "/v1/tenant/limits")
    check(client.get("/v1/tenant/budget"), "get", "/v1/tenant/budget")
    check(client.put("/v1/tenant/budget", json={}), "put", "/v1/tenant/budget")
    check(client.get("/v1/audit", params={"limit": 3}), "get", "/v1/audit")

    # Errors, each in the documented shape.
    check(httpx.get(f"{stack.url}/v1/tasks"), "get", "/v1/tasks", 401)
    check(client.get("/v1/tasks/task_nope"), "get", "/v1/tasks/{task_id}", 404)
    check(client.post("/v1/tasks", json={"type": "chat"}), "post", "/v1/tasks", 422)
    check(
        client.post("/v1/tasks", content=b"{", headers={"content-type": "application/json"}), "post", "/v1/tasks", 400
    )
    no_messages = client.post("/v1/chat/completions", json={"model": "chat-default", "messages": []})
    check(no_messages, "post", "/v1/chat/completions", 400)
    unknown_model = client.post("/v1/chat/completions", json={"model": "nope", "messages": chat("Hi")["messages"]})
    check(unknown_model, "post", "/v1/chat/completions", 404)
    too_big = client.post("/v1/embeddings", content=b"x" * (3 * 1024 * 1024))  # the default limit is 2 MiB
    check(too_big, "post", "/v1/embeddings", 413)

    # Limits and budgets: GET /v1/budget, and the 429 of a key over its limit or budget.
    check(client.get("/v1/budget"), "get", "/v1/budget")
    limited = stack.new_key(f"doc_{secrets.token_hex(3)}", "member")
    stack.set_policy(limited, limits={"rpm": 1}, budget={"max_per_call_usd": 0.001, "daily_usd": 1.0})
    with stack.client(limited) as lc:
        check(lc.get("/v1/budget"), "get", "/v1/budget")
        body = {"model": "chat-default", "messages": chat("Hi")["messages"], "max_tokens": 5}
        expensive = lc.post("/v1/chat/completions", json={**body, "max_tokens": 100_000})
        check(expensive, "post", "/v1/chat/completions", 429)
        check(lc.post("/v1/chat/completions", json=body), "post", "/v1/chat/completions")
        again = lc.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("Hi", max_tokens=5)})
        if again.status_code != 429:  # the minute rolled over between the two calls
            again = lc.post(
                "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("x", max_tokens=5)}
            )
        check(again, "post", "/v1/tasks", 429)


SUBMITTING = [
    ("post", "/v1/tasks"),
    ("post", "/v1/chat/completions"),
    ("post", "/v1/embeddings"),
    ("post", "/v1/moderations"),
    ("post", "/v1/predict/{model}"),
    ("post", "/v1/workflows/{name}/runs"),
    ("post", "/v1/batches"),
]


def test_submitting_endpoints_document_429(doc: dict[str, Any]) -> None:
    """Every endpoint that submits work may be refused by a limit or a budget."""
    for method, path in SUBMITTING:
        assert "429" in doc["paths"][path][method]["responses"], (method, path)
    assert "200" in doc["paths"]["/v1/budget"]["get"]["responses"]


# --- the interactive docs, offline ------------------------------------------------------------------------------


class _Links(HTMLParser):
    """Every URL a page names: attributes, CSS url(...), and URL-like strings in its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in = tag
        for name, value in attrs:
            if value and (name in ("src", "href", "action", "spec-url", "poster", "data") or "url(" in value):
                self.urls += [value] if "url(" not in value else re.findall(r"url\(['\"]?([^'\")]+)", value)

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "style":
            self.urls += re.findall(r"url\(['\"]?([^'\")]+)", data)
            self.urls += re.findall(r"@import\s+['\"]([^'\"]+)", data)
        elif self._in == "script":
            for literal in re.findall(r"""(['"`])((?:(?!\1).)*)\1""", data):
                text = literal[1]
                if "://" in text or text.startswith(("/", "//")) or re.match(r"^[\w.-]+\.(js|css|json)$", text):
                    self.urls.append(text)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_another_host(stack: Stack, page: str) -> None:
    url = f"{stack.url}{page}"
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    links = _Links()
    links.feed(response.text)
    assert links.urls, response.text
    here = urlsplit(stack.url).netloc
    assets = []
    for found in links.urls:
        absolute = urljoin(url, found)
        assert urlsplit(absolute).netloc == here, f"{page} names {found}"
        assert urlsplit(absolute).scheme == "http", f"{page} names {found}"
        assets.append(absolute)
    assert any(a.endswith("/openapi.json") for a in assets)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        served = httpx.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 1000, asset
    assert "fonts.googleapis" not in response.text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize(
    ("page", "rendered"), [("/docs", "opblock"), ("/redoc", "operation/create_task_v1_tasks_post")]
)
def test_docs_render_in_a_browser_with_no_outside_network(
    stack: Stack, tmp_path: Any, page: str, rendered: str
) -> None:
    # Every request but those to 127.0.0.1 goes to a proxy that is not there: an outside asset would not load.
    argv = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path}",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
        "--virtual-time-budget=20000",
        "--dump-dom",
        f"{stack.url}{page}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert rendered in dom, dom[-3000:]
    assert "/v1/chat/completions" in dom
