"""Strings Postgres cannot store — U+0000 and lone UTF-16 surrogates — sent to every entry point of the real
stack, in values and in object keys, in JSON and YAML bodies, path and query parameters: each is a 4xx in the
API's error shape naming the field (a 400 in OpenAI's shape on the OpenAI-compatible routes), never a 500. And
what only looks like such a string (an escaped backslash, a valid surrogate pair) still goes through."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from websockets.asyncio.client import connect

from switchyard.defaults import MODELS_DIR
from switchyard.gateway_api.errors import unstorable_in_database
from tests.support import Stack, wait_task

REFERENCE = json.loads((MODELS_DIR / "risk_classifier.reference.json").read_text())
ROWS: list[list[float]] = REFERENCE["inputs"]

# Each bad character, and how it is written back in a `param` (escaped: a lone surrogate cannot be encoded).
BAD = {"nul": ("\x00", "\\u0000"), "surrogate": ("\ud800", "\\ud800")}


def raw_json(value: Any) -> bytes:
    """JSON with every non-ASCII character escaped, so a lone surrogate goes over the wire as `\\ud800`
    (httpx's `json=` would have to encode it as UTF-8, which it cannot)."""
    return json.dumps(value).encode()


def post(client: httpx.Client, path: str, body: Any, content_type: str = "application/json") -> httpx.Response:
    return client.post(path, content=raw_json(body), headers={"Content-Type": content_type})


def assert_refused(response: httpx.Response, status: int, param: str) -> None:
    """A `status` in API.md's error shape that names `param`, in the message too."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]
    assert "U+" in error["message"]


def chat_task(content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {
        "type": "chat",
        "model": "chat-default",
        "input": {"messages": [{"role": "user", "content": content}]},
        **fields,
    }


def workflow(wf: str, content: str = "v") -> dict[str, Any]:
    steps = [
        {
            "id": "only",
            "type": "chat",
            "model": "chat-default",
            "input": {"messages": [{"role": "user", "content": content}]},
        }
    ]
    return {"name": wf, "steps": steps}


@pytest.fixture(scope="module")
def sdk(stack: Stack, admin_key: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=admin_key, max_retries=0, timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="module")
def registered(stack: Stack, admin_key: str) -> str:
    """A workflow to start runs of."""
    wf = f"wf_{secrets.token_hex(4)}"
    with stack.client(admin_key) as client:
        assert post(client, "/v1/workflows", workflow(wf)).status_code == 201
    return wf


# --- POST /v1/tasks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize(
    ("where", "make"),
    [
        ("input.messages[0].content", lambda c, k: chat_task(f"a{c}b")),
        ("input.messages[0].x{k}", lambda c, k: chat_task() | {"input": {"messages": [{"role": "user", f"x{c}": 1}]}}),
        ("metadata.customer", lambda c, k: chat_task(metadata={"customer": f"c{c}"})),
        ("metadata.cust{k}", lambda c, k: chat_task(metadata={f"cust{c}": "c1"})),
        ("options.provider", lambda c, k: chat_task(options={"provider": f"fake{c}"})),
        ("webhook.url", lambda c, k: chat_task(webhook={"url": f"https://example.com/{c}"})),
        (
            "webhook.events[0]",
            lambda c, k: chat_task(webhook={"url": "https://example.com/h", "events": [f"task.{c}"]}),
        ),
        ("model", lambda c, k: chat_task() | {"model": f"chat{c}"}),
        ("input.input", lambda c, k: {"type": "embed", "model": "embed-default", "input": {"input": f"a{c}"}}),
    ],
)
def test_task_body(client: httpx.Client, kind: str, where: str, make: Any) -> None:
    char, escaped = BAD[kind]
    assert_refused(post(client, "/v1/tasks", make(char, escaped)), 422, where.format(k=escaped))


def test_task_refused_before_anything_is_stored(stack: Stack, client: httpx.Client) -> None:
    marker = secrets.token_hex(4)
    body = chat_task(metadata={"marker": marker, "bad": "x\x00"})
    key = f"idem-{marker}"
    response = client.post(
        "/v1/tasks", content=raw_json(body), headers={"Content-Type": "application/json", "Idempotency-Key": key}
    )
    assert_refused(response, 422, "metadata.bad")
    assert stack.sql("SELECT count(*) FROM tasks WHERE idempotency_key = %s", key) == [(0,)]
    # The same key with a good body makes the task: nothing of the refused request was kept.
    good = client.post("/v1/tasks", json=chat_task(metadata={"marker": marker}), headers={"Idempotency-Key": key})
    assert good.status_code == 202, good.text
    assert "Idempotent-Replayed" not in good.headers


def test_raw_surrogate_bytes_are_refused(client: httpx.Client) -> None:
    """A surrogate written as UTF-8 bytes (invalid UTF-8 that Python's decoder lets through)."""
    body = raw_json(chat_task("a-surrogate")).replace(b"-surrogate", b"\xed\xa0\x80")
    response = client.post("/v1/tasks", content=body, headers={"Content-Type": "application/json"})
    assert_refused(response, 422, "input.messages[0].content")


def test_look_alikes_still_work(client: httpx.Client) -> None:
    """An escaped backslash before 'u0000' is six ordinary characters; an escaped surrogate pair is one
    character (an emoji). Both are stored and come back as sent."""
    content = "literal \\u0000 and \\ud800, and \U0001f600"
    body = raw_json(chat_task(content, metadata={"k\\u0000": "\U0001f600"}))
    assert b"\\\\u0000" in body
    assert b"\\ud83d\\ude00" in body
    response = client.post("/v1/tasks", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    task = wait_task(client, response.json()["id"])
    assert task["status"] == "succeeded", task
    assert task["result"]["content"] == f"echo: {content}"
    assert task["metadata"] == {"k\\u0000": "\U0001f600"}


# --- OpenAI-compatible endpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize(
    ("path", "where", "make"),
    [
        (
            "/v1/chat/completions",
            "messages[0].content",
            lambda c: {"model": "chat-default", "messages": [{"role": "user", "content": f"a{c}"}]},
        ),
        (
            "/v1/chat/completions",
            "messages[0].content[0].text",
            lambda c: {
                "model": "chat-default",
                "messages": [{"role": "user", "content": [{"type": "text", "text": c}]}],
            },
        ),
        (
            "/v1/chat/completions",
            "metadata.k{k}",
            lambda c: {
                "model": "chat-default",
                "messages": [{"role": "user", "content": "a"}],
                "metadata": {f"k{c}": "v"},
            },
        ),
        (
            "/v1/chat/completions",
            "user",
            lambda c: {"model": "chat-default", "messages": [{"role": "user", "content": "a"}], "user": c},
        ),
        (
            "/v1/chat/completions",
            "model",
            lambda c: {"model": f"chat-default{c}", "messages": [{"role": "user", "content": "a"}]},
        ),
        ("/v1/embeddings", "input[1]", lambda c: {"model": "embed-default", "input": ["ok", f"a{c}"]}),
        ("/v1/embeddings", "input", lambda c: {"model": "embed-default", "input": f"a{c}"}),
        ("/v1/moderations", "input", lambda c: {"model": "moderate-default", "input": f"a{c}"}),
        ("/v1/moderations", "x{k}", lambda c: {"input": "a", f"x{c}": 1}),
    ],
)
def test_openai_body(client: httpx.Client, kind: str, path: str, where: str, make: Any) -> None:
    char, escaped = BAD[kind]
    assert_refused(post(client, path, make(char)), 400, where.format(k=escaped))


def test_openai_sdk_sees_a_bad_request_naming_the_field(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "a\x00b"}])
    assert caught.value.status_code == 400
    assert caught.value.param == "messages[0].content"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model="embed-default", input=["fine", "nul\x00"])
    assert caught.value.param == "input[1]"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="chat-default", messages=[{"role": "user", "content": "hi"}], metadata={"k\x00": "v"}
        )
    assert caught.value.param == "metadata.k\\u0000"
    # And a good request through the same client still works.
    completion = sdk.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "hi there"}])
    assert completion.choices[0].message.content == "echo: hi there"


def test_openai_streamed_request_is_refused_before_streaming(client: httpx.Client) -> None:
    body = {"model": "chat-default", "stream": True, "messages": [{"role": "user", "content": "a\ud800"}]}
    assert_refused(post(client, "/v1/chat/completions", body), 400, "messages[0].content")


# --- /v1/predict ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BAD)
def test_predict_json(client: httpx.Client, kind: str) -> None:
    char, escaped = BAD[kind]
    path = "/v1/predict/risk-classifier"
    assert_refused(post(client, path, {"inputs": {f"features{char}": ROWS[:1]}}), 422, f"inputs.features{escaped}")
    assert_refused(
        post(client, path, {"inputs": {"features": ROWS[:1]}, "options": {"provider": char}}), 422, "options.provider"
    )


def test_predict_csv(client: httpx.Client) -> None:
    header = "a,b,c,d,e,f"
    rows = "\n".join(",".join(str(v) for v in row) for row in ROWS[:2])
    csv_headers = {"Content-Type": "text/csv"}
    # A NUL in a cell: not a number, like any other text there.
    bad_cell = client.post(
        "/v1/predict/risk-classifier", content=f"{header}\n{rows}\n1\x00,2,3,4,5,6\n", headers=csv_headers
    )
    assert bad_cell.status_code == 422, bad_cell.text
    assert bad_cell.json()["error"]["param"] == "file"
    # In the header row it is never stored (the header is skipped): the prediction is made.
    odd_header = client.post("/v1/predict/risk-classifier", content=f"a\x00,b,c,d,e,f\n{rows}\n", headers=csv_headers)
    assert odd_header.status_code == 200, odd_header.text
    # Invalid UTF-8 (a surrogate's bytes) in an upload is replaced on decoding, so it never reaches a row.
    form = client.post(
        "/v1/predict/risk-classifier",
        files={"file": ("rows.csv", b"a\xed\xa0\x80,b,c,d,e,f\n" + rows.encode(), "text/csv")},
    )
    assert form.status_code == 200, form.text
    # The input's name in the query string (a model without a local signature) becomes a key of the input.
    named = client.post("/v1/predict/risk-kserve?input=feat%00ures", content=rows, headers=csv_headers)
    assert_refused(named, 422, "input")


# --- workflows and runs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BAD)
def test_workflow_json(client: httpx.Client, kind: str) -> None:
    char, escaped = BAD[kind]
    wf = f"wf_{secrets.token_hex(4)}"
    assert_refused(post(client, "/v1/workflows", workflow(wf, f"a{char}")), 422, "steps[0].input.messages[0].content")
    assert_refused(post(client, "/v1/workflows", workflow(f"{wf}{char}")), 422, "name")
    assert_refused(post(client, "/v1/workflows", workflow(wf) | {f"out{char}": 1}), 422, f"out{escaped}")
    assert client.get(f"/v1/workflows/{wf}").status_code == 404


@pytest.mark.parametrize(("kind", "written"), [("nul", "\\0"), ("nul", "\\x00"), ("surrogate", "\\ud800")])
def test_workflow_yaml(client: httpx.Client, kind: str, written: str) -> None:
    escaped = BAD[kind][1]
    wf = f"wf_{secrets.token_hex(4)}"
    step = "  - id: only\n    type: chat\n    model: chat-default\n"
    value = f'{step}    input: {{messages: [{{role: user, content: "a{written}"}}]}}\n'
    key = f'{step}    input: {{messages: [{{role: user, content: v, "x{written}": 1}}]}}\n'
    for text_, param in (
        (value, "steps[0].input.messages[0].content"),
        (key, f"steps[0].input.messages[0].x{escaped}"),
    ):
        response = client.post(
            "/v1/workflows", content=f"name: {wf}\nsteps:\n{text_}", headers={"Content-Type": "application/yaml"}
        )
        assert_refused(response, 422, param)
    good = f'name: {wf}\nsteps:\n{step}    input: {{messages: [{{role: user, content: "tab\\there"}}]}}\n'
    response = client.post("/v1/workflows", content=good, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("kind", BAD)
def test_run_body(client: httpx.Client, registered: str, kind: str) -> None:
    char, escaped = BAD[kind]
    path = f"/v1/workflows/{registered}/runs"
    assert_refused(post(client, path, {"input": {"topic": f"a{char}"}}), 422, "input.topic")
    assert_refused(post(client, path, {"input": {f"topic{char}": "a"}}), 422, f"input.topic{escaped}")
    assert_refused(post(client, path, {"input": {}, "metadata": {f"k{char}": "v"}}), 422, f"metadata.k{escaped}")
    assert_refused(
        post(client, path, {"input": {}, "webhook": {"url": f"https://example.com/{char}"}}), 422, "webhook.url"
    )
    good = post(client, path, {"input": {"topic": "fine"}})
    assert good.status_code == 202, good.text


# --- webhooks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize(
    ("where", "make"),
    [
        ("url", lambda c: {"url": f"https://example.com/{c}", "events": ["*"]}),
        ("description", lambda c: {"url": "https://example.com/h", "events": ["*"], "description": f"d{c}"}),
        ("events[0]", lambda c: {"url": "https://example.com/h", "events": [f"task.{c}"]}),
        ("metadata.k{k}", lambda c: {"url": "https://example.com/h", "events": ["*"], "metadata": {f"k{c}": "v"}}),
    ],
)
def test_webhook_body(client: httpx.Client, kind: str, where: str, make: Any) -> None:
    char, escaped = BAD[kind]
    assert_refused(post(client, "/v1/webhooks", make(char)), 422, where.format(k=escaped))
    response = client.patch(
        "/v1/webhooks/wh_x", content=raw_json({"description": f"d{char}"}), headers={"Content-Type": "application/json"}
    )
    assert_refused(response, 422, "description")


# --- path and query parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "param"),
    [
        ("GET", "/v1/tasks/task_%00", "task_id"),
        ("POST", "/v1/tasks/task_%00/cancel", "task_id"),
        ("GET", "/v1/tasks/task_%00/events", "task_id"),
        ("GET", "/v1/workflows/wf%00", "name"),
        ("POST", "/v1/workflows/wf%00/runs", "name"),
        ("GET", "/v1/runs/run_%00", "run_id"),
        ("POST", "/v1/runs/run_%00/retry", "run_id"),
        ("GET", "/v1/runs/run_%00/events", "run_id"),
        ("GET", "/v1/webhooks/wh_%00", "webhook_id"),
        ("DELETE", "/v1/webhooks/wh_%00", "webhook_id"),
        ("GET", "/v1/webhooks/wh_%00/deliveries", "webhook_id"),
        ("POST", "/v1/predict/risk%00", "model"),
        ("GET", "/v1/tasks?model=chat%00", "model"),
        ("GET", "/v1/tasks?after=task_%00", "after"),
        ("GET", "/v1/runs?workflow=wf%00", "workflow"),
        ("GET", "/v1/runs?after=run_%00", "after"),
        ("GET", "/v1/events?type=task.%00", "type"),
        ("GET", "/v1/events?type=task.queued&type=%00", "type"),
        ("GET", "/v1/events?task_id=task_%00", "task_id"),
        ("GET", "/v1/tasks?x%00=1", "x\\u0000"),
    ],
)
def test_path_and_query_parameters(client: httpx.Client, method: str, path: str, param: str) -> None:
    response = client.request(method, path, json={} if method == "POST" else None)
    assert_refused(response, 422, param)


def test_nul_in_a_header_is_refused_by_the_http_server(stack: Stack, admin_key: str) -> None:
    """`Idempotency-Key` and `X-Provider` are stored, but no HTTP client sends a NUL in a header (httpx
    refuses) and the server refuses a request that has one before the application sees it."""
    url = urlsplit(stack.url)
    body = raw_json(chat_task())
    request = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {admin_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nIdempotency-Key: a\x00b\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]


# --- the database backstop -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "value"),
    [
        ("SELECT CAST(:v AS text)", "a\x00b"),
        ("SELECT CAST(:v AS text)", "a\ud800b"),
        ("SELECT CAST(:v AS jsonb)", '{"a": "\\u0000"}'),
        ("SELECT CAST(:v AS jsonb)", '{"a": "\\ud800"}'),
    ],
)
def test_database_refusals_are_recognised(stack: Stack, sql: str, value: str) -> None:
    """Should a bad string slip past the guard, the refusal of a real Postgres (or of its driver) is still
    read as the client's fault, a 4xx; other data errors are not."""
    engine = create_engine(stack.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            with pytest.raises((DBAPIError, UnicodeEncodeError)) as caught:
                conn.execute(text(sql), {"v": value})
            assert unstorable_in_database(caught.value)
            conn.rollback()
            with pytest.raises(DBAPIError) as other:
                conn.execute(text("SELECT CAST(:v AS integer)"), {"v": "x"})
            assert not unstorable_in_database(other.value)
    finally:
        engine.dispose()


# --- WebSocket frames ----------------------------------------------------------------------------------------------


def test_websocket_frame_with_nul_is_an_error_frame(stack: Stack, admin_key: str) -> None:
    """A subscribe frame naming an id with U+0000 gets an error frame naming the field; the connection
    stays usable."""

    async def scenario() -> list[dict[str, Any]]:
        url = stack.url.replace("http://", "ws://", 1) + "/v1/ws"
        async with connect(url, additional_headers={"Authorization": f"Bearer {admin_key}"}) as ws:
            await ws.send(json.dumps({"action": "subscribe", "task_id": "task_\x00"}))
            await ws.send(json.dumps({"action": "subscribe", "run_id": "run_x", "x\x00": 1}))
            await ws.send(json.dumps({"action": "ping"}))
            return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(3)]

    refused, refused_key, pong = asyncio.run(scenario())
    assert refused["type"] == "error"
    assert refused["param"] == "task_id"
    assert "U+0000" in refused["message"]
    assert refused_key["param"] == "x\\u0000"
    assert pong == {"type": "pong"}
