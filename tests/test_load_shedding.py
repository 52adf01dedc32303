"""Load shedding: with no worker consuming the provider queue, submissions past the configured depth are refused
with 503, `Retry-After` and code `overloaded` (on every submitting endpoint that goes to that queue, while the
ML queue still admits); once a worker drains the queue they are accepted again. Plus the decision itself, on
figures of every shape, including figures too old to act on."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from switchyard.defaults import MODELS_DIR
from switchyard.settings import Settings
from switchyard.shedding.schemas import LoadSnapshot, QueueLoad
from switchyard.shedding.service import Overloaded, Shedder
from tests.support import Stack, chat, wait_until

DEPTH = 3
ROWS: list[list[float]] = json.loads((MODELS_DIR / "risk_classifier.reference.json").read_text())["inputs"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Only the control worker runs (it leads the duties and measures the queues): provider tasks stay queued.
    env = {"SWITCHYARD_SHED_QUEUE_DEPTH": str(DEPTH), "SWITCHYARD_SHED_RETRY_AFTER_S": "2"}
    s = Stack(tmp_path_factory.mktemp("shedding"), redis_db=5, provider_worker=False, ml=False, env=env)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(stack.new_key("shed", "admin")) as c:
        yield c


def submit(client: httpx.Client, text: str = "hi") -> httpx.Response:
    return client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat(text)})


def assert_overloaded(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert error["type"] == "service_unavailable"
    assert error["code"] == "overloaded"
    assert "provider queue" in error["message"]


def test_refused_while_backed_up_and_accepted_once_drained(stack: Stack, client: httpx.Client) -> None:
    for n in range(DEPTH):
        assert submit(client, f"first {n}").status_code == 202
    # The leader publishes every second and the API reads every half second: the bound bites within a few.
    refused = wait_until(lambda: (r := submit(client)).status_code == 503 and r, timeout=15, interval=0.3, what="a 503")
    assert_overloaded(refused)
    admitted = stack.sql("SELECT count(*) FROM tasks WHERE type = 'chat'")[0][0]
    assert_overloaded(
        client.post("/v1/chat/completions", json={"model": "chat-default", "messages": chat("x")["messages"]})
    )
    assert_overloaded(client.post("/v1/embeddings", json={"model": "embed-default", "input": "x"}))
    assert_overloaded(client.post("/v1/workflows/anything/runs", json={"input": {}}))
    assert_overloaded(
        client.post(
            "/v1/batches",
            json={"input_file_id": "file_x", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )
    )
    # Another queue is not backed up: a prediction is still accepted (it waits on the ML queue).
    predict = {"type": "predict", "model": "risk-classifier", "input": {"inputs": {"features": ROWS[:1]}}}
    assert client.post("/v1/tasks", json=predict).status_code == 202
    # Reads are never shed.
    assert client.get("/v1/tasks").status_code == 200
    # Refused submissions wrote nothing.
    assert stack.sql("SELECT count(*) FROM tasks WHERE type = 'chat'")[0][0] == admitted

    stack.start_worker("provider,batch")
    wait_until(lambda: submit(client).status_code == 202, timeout=30, interval=0.3, what="admission again")
    assert stack.sql("SELECT count(*) FROM tasks WHERE type = 'chat' AND status = 'queued'")[0][0] <= DEPTH


def shedder(**env: Any) -> Shedder:
    return Shedder(Settings(**env))


def test_decision_by_depth_and_age_and_staleness() -> None:
    s = shedder(shed_queue_depth=10, shed_queue_age_s=30.0, shed_stale_after_s=5.0)
    s.check("provider")  # no figures yet: admit
    s.apply(LoadSnapshot(time.time(), {"provider": QueueLoad(10, 29.0), "batch": QueueLoad(10**6, 10**5)}))
    s.check("provider")
    s.check("batch")
    s.apply(LoadSnapshot(time.time(), {"provider": QueueLoad(11, 0.0)}))
    with pytest.raises(Overloaded, match="11 tasks are waiting"):
        s.check("provider")
    s.apply(LoadSnapshot(time.time(), {"provider": QueueLoad(1, 31.0)}))
    with pytest.raises(Overloaded, match="waited 31s") as refused:
        s.check("provider")
    assert refused.value.headers["Retry-After"] == "5"
    # Figures nobody has refreshed for longer than the staleness bound say nothing.
    s.apply(LoadSnapshot(time.time() - 6, {"provider": QueueLoad(1000, 1000.0)}))
    s.check("provider")
    s.apply(None)
    s.check("provider")


def test_off_by_default() -> None:
    s = shedder()
    assert not s.enabled
    s.apply(LoadSnapshot(time.time(), {"provider": QueueLoad(10**6, 10**6)}))
    s.check("provider")


def test_snapshot_round_trip() -> None:
    snap = LoadSnapshot(123.5, {"provider": QueueLoad(4, 2.25), "ml": QueueLoad(0, 0.0)})
    assert LoadSnapshot.decode(snap.encode()) == snap
    assert LoadSnapshot.decode({"provider": "1 2"}) is None
    assert LoadSnapshot.decode({"at": "1", "provider": "x"}) is None
