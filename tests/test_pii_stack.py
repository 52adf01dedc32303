"""The PII guardrail through the real stack: what the fake provider receives (its chat answer echoes the last user
message; its embeddings are a hash of the text it got), what the task row, the events, a webhook and the logs
hold, reversible answers (streamed, with a placeholder cut over chunks and mangled by the model), a workflow
step, a batch line, and bad guardrails refused at start-up and per request."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from switchyard.fake_provider.app import _split_chunks
from tests.support import ROOT, Stack, cli, free_port, wait_task, wait_until
from tests.test_pii import SAMPLES
from tests.test_webhooks import Receiver

HASH_KEY = "test-pii-hash-key-0123456789"

# A model whose config turns on reversible (it falls back to mask where nothing can restore).
EXTRA_MODELS = """
  chat-reversible:
    type: chat
    guardrails: {pii: {mode: reversible}}
    deployments:
      - {provider: fake, model: gpt-4o-mini, price: {input: 0.15, output: 0.60}}
"""

# One value of each type in a message; the values that must never show up anywhere.
ONE_EACH = {entity: values[0] for entity, values in SAMPLES.items()}
MESSAGE = "Hello, here is what you asked for: " + "; ".join(f"{e.lower()} {v}" for e, v in ONE_EACH.items()) + "."
RAW = [v for values in SAMPLES.values() for v in values]


@pytest.fixture(scope="module")
def pii_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"SWITCHYARD_WEBHOOK_ALLOW_PRIVATE": "true", "SWITCHYARD_PII_HASH_KEY": HASH_KEY}
    s = Stack(tmp_path_factory.mktemp("pii"), redis_db=12, ml=False, env=env, extra_models=EXTRA_MODELS)
    yield s
    s.close()


@pytest.fixture(scope="module")
def key(pii_stack: Stack) -> str:
    return pii_stack.new_key(f"pii-{secrets.token_hex(3)}", "admin")


@pytest.fixture(scope="module")
def http(pii_stack: Stack, key: str) -> Iterator[httpx.Client]:
    with pii_stack.client(key) as c:
        yield c


@pytest.fixture(scope="module")
def sdk(pii_stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{pii_stack.url}/v1", api_key=key, max_retries=0)


def chat(sdk: openai.OpenAI, text: str, pii: dict[str, Any], model: str = "chat-default") -> Any:
    return sdk.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], extra_body={"guardrails": {"pii": pii}}
    )


def no_raw(text: str) -> None:
    leaked = [v for v in RAW if v in text]
    assert not leaked, leaked


@pytest.mark.parametrize("mode", ["mask", "hash", "remove"])
def test_every_entity_is_scrubbed_before_the_provider_sees_it(
    mode: str, sdk: openai.OpenAI, http: httpx.Client
) -> None:
    raw = chat(sdk, MESSAGE, {"mode": mode})
    answer = raw.parse().choices[0].message.content
    # The fake echoes what it received.
    assert answer.startswith("echo: Hello, here is what you asked for: email ")
    no_raw(answer)
    for entity in ONE_EACH:
        pattern = {"mask": rf"<{entity}_1>", "hash": rf"<{entity}_[0-9a-f]{{8}}>", "remove": ""}[mode]
        if pattern:
            assert re.search(rf"{entity.lower()} {pattern}", answer), (entity, answer)
    if mode == "remove":
        assert "email ;" in answer
    task = http.get(f"/v1/tasks/{raw.headers['x-switchyard-task-id']}").json()
    assert task["guardrails"] == {"pii": {"mode": mode, "request": dict.fromkeys(ONE_EACH, 1)}}
    no_raw(json.dumps(task))


def test_hash_is_stable_across_calls_and_processes(sdk: openai.OpenAI, http: httpx.Client) -> None:
    first = chat(sdk, "mail a.b@example.com", {"mode": "hash"}).parse().choices[0].message.content
    # The answer, scrubbed by the worker with the same key, hashes the echoed value alike.
    response = http.post(
        "/v1/tasks",
        json={
            "type": "chat",
            "model": "chat-default",
            "input": {"messages": [{"role": "user", "content": "mail a.b@example.com"}]},
            "options": {"guardrails": {"pii": {"mode": "hash", "on": ["response"]}}},
        },
    )
    task = wait_task(http, response.json()["id"])
    assert task["result"]["content"] == first
    assert task["guardrails"]["pii"] == {"mode": "hash", "response": {"EMAIL": 1}}


def test_embedding_inputs_are_scrubbed(pii_stack: Stack, sdk: openai.OpenAI) -> None:
    texts = ["write to jane.doe+billing@example.co.uk", "no personal data here"]
    got = sdk.embeddings.create(
        model="embed-default", input=texts, extra_body={"guardrails": {"pii": {"mode": "mask"}}}
    )
    # The fake's vectors are a hash of the text it was sent: ask it directly for the scrubbed text's.
    expected = httpx.post(
        f"{pii_stack.fake_url}/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": ["write to <EMAIL_1>", texts[1]]},
    ).json()["data"]
    assert len(got.data) == len(expected) == 2
    for ours, theirs in zip(got.data, expected, strict=True):
        assert ours.embedding == pytest.approx(theirs["embedding"])


def test_look_alikes_reach_the_provider_untouched(sdk: openai.OpenAI, http: httpx.Client) -> None:
    from tests.test_pii import CLEAN

    text = " ".join(CLEAN)
    raw = chat(sdk, text, {"mode": "mask"})
    assert raw.parse().choices[0].message.content == f"echo: {text}"
    task = http.get(f"/v1/tasks/{raw.headers['x-switchyard-task-id']}").json()
    assert task["guardrails"] == {"pii": {"mode": "mask", "request": {}}}


def test_reversible_gives_the_values_back_and_stores_placeholders(sdk: openai.OpenAI, http: httpx.Client) -> None:
    # The caller's own text holds placeholders as a model might mangle them: they are restored too.
    text = "reply to jane@example.com about card 4111 1111 1111 1111 (< email_1 >, <Credit Card 1>)"
    raw = chat(sdk, text, {"mode": "reversible"})
    answer = raw.parse().choices[0].message.content
    assert answer == (
        "echo: reply to jane@example.com about card 4111 1111 1111 1111 (jane@example.com, 4111 1111 1111 1111)"
    )
    task = http.get(f"/v1/tasks/{raw.headers['x-switchyard-task-id']}").json()
    assert task["input"]["messages"][0]["content"] == (
        "reply to <EMAIL_1> about card <CREDIT_CARD_1> (< email_1 >, <Credit Card 1>)"
    )
    assert task["result"]["content"].startswith("echo: reply to <EMAIL_1>")
    no_raw(json.dumps(task))


def test_reversible_streams_with_a_placeholder_cut_over_chunks(sdk: openai.OpenAI, http: httpx.Client) -> None:
    text = "my mail is jane@example.com write to < email_1 > today please"
    sent = "echo: my mail is <EMAIL_1> write to < email_1 > today please"
    chunks = _split_chunks(sent)
    # What the fake streams cuts the mangled placeholder in two.
    assert not any("< email_1 >" in c for c in chunks), chunks
    stream = sdk.chat.completions.create(
        model="chat-default",
        messages=[{"role": "user", "content": text}],
        stream=True,
        extra_body={"guardrails": {"pii": {"mode": "reversible"}}},
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "echo: my mail is jane@example.com write to jane@example.com today please"
    assert len(pieces) > 1


def test_reversible_from_the_config_falls_back_to_mask_for_a_polled_task(http: httpx.Client) -> None:
    body = {"type": "chat", "model": "chat-reversible", "input": {"messages": [{"role": "user", "content": "a@b.io"}]}}
    task = wait_task(http, http.post("/v1/tasks", json=body).json()["id"])
    assert task["result"]["content"] == "echo: <EMAIL_1>"
    assert task["guardrails"] == {"pii": {"mode": "mask", "request": {"EMAIL": 1}, "fallback_from": "reversible"}}


def test_response_scrubbing_of_a_streamed_answer(sdk: openai.OpenAI, http: httpx.Client) -> None:
    text = "numbers: +44 20 7946 0958 and card 4111 1111 1111 1111 and mail jane@example.com end"
    stream = sdk.chat.completions.with_raw_response.create(
        model="chat-default",
        messages=[{"role": "user", "content": text}],
        stream=True,
        extra_body={"guardrails": {"pii": {"mode": "mask", "on": ["response"]}}},
    )
    task_id = stream.headers["x-switchyard-task-id"]
    pieces = [c.choices[0].delta.content for c in stream.parse() if c.choices and c.choices[0].delta.content]
    expected = "echo: numbers: <PHONE_1> and card <CREDIT_CARD_1> and mail <EMAIL_1> end"
    assert "".join(pieces) == expected
    task = wait_task(http, task_id)
    assert task["result"]["content"] == expected
    assert task["guardrails"]["pii"]["response"] == {"PHONE": 1, "CREDIT_CARD": 1, "EMAIL": 1}


def test_nothing_raw_in_the_row_events_webhook_or_logs(pii_stack: Stack, http: httpx.Client) -> None:
    receiver = Receiver()
    receiver.start()
    try:
        body = {
            "type": "chat",
            "model": "chat-default",
            "input": {
                "messages": [
                    {"role": "system", "content": f"operator key {ONE_EACH['SECRET']}"},
                    {"role": "user", "content": [{"type": "text", "text": MESSAGE}]},
                ],
            },
            "options": {"stream": True, "guardrails": {"pii": {"mode": "mask", "on": ["request", "response"]}}},
            "webhook": {"url": receiver.url("/pii")},
        }
        response = http.post("/v1/tasks", json=body)
        assert response.status_code == 202, response.text
        task = wait_task(http, response.json()["id"])
        assert task["status"] == "succeeded"
        assert task["guardrails"]["pii"]["request"]["SECRET"] == 2
        wait_until(lambda: any(b"task.succeeded" in r.body for r in receiver.at("/pii")), timeout=30)
        stored = pii_stack.sql(
            "SELECT input::text, result::text, guardrails::text, options::text FROM tasks WHERE id = %s", task["id"]
        )
        no_raw(json.dumps(stored))
        events = pii_stack.sql("SELECT type, data::text FROM events WHERE task_id = %s", task["id"])
        assert {"task.queued", "task.succeeded"} <= {e[0] for e in events}
        queued = next(json.loads(d) for t, d in events if t == "task.queued")
        assert queued["guardrails"]["pii"]["request"]["EMAIL"] == 1
        no_raw(json.dumps(events))
        mine = http.get("/v1/events", params={"task_id": task["id"], "limit": 100}).json()["data"]
        assert len(mine) == len(events)
        no_raw(json.dumps(mine))
        no_raw(b"".join(r.body for r in receiver.received).decode())
        no_raw("".join(p.log() for p in pii_stack.processes))
    finally:
        receiver.stop()


def test_a_workflow_step_runs_its_guardrail(pii_stack: Stack, http: httpx.Client) -> None:
    name = f"wf_pii_{secrets.token_hex(3)}"
    step = {
        "id": "ask",
        "type": "chat",
        "model": "chat-default",
        "input": {"messages": [{"role": "user", "content": "about {{ input.email }}"}]},
        "guardrails": {"pii": {"mode": "mask"}},
    }
    assert http.post("/v1/workflows", json={"name": name, "steps": [step]}).status_code == 201
    run = http.post(f"/v1/workflows/{name}/runs", json={"input": {"email": "jane@example.com"}}).json()
    done = wait_until(
        lambda: (r := http.get(f"/v1/runs/{run['id']}").json())["status"] in ("succeeded", "failed") and r,
        timeout=60,
    )
    assert done["status"] == "succeeded", done
    (task_id,) = done["steps"]["ask"]["task_ids"]
    task = http.get(f"/v1/tasks/{task_id}").json()
    assert task["input"]["messages"][0]["content"] == "about <EMAIL_1>"
    assert task["result"]["content"] == "echo: about <EMAIL_1>"
    assert task["guardrails"] == {"pii": {"mode": "mask", "request": {"EMAIL": 1}}}
    # Reversible cannot be restored in a step: refused when the workflow is registered.
    step["guardrails"] = {"pii": {"mode": "reversible"}}
    refused = http.post("/v1/workflows", json={"name": name + "_r", "steps": [step]})
    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == "steps[0].guardrails.pii.mode"


def test_a_batch_line_runs_its_guardrail(pii_stack: Stack, sdk: openai.OpenAI) -> None:
    line = {
        "custom_id": "one",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "chat-default",
            "messages": [{"role": "user", "content": "card 4111 1111 1111 1111"}],
            "guardrails": {"pii": {"mode": "mask"}},
        },
    }
    file = sdk.files.create(file=("in.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
    batch = sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_until(lambda: (b := sdk.batches.retrieve(batch.id)).status in ("completed", "failed") and b, timeout=60)
    assert done.status == "completed", done
    out = json.loads(sdk.files.content(done.output_file_id).text.splitlines()[0])
    assert out["response"]["body"]["choices"][0]["message"]["content"] == "echo: card <CREDIT_CARD_1>"
    rows = pii_stack.sql("SELECT input::text, guardrails::text, options::text FROM tasks WHERE batch_id = %s", batch.id)
    assert "4111" not in json.dumps(rows)
    assert json.loads(rows[0][1]) == {"pii": {"mode": "mask", "request": {"CREDIT_CARD": 1}}}
    assert "_guardrails_found" not in rows[0][2]
    lines = pii_stack.sql("SELECT input::text FROM batch_lines WHERE batch_id = %s", batch.id)
    assert "4111" not in json.dumps(lines)


def test_bad_per_request_guardrails_are_refused_naming_the_field(http: httpx.Client, sdk: openai.OpenAI) -> None:
    base = {"type": "chat", "model": "chat-default", "input": {"messages": [{"role": "user", "content": "x"}]}}
    bad = http.post("/v1/tasks", json={**base, "options": {"guardrails": {"pii": {"entities": ["NAME"]}}}})
    assert bad.status_code == 422
    assert bad.json()["error"]["param"] == "options.guardrails.pii.entities"
    assert "EMAIL" in bad.json()["error"]["message"]
    # Reversible on a task that is polled: nothing could restore it.
    rev = http.post("/v1/tasks", json={**base, "options": {"guardrails": {"pii": {"mode": "reversible"}}}})
    assert rev.status_code == 422
    assert rev.json()["error"]["param"] == "options.guardrails.pii.mode"
    with pytest.raises(openai.BadRequestError) as exc:
        chat(sdk, "x", {"mode": "scramble"})
    assert exc.value.body["param"] == "guardrails.pii.mode"  # type: ignore[index]


def test_a_bad_guardrail_in_the_config_stops_start_up(pii_stack: Stack, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "providers: {fake: {kind: openai, base_url: 'http://127.0.0.1:1/v1', api_key: x}}\n"
        "guardrails: {pii: {mode: mask, entities: [EMAIL, POSTAL_ADDRESS]}}\n"
        "models: {m: {type: chat, deployments: [{provider: fake, model: x}]}}\n"
    )
    done = subprocess.run(
        cli("api", "--port", str(free_port())),
        env={**pii_stack.env, "SWITCHYARD_CONFIG": str(config)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "guardrails.pii.entities" in done.stderr
    assert "POSTAL_ADDRESS" in done.stderr
