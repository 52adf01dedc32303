"""Nothing of a tenant's content nor of the server's internals in logs and error messages: database errors do
not quote the data (prompts, inputs), webhook refusals say nothing of the network behind the server nor of its
settings, and clients know ONNX models by their file's name, never by the server's path."""

from __future__ import annotations

import secrets
import shutil
import traceback
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from switchyard.core.config import ProviderConfig
from switchyard.core.db import make_engine
from switchyard.core.db_errors import make_terse
from switchyard.core.errors import ProviderError
from switchyard.defaults import MODELS_DIR
from switchyard.gateway_api.errors import unstorable_in_database
from switchyard.providers.onnx_adapter import OnnxAdapter
from switchyard.settings import Settings
from tests.support import Stack, chat, wait_status, wait_task

FEATURES = [0.9, 0.2, 68.4, 1.0, 2.0, 0.14, 0.05, 286.5]


def _told(exc: BaseException) -> str:
    """Everything a log line or a traceback of `exc` can show: its repr, its text, the whole chain."""
    return repr(exc) + "".join(traceback.format_exception(exc))


# --- database errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "value"),
    [
        # Postgres quotes the JSON around the bad character in CONTEXT: there is the prompt.
        ("SELECT CAST(:v AS jsonb)", '{"messages": [{"content": "SECRET \\u0000"}]}'),
        ("SELECT CAST(:v AS jsonb)", '{"content": "SECRET \\ud800"}'),
        ("SELECT CAST(:v AS jsonb)", '{"content": SECRET}'),  # DETAIL: Token "SECRET" is invalid
        ("SELECT CAST(:v AS integer)", "SECRET"),  # the primary message quotes the value
        ("SELECT CAST(:v AS text)", "SECRET \x00"),  # psycopg's own refusal
    ],
)
def test_database_errors_do_not_quote_the_data(stack: Stack, sql: str, value: str) -> None:
    secret = f"confidential-{secrets.token_hex(6)}"
    engine = make_engine(Settings(database_url=stack.database_url))
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
            conn.execute(text(sql), {"v": value.replace("SECRET", secret)})
    finally:
        engine.dispose()
    told = _told(caught.value)
    assert secret not in told
    # What a reader needs is still there: the kind of error, and the fields code decides on.
    assert type(caught.value.orig).__name__ in told
    if "\\u0000" in value or "\\ud800" in value or "\x00" in value:
        assert unstorable_in_database(caught.value)


def test_unique_violation_names_the_constraint_not_the_key(stack: Stack) -> None:
    secret = f"confidential-{secrets.token_hex(6)}"
    engine = make_engine(Settings(database_url=stack.database_url))
    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE TEMP TABLE leak_probe (k text PRIMARY KEY)"))
            conn.execute(text("INSERT INTO leak_probe VALUES (:k)"), {"k": secret})
            with pytest.raises(DBAPIError) as caught:
                conn.execute(text("INSERT INTO leak_probe VALUES (:k)"), {"k": secret})
    finally:
        engine.dispose()
    told = _told(caught.value)
    assert secret not in told
    assert "leak_probe_pkey" in told
    assert "23505" in told


def test_errors_of_the_async_pool_path_can_be_made_terse(stack: Stack) -> None:
    # The API's task insert runs on a psycopg pool of its own, with no SQLAlchemy hook: it calls make_terse.
    secret = f"confidential-{secrets.token_hex(6)}"
    with psycopg.connect(stack.database_url) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("SELECT %s::jsonb", [f'{{"content": "{secret} \\u0000"}}'])
    assert secret in str(caught.value)  # what psycopg says on its own
    make_terse(caught.value)
    assert secret not in _told(caught.value)
    assert caught.value.diag.message_detail is not None  # the structured fields are kept


def test_template_made_nul_fails_the_step_and_nothing_logs_the_prompt(stack: Stack, client: httpx.Client) -> None:
    # A template can write U+0000 ("\x00" in a Jinja string), which the API's input guard never sees: storing the
    # rendered input failed in Postgres at every advance, the run stayed queued, and the worker logged the error
    # with the prompt around the character.
    secret = f"confidential-{secrets.token_hex(8)}"
    wf = f"wf_{secrets.token_hex(4)}"
    content = '{{ "' + secret + '\\x00" }}'
    step = {"id": "a", "type": "chat", "model": "chat-default", "input": chat(content)}
    assert client.post("/v1/workflows", json={"name": wf, "steps": [step]}).status_code == 201
    started = client.post(f"/v1/workflows/{wf}/runs", json={"input": {}})
    assert started.status_code == 202, started.text

    run = wait_status(client, f"/v1/runs/{started.json()['id']}", timeout=30)
    assert run["status"] == "failed", run
    error = run["steps"]["a"]["error"]
    assert error["type"] == "template_error"
    assert "input.messages[0].content" in error["message"]
    assert "U+0000" in error["message"]
    assert secret not in str(run)
    for proc in stack.processes:
        assert secret not in proc.log(), proc.name


# --- webhook refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:9/hook",  # a name resolving to loopback
        "http://127.0.0.1:9/hook",
        "http://10.0.0.7/hook",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://169.254.169.254/latest",
        "http://no-such-host.invalid/hook",  # a name that does not resolve
    ],
)
def test_webhook_refusal_says_nothing_of_the_network_nor_the_settings(client: httpx.Client, url: str) -> None:
    response = client.post("/v1/webhooks", json={"url": url, "events": ["*"]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "url"
    assert error["code"] == "destination_not_allowed"
    assert error["message"].startswith("url: destination not allowed: private or internal address")
    for revealing in ("127.0.0.1", "resolves", "loopback", "metadata", "does not resolve", "SWITCHYARD_", "ALLOW"):
        assert revealing not in error["message"], error["message"]

    task = client.post(
        "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("x"), "webhook": {"url": url}}
    )
    assert task.status_code == 422
    assert task.json()["error"]["param"] == "webhook.url"
    assert task.json()["error"]["code"] == "destination_not_allowed"
    assert "SWITCHYARD_" not in task.text
    assert "127.0.0.1" not in task.text.replace(url, "")


# --- ONNX model paths ----------------------------------------------------------------------------------------------


def test_onnx_deployments_are_known_by_name_not_path(client: httpx.Client) -> None:
    where = str(MODELS_DIR)
    providers = client.get("/v1/providers")
    assert providers.status_code == 200
    assert where not in providers.text
    onnx = {d["deployment"]: d for d in providers.json()["data"] if d["kind"] == "onnx"}
    assert set(onnx) == {"onnx/risk_classifier.onnx", "onnx/revenue_regressor.onnx"}
    assert onnx["onnx/risk_classifier.onnx"]["model"] == "risk_classifier.onnx"
    # A file several models list is still one deployment.
    assert set(onnx["onnx/risk_classifier.onnx"]["models"]) == {"risk-classifier", "risk-remote-first"}

    models = client.get("/v1/models")
    assert where not in models.text

    created = client.post(
        "/v1/tasks", json={"type": "predict", "model": "risk-classifier", "input": {"inputs": {"features": [FEATURES]}}}
    )
    assert created.status_code == 202, created.text
    task = wait_task(client, created.json()["id"])
    assert task["status"] == "succeeded", task
    seen = client.get(f"/v1/tasks/{task['id']}").text + client.get("/v1/events", params={"task_id": task["id"]}).text
    assert where not in seen
    assert task["attempts"][0]["deployment"] == "onnx/risk_classifier.onnx"

    sync = client.post("/v1/predict/risk-classifier", json={"inputs": {"features": [FEATURES]}})
    assert sync.status_code == 200, sync.text
    assert where not in sync.text


def test_onnx_model_that_cannot_be_loaded_names_the_file_not_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / f"secret-folder-{secrets.token_hex(4)}"
    folder.mkdir()
    path = folder / "risk_classifier.onnx"
    shutil.copy(MODELS_DIR / "risk_classifier.onnx", path)
    path.write_bytes(path.read_bytes()[:100])  # damaged after the config was loaded
    adapter = OnnxAdapter(ProviderConfig(kind="onnx", max_batch_size=1))
    try:
        with pytest.raises(ProviderError) as caught:
            adapter.predict(str(path), {"inputs": {"features": [FEATURES]}}, 5)
    finally:
        adapter.close()
    assert caught.value.message == "model risk_classifier.onnx could not be loaded"
    assert folder.name not in _told(caught.value)
