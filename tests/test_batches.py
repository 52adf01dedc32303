"""Batch jobs through the official `openai` SDK: files.create(purpose="batch") -> batches.create -> retrieve
until done -> files.content of the output and error files; embeddings and `/v1/tasks` predict batches; a
malformed file failing with its line numbers; cancel mid-batch; expiry; another tenant's batch; a large batch
beside interactive calls; a worker killed mid-batch (each line ends exactly once)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from switchyard.defaults import MODELS_DIR
from tests.support import Stack, wait_task, wait_until

ROWS: list[list[float]] = json.loads((MODELS_DIR / "risk_classifier.reference.json").read_text())["inputs"]
DONE = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def sdk(stack: Stack, admin_key: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=admin_key, max_retries=0, timeout=30)
    yield client
    client.close()


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(custom_id: str, text: str, model: str = "chat-default") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 20}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def start(sdk: openai.OpenAI, lines: list[dict[str, Any]] | bytes, endpoint: str = "/v1/chat/completions") -> Any:
    content = lines if isinstance(lines, bytes) else jsonl(lines)
    file = sdk.files.create(file=("input.jsonl", content), purpose="batch")
    return sdk.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]


def wait_batch(sdk: openai.OpenAI, batch_id: str, statuses: tuple[str, ...] = DONE, timeout: float = 60) -> Any:
    def reached() -> Any:
        batch = sdk.batches.retrieve(batch_id)
        return batch if batch.status in statuses else None

    return wait_until(reached, timeout=timeout, interval=0.2, what=f"batch {batch_id} in {statuses}")


def read_lines(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in sdk.files.content(file_id).text.splitlines()]


def test_chat_batch_round_trip(sdk: openai.OpenAI, stack: Stack) -> None:
    nonce = secrets.token_hex(3)
    lines = [chat_line(f"req-{i}", f"batch {nonce} {i}") for i in range(5)]
    lines.insert(3, chat_line("bad-one", f"batch {nonce} [[fail:400]]"))
    batch = start(sdk, lines)
    assert batch.object == "batch"
    assert batch.status == "validating"
    assert batch.endpoint == "/v1/chat/completions"
    assert batch.expires_at is not None
    assert batch.expires_at - batch.created_at == 24 * 3600
    done = wait_batch(sdk, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 5, 1)
    assert done.in_progress_at
    assert done.finalizing_at
    assert done.completed_at
    extra = done.model_extra or {}
    assert extra["cost_usd"] > 0
    usage = done.usage  # the SDK's own BatchUsage type, in recent versions
    assert (usage["input_tokens"] if isinstance(usage, dict) else usage.input_tokens) > 0  # type: ignore[union-attr]
    output = read_lines(sdk, done.output_file_id)
    assert [o["custom_id"] for o in output] == [f"req-{i}" for i in range(5)]  # in input order
    for i, o in enumerate(output):
        assert o["id"].startswith("batch_req_")
        assert o["error"] is None
        assert o["response"]["status_code"] == 200
        body = o["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == f"echo: batch {nonce} {i}"
        assert body["id"] == f"chatcmpl-{o['response']['request_id']}"
    # Lines pay the deployment's batch price (half the interactive one in the test config).
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {sdk.api_key}"}, timeout=30) as http:
        line_task = http.get(f"/v1/tasks/{output[0]['response']['request_id']}").json()
    line_usage = line_task["usage"]
    batch_cost = (line_usage["input_tokens"] * 0.075 + line_usage["output_tokens"] * 0.30) / 1_000_000
    assert line_task["cost_usd"] == pytest.approx(batch_cost)
    assert_counts_are_the_tasks(stack, batch.id, total=6)
    errors = read_lines(sdk, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["bad-one"]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["message"]
    # Every line ran as an ordinary task, recorded with the batch's id and its line.
    rows = stack.sql("SELECT batch_line, status FROM tasks WHERE batch_id = %s ORDER BY batch_line", batch.id)
    assert [r[0] for r in rows] == list(range(6))
    assert [r[1] for r in rows].count("succeeded") == 5
    types = [r[0] for r in stack.sql("SELECT type FROM events WHERE batch_id = %s ORDER BY id", batch.id)]
    assert types[-1] == "batch.completed"
    assert "batch.progress" in types
    # The same events as Server-Sent Events, from the start, ending with the terminal one.
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {sdk.api_key}"}, timeout=30) as http:
        with http.stream("GET", f"/v1/batches/{batch.id}/events", params={"since": 0}) as sse:
            assert sse.status_code == 200
            names = [line.removeprefix("event: ") for line in sse.iter_lines() if line.startswith("event: ")]
        assert names[-1] == "batch.completed"
        assert http.get("/v1/batches/batch_nope/events").status_code == 404


def assert_counts_are_the_tasks(stack: Stack, batch_id: str, *, total: int) -> None:
    """The ended batch's counts, cost and usage (kept a window at a time) are what its tasks say, all settled."""
    (completed, failed, cost, usage, settled_below, settled) = stack.sql(
        "SELECT completed, failed, cost_usd, usage, settled_below, settled FROM batches WHERE id = %s", batch_id
    )[0]
    rows = stack.sql(
        "SELECT status, count(*), sum(cost_usd), sum((usage->>'input_tokens')::int),"
        " sum((usage->>'output_tokens')::int) FROM tasks WHERE batch_id = %s GROUP BY status",
        batch_id,
    )
    by_status = {row[0]: row[1] for row in rows}
    assert (completed, failed) == (by_status.get("succeeded", 0), by_status.get("failed", 0))
    assert cost == pytest.approx(sum(float(row[2] or 0) for row in rows))
    assert usage["input_tokens"] == sum(row[3] or 0 for row in rows) > 0
    assert usage["output_tokens"] == sum(row[4] or 0 for row in rows)
    assert settled_below == total
    assert settled["by_status"] == by_status


def test_line_tasks_push_no_view_for_a_waiter(sdk: openai.OpenAI, stack: Stack) -> None:
    # Nobody waits synchronously for a batch line: its finished view is not pushed to Redis (a 50,000-line batch
    # would leave 50,000 of them there for the key's TTL). A synchronous call's task still gets one.
    done = wait_batch(sdk, start(sdk, [chat_line(f"r{i}", f"nopush {secrets.token_hex(3)}") for i in range(3)]).id)
    assert done.status == "completed", done
    line_tasks = [o["response"]["request_id"] for o in read_lines(sdk, done.output_file_id)]
    assert len(line_tasks) == 3
    assert [stack.redis.exists(f"switchyard:done:{task_id}") for task_id in line_tasks] == [0, 0, 0]
    # A standalone task (a synchronous request's kind) still gets one, so that a waiter hears of it at once.
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {sdk.api_key}"}, timeout=30) as http:
        body = {"type": "chat", "model": "chat-default", "input": {"messages": [{"role": "user", "content": "x"}]}}
        task_id = http.post("/v1/tasks", json=body).json()["id"]
        wait_task(http, task_id)
    assert stack.redis.exists(f"switchyard:done:{task_id}") == 1


def test_embeddings_batch(sdk: openai.OpenAI) -> None:
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "embed-default", "input": [f"text {i}", "more"]},
        }
        for i in range(3)
    ]
    done = wait_batch(sdk, start(sdk, lines, "/v1/embeddings").id)
    assert done.status == "completed", done
    output = read_lines(sdk, done.output_file_id)
    assert [o["custom_id"] for o in output] == ["e0", "e1", "e2"]
    body = output[0]["response"]["body"]
    assert body["object"] == "list"
    assert len(body["data"]) == 2
    assert body["data"][0]["object"] == "embedding"
    assert done.error_file_id is None


def test_predict_batch_of_tasks(sdk: openai.OpenAI) -> None:
    lines = [
        {
            "custom_id": f"p{i}",
            "method": "POST",
            "url": "/v1/tasks",
            "body": {"type": "predict", "model": "risk-classifier", "input": {"inputs": {"features": ROWS[i : i + 2]}}},
        }
        for i in range(4)
    ]
    done = wait_batch(sdk, start(sdk, lines, "/v1/tasks").id)
    assert done.status == "completed", done
    output = read_lines(sdk, done.output_file_id)
    assert [o["custom_id"] for o in output] == ["p0", "p1", "p2", "p3"]
    task = output[0]["response"]["body"]
    assert task["status"] == "succeeded"
    assert len(task["result"]["outputs"]["label"]) == 2


def test_malformed_file_fails_naming_lines(sdk: openai.OpenAI) -> None:
    good = chat_line("a", "fine")
    # A line that is not JSON is refused at upload already, by its number.
    with pytest.raises(openai.BadRequestError, match="line 2"):
        sdk.files.create(file=("bad.jsonl", jsonl([good]) + b"{not json\n"), purpose="batch")
    content = b"".join(
        [
            jsonl([good]),
            jsonl([chat_line("a", "same id again")]),
            jsonl([chat_line("c", "who?", model="no-such-model")]),
            jsonl([{**chat_line("d", "wrong"), "url": "/v1/embeddings"}]),
            jsonl([{**chat_line("e", "nowhere"), "url": "/v1/nope"}]),
            jsonl(
                [{"custom_id": "f", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "chat-default"}}]
            ),
        ]
    )
    done = wait_batch(sdk, start(sdk, content).id)
    assert done.status == "failed", done
    assert done.failed_at is not None
    assert done.errors is not None
    assert done.errors.data is not None
    by_line = {e.line: e.code for e in done.errors.data}
    assert by_line == {
        2: "duplicate_custom_id",
        3: "model_not_found",
        4: "mismatched_endpoint",
        5: "invalid_url",
        6: "invalid_request",
    }
    assert next(e.param for e in done.errors.data if e.line == 6) == "body.messages"
    assert done.output_file_id is None


def test_create_refuses_what_is_cheap_to_see(sdk: openai.OpenAI, stack: Stack, admin_key: str) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(input_file_id="file_nope", endpoint="/v1/chat/completions", completion_window="24h")
    file = sdk.files.create(file=("x.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.batches.create(input_file_id=file.id, endpoint="/v1/completions", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="48h")  # type: ignore[arg-type]


def test_another_tenants_batch_is_not_found(sdk: openai.OpenAI, stack: Stack) -> None:
    batch = start(sdk, [chat_line("a", "mine")])
    other = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.new_key("other-batches", "admin"), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(batch.id)
    assert batch.id not in [b.id for b in other.batches.list()]
    # Nor can it use this tenant's file.
    with pytest.raises(openai.NotFoundError):
        other.batches.create(
            input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    other.close()
    wait_batch(sdk, batch.id)


def test_list_is_a_cursor_page(sdk: openai.OpenAI) -> None:
    ids = [start(sdk, [chat_line("a", f"list {i}")]).id for i in range(3)]
    page = sdk.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more
    rest = sdk.batches.list(limit=2, after=page.data[-1].id)
    assert rest.data[0].id == ids[0]
    for batch_id in ids:
        wait_batch(sdk, batch_id)


def test_cancel_mid_batch_keeps_partial_output(sdk: openai.OpenAI, stack: Stack) -> None:
    nonce = secrets.token_hex(3)
    lines = [chat_line(f"fast-{i}", f"{nonce} quick {i}") for i in range(3)]
    lines += [chat_line(f"slow-{i}", f"{nonce} slow {i} [[sleep:4000]]") for i in range(10)]
    batch = start(sdk, lines)

    def fast_done() -> bool:
        counts = sdk.batches.retrieve(batch.id).request_counts
        return counts is not None and counts.completed >= 3

    wait_until(fast_done, timeout=30, interval=0.1, what="the fast lines")
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    done = wait_batch(sdk, batch.id)
    assert done.status == "cancelled", done
    assert done.cancelled_at is not None
    output = read_lines(sdk, done.output_file_id)
    assert [o["custom_id"] for o in output][:3] == ["fast-0", "fast-1", "fast-2"]
    errors = read_lines(sdk, done.error_file_id)
    assert len(output) + len(errors) == 13
    assert all(e["error"]["code"] == "batch_cancelled" for e in errors)
    # The slow lines stopped: none left running.
    left = stack.sql("SELECT count(*) FROM tasks WHERE batch_id = %s AND status IN ('queued', 'running')", batch.id)
    assert left == [(0,)]
    with pytest.raises(openai.ConflictError):
        sdk.batches.cancel(batch.id)


def test_large_batch_beside_interactive_calls(sdk: openai.OpenAI, stack: Stack) -> None:
    nonce = secrets.token_hex(3)
    batch = start(sdk, [chat_line(f"r{i}", f"{nonce} {i}") for i in range(2000)])
    wait_batch(sdk, batch.id, ("in_progress", *DONE), timeout=60)
    # An interactive call is answered while the batch's lines are being worked through.
    answer = sdk.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "now"}])
    assert answer.choices[0].message.content == "echo: now"
    # Advances count only the lines above those settled (all ended below the first unfinished one): the mark
    # moves up through the batch while it runs.
    marks: set[int] = set()

    def ended() -> bool:
        status, mark = stack.sql("SELECT status, settled_below FROM batches WHERE id = %s", batch.id)[0]
        marks.add(mark)
        return status in DONE

    wait_until(ended, timeout=300, interval=0.05, what="the batch to end")
    done = wait_batch(sdk, batch.id, timeout=60)
    assert any(0 < mark < 2000 for mark in marks), marks
    assert_counts_are_the_tasks(stack, batch.id, total=2000)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert done.request_counts.completed == 2000
    output = read_lines(sdk, done.output_file_id)
    assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(2000)]


# --- a stack of its own: a short completion window, a small release window, a worker to kill ----------------


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"SWITCHYARD_BATCH_COMPLETION_WINDOW_S": "30", "SWITCHYARD_BATCH_WINDOW": "3"}
    s = Stack(tmp_path_factory.mktemp("batches"), redis_db=12, provider_worker=False, ml=False, env=env)
    yield s
    s.close()


@pytest.fixture
def own_sdk(own_stack: Stack) -> Iterator[openai.OpenAI]:
    key = own_stack.new_key("batcher", "admin")
    client = openai.OpenAI(base_url=f"{own_stack.url}/v1", api_key=key, max_retries=0, timeout=30)
    yield client
    client.close()


def test_sigkill_of_worker_mid_batch_runs_each_line_once(own_sdk: openai.OpenAI, own_stack: Stack) -> None:
    worker = own_stack.start_worker("provider,batch")
    nonce = secrets.token_hex(3)
    lines = [chat_line(f"k{i}", f"{nonce} {i} [[sleep:1500]]") for i in range(6)]
    batch = start(own_sdk, lines)

    def running() -> bool:
        rows = own_stack.sql("SELECT count(*) FROM tasks WHERE batch_id = %s AND status = 'running'", batch.id)
        return rows[0][0] > 0

    wait_until(running, timeout=30, interval=0.05, what="a running line")
    worker.kill()
    replacement = own_stack.start_worker("provider,batch")
    try:
        done = wait_batch(own_sdk, batch.id, timeout=90)
    finally:
        replacement.stop()
    assert_each_line_once(own_sdk, own_stack, done, 6)


def test_the_worker_that_ends_a_batchs_lines_advances_it_with_no_control_worker_up(
    own_sdk: openai.OpenAI, own_stack: Stack
) -> None:
    # Validated and its first window (3 lines) released by the control worker, which then stops: the rest of
    # the batch (releasing the other 9 lines, writing the files) is advanced where its lines end.
    nonce = secrets.token_hex(3)
    batch = start(own_sdk, [chat_line(f"k{i}", f"{nonce} {i} [[sleep:200]]") for i in range(12)])

    def first_window() -> bool:
        return bool(own_stack.sql("SELECT released = 3 FROM batches WHERE id = %s", batch.id)[0][0])

    wait_until(first_window, timeout=30, interval=0.05, what="the first window released")
    own_stack.control.stop()
    worker = own_stack.start_worker("provider,batch")
    try:
        done = wait_batch(own_sdk, batch.id, timeout=90)
    finally:
        worker.stop()
        own_stack.control = own_stack.start_worker("control,webhooks")
    assert_each_line_once(own_sdk, own_stack, done, 12)
    assert_counts_are_the_tasks(own_stack, batch.id, total=12)


def assert_each_line_once(sdk: openai.OpenAI, stack: Stack, done: Any, lines: int) -> None:
    """The batch completed with lines k0..k<lines-1> in its output, one task per line, each with exactly one
    succeeded attempt."""
    assert done.status == "completed", done
    assert [o["custom_id"] for o in read_lines(sdk, done.output_file_id)] == [f"k{i}" for i in range(lines)]
    rows = stack.sql(
        "SELECT t.batch_line, count(a.id) FILTER (WHERE a.status = 'succeeded') FROM tasks t "
        "LEFT JOIN attempts a ON a.task_id = t.id WHERE t.batch_id = %s GROUP BY t.batch_line ORDER BY 1",
        done.id,
    )
    assert rows == [(i, 1) for i in range(lines)]


def test_expiry_writes_partial_output(own_sdk: openai.OpenAI, own_stack: Stack) -> None:
    worker = own_stack.start_worker("provider,batch")
    try:
        nonce = secrets.token_hex(3)
        lines = [chat_line(f"x{i}", f"{nonce} {i} [[sleep:12000]]") for i in range(12)]
        file = own_sdk.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
        batch = own_sdk.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"options": {"timeout_s": 30}},
        )
        assert batch.expires_at is not None
        assert batch.expires_at - batch.created_at == 30
        done = wait_batch(own_sdk, batch.id, timeout=120)
    finally:
        worker.stop()
    assert done.status == "expired", done
    assert done.expired_at is not None
    output = read_lines(own_sdk, done.output_file_id)
    errors = read_lines(own_sdk, done.error_file_id)
    assert output, "the lines that ran before the expiry keep their output"
    assert errors
    assert all(e["error"]["code"] == "batch_expired" for e in errors)
    assert sorted(o["custom_id"] for o in output + errors) == sorted(f"x{i}" for i in range(12))
