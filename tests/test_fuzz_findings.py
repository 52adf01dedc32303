"""What Schemathesis found (tests/test_fuzz.py), each kept as a plain test against the real stack so it stays
fixed however the fuzzer's random choices go: integers too large for 64 bits, a CSV with a bare carriage
return, a workflow version past the 32-bit column, the documented shape of a Server-Sent Event, and the 400
of an OpenAI-compatible list whose parameter holds a string that cannot be stored."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from tests.support import Stack, chat, wait_task

HUGE = 924943870898202050873012518912  # what the fuzzer sent as `rph`


def test_an_integer_past_64_bits_is_422_naming_it_and_breaks_nothing(stack: Stack) -> None:
    key = stack.new_key(f"huge-{secrets.token_hex(3)}", "admin")
    with stack.client(key) as client:
        # Before, the limit was stored, and every answer that showed it (the key list, the audit log) was a 500.
        refused = client.put("/v1/tenant/limits", json={"rph": HUGE, "rpm": 2})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["param"] == "rph"
        assert "64 bits" in refused.json()["error"]["message"]
        task = client.post(
            "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("x"), "metadata": {"n": -HUGE}}
        )
        assert task.status_code == 422, task.text
        assert task.json()["error"]["param"] == "metadata.n"
        # The same number written as a float (9.2e29) is whole, so it would be taken as the integer: refused too.
        as_float = client.put("/v1/tenant/limits", json={"rph": 9.2e29})
        assert as_float.status_code == 422, as_float.text
        assert as_float.json()["error"]["param"] == "rph"
        for path in ("/v1/tenant/limits", "/v1/keys", "/v1/audit"):
            assert client.get(path).status_code == 200, path
        # The largest 64-bit integers still pass.
        fits = client.post(
            "/v1/tasks",
            json={"type": "chat", "model": "chat-default", "input": chat("x"), "metadata": {"n": 2**63 - 1}},
        )
        assert fits.status_code == 202, fits.text
        assert client.get(f"/v1/tasks/{fits.json()['id']}").json()["metadata"] == {"n": 2**63 - 1}
        # Nineteen digits in a string are only a string.
        digits = client.post(
            "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("1234567890123456789012")}
        )
        assert digits.status_code == 202, digits.text


def test_yaml_workflow_with_a_huge_integer_is_422(client: httpx.Client) -> None:
    body = f"name: huge\nsteps:\n  - id: a\n    type: chat\n    model: chat-default\n    max_tokens: {HUGE}\n"
    response = client.post("/v1/workflows", content=body, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 422, response.text
    assert "64 bits" in response.json()["error"]["message"]


def test_csv_with_a_bare_carriage_return_is_read_or_refused_never_a_500(client: httpx.Client) -> None:
    rows = "0.9,0.2,68.4,1.0,2.0,0.14,0.05,286.5"
    # A bare \r ends a line, as the csv module reads it.
    ok = client.post("/v1/predict/risk-classifier", content=f"{rows}\r{rows}\r", headers={"Content-Type": "text/csv"})
    assert ok.status_code == 200, ok.text
    assert len(next(iter(ok.json()["outputs"].values()))) == 2
    # Binary junk (the fuzzer sent a PNG): a 422 naming the file.
    junk = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"
    bad = client.post("/v1/predict/risk-classifier", files={"file": ("file.png", junk, "image/png")})
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["param"] == "file"


def test_a_workflow_version_past_32_bits_is_422(client: httpx.Client) -> None:
    name = f"versions-{secrets.token_hex(3)}"
    step = {"id": "a", "type": "chat", "model": "chat-default", "input": chat("x")}
    assert client.post("/v1/workflows", json={"name": name, "steps": [step]}).status_code == 201
    for response in (
        client.get(f"/v1/workflows/{name}", params={"version": 2**31}),
        client.post(f"/v1/workflows/{name}/runs", json={"version": 1089662942645}),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == "version"
    assert client.get(f"/v1/workflows/{name}", params={"version": 2**31 - 1}).status_code == 404


@pytest.fixture(scope="module")
def doc(stack: Stack) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{stack.url}/openapi.json").json()
    return body


def test_server_sent_events_match_the_documented_event(stack: Stack, client: httpx.Client, doc: dict[str, Any]) -> None:
    task = client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("events")}).json()
    wait_task(client, task["id"])
    schema = doc["paths"]["/v1/tasks/{task_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    validator = Draft202012Validator(schema["schema"])
    text = client.get(f"/v1/tasks/{task['id']}/events").text
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            events.append(fields)
    assert len(events) >= 3, text
    for event in events:
        assert list(validator.iter_errors(event)) == [], event


def test_openai_list_with_an_unstorable_parameter_is_a_documented_400(
    client: httpx.Client, doc: dict[str, Any]
) -> None:
    response = client.get("/v1/files", params={"after": "file_\x00"})
    assert response.status_code == 400, response.text
    assert "400" in doc["paths"]["/v1/files"]["get"]["responses"]
    assert "400" in doc["paths"]["/v1/files/{file_id}"]["get"]["responses"]


def test_a_logit_bias_out_of_range_is_400_not_a_call_that_never_ends(client: httpx.Client) -> None:
    # Schemathesis: a bias of -1.3e97 was taken, and the call failed in the worker at every retry while the
    # caller waited (a read timeout after 30 s). OpenAI's range is -100 to 100.
    body = {"model": "chat-failover", "messages": [{"role": "user", "content": "x"}]}
    refused = client.post("/v1/chat/completions", json={**body, "logit_bias": {"50256": -1.3166791627803091e97}})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"].startswith("logit_bias"), refused.text
    too_big_seed = client.post("/v1/chat/completions", json={**body, "seed": 2**64})
    assert too_big_seed.status_code == 400, too_big_seed.text
    assert too_big_seed.json()["error"]["param"] == "seed"
    fits = client.post("/v1/chat/completions", json={**body, "logit_bias": {"50256": -100}, "seed": 2**63 - 1})
    assert fits.status_code == 200, fits.text
