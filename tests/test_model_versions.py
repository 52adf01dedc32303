"""Versions of a predict model through the real stack: the traffic split by weight, pinning a version, the
version in each result, `GET /v1/models/{model}`, weights changed at run time (a rollback a running worker
sees without a restart), and failover between the deployments of one version (a remote server, then ONNX)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from switchyard.defaults import MODELS_DIR
from tests.support import Stack, wait_task, wait_until

V1 = json.loads((MODELS_DIR / "risk_classifier.reference.json").read_text())
V2 = json.loads((MODELS_DIR / "risk_classifier_v2.reference.json").read_text())
ROWS = V1["inputs"]
CACHE_S = 0.5

EXTRA_MODELS = f"""
  risk-versions:
    type: predict
    labels: [low, medium, high]
    versions: {{"1": 90, "2": 10}}
    deployments:
      - {{provider: onnx, model: "{MODELS_DIR}/risk_classifier.onnx", version: "1"}}
      - {{provider: kserve, model: risk_classifier_v2, version: "2"}}
      - {{provider: onnx, model: "{MODELS_DIR}/risk_classifier_v2.onnx", version: "2"}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"SWITCHYARD_MODEL_WEIGHTS_CACHE_S": str(CACHE_S), "SWITCHYARD_OPERATOR_TENANTS": '["versions"]'}
    s = Stack(
        tmp_path_factory.mktemp("versions"), redis_db=3, provider_worker=False, extra_models=EXTRA_MODELS, env=env
    )
    yield s
    s.close()


@pytest.fixture(scope="module")
def admin_key(stack: Stack) -> str:
    return stack.new_key("versions")


@pytest.fixture(scope="module")
def client(stack: Stack, admin_key: str) -> Iterator[httpx.Client]:
    with stack.client(admin_key) as c:
        yield c


def predict(client: httpx.Client, row: int = 0, rows: list[list[float]] = ROWS, **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": {"features": [rows[row]]}}
    if options:
        body["options"] = options
    response = client.post("/v1/predict/risk-versions", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def versions_of(client: httpx.Client, n: int) -> Counter[str]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return Counter(r["version"] for r in pool.map(lambda i: predict(client, i % len(ROWS)), range(n)))


def set_weights(client: httpx.Client, weights: dict[str, Any]) -> httpx.Response:
    return client.put("/v1/models/risk-versions/versions", json={"weights": weights})


def test_model_lists_its_versions_with_signatures(client: httpx.Client) -> None:
    model = client.get("/v1/models/risk-versions").json()
    versions = {v["version"]: v for v in model["versions"]}
    assert versions["1"]["weight"] == 90
    assert versions["2"]["weight"] == 10
    # An onnx deployment is known by its file's name, never by the server's path.
    assert versions["2"]["deployments"] == ["kserve/risk_classifier_v2", "onnx/risk_classifier_v2.onnx"]
    for v in versions.values():
        assert v["signature"]["inputs"] == [{"name": "features", "dtype": "float32", "shape": [None, 8]}]
    assert client.get("/v1/models/no-such-model").status_code == 404


def test_traffic_splits_90_10(client: httpx.Client) -> None:
    counts = versions_of(client, 300)
    # Binomial(300, 0.1): mean 30, sd 5.2; this range is more than 3.5 sd either side.
    assert 12 <= counts["2"] <= 48, counts
    assert counts["1"] + counts["2"] == 300


def test_pinned_version_answers_every_time(client: httpx.Client) -> None:
    for i in range(8):
        body = predict(client, i, V2["inputs"], version="2")
        assert body["version"] == "2"
        assert body["outputs"]["label"] == [V2["outputs"]["label"][i]]
        np.testing.assert_allclose(body["outputs"]["probabilities"], [V2["outputs"]["probabilities"][i]], atol=1e-4)
        assert body["top_k"][0][0]["label"] == ["low", "medium", "high"][V2["outputs"]["label"][i]]
        one = predict(client, i, version="1")
        assert one["version"] == "1"
        assert one["outputs"]["label"] == [V1["outputs"]["label"][i]]
    # The query parameter pins as well (for CSV and image uploads, which have no options object).
    csv = ",".join(str(v) for v in ROWS[0]) + "\n"
    response = client.post("/v1/predict/risk-versions?version=2", content=csv, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "2"
    # A task pinned through /v1/tasks says which version answered in its result.
    created = client.post(
        "/v1/tasks",
        json={
            "type": "predict",
            "model": "risk-versions",
            "input": {"inputs": {"features": [ROWS[0]]}},
            "options": {"version": "1"},
        },
    )
    task = wait_task(client, created.json()["id"])
    assert task["result"]["version"] == "1"


@pytest.mark.parametrize(
    ("model", "version", "message"),
    [("risk-versions", "3", "no version '3'"), ("risk-classifier", "1", "has no versions")],
)
def test_unknown_version_is_422(client: httpx.Client, model: str, version: str, message: str) -> None:
    response = client.post(
        f"/v1/predict/{model}", json={"inputs": {"features": [ROWS[0]]}, "options": {"version": version}}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "options.version"
    assert message in response.json()["error"]["message"]


def test_rollback_reaches_the_running_worker(client: httpx.Client, stack: Stack) -> None:
    assert stack.ml is not None
    worker_pid = stack.ml.proc.pid
    try:
        forward = set_weights(client, {"2": 100})  # roll forward: version 1 left out gets 0
        assert forward.status_code == 200, forward.text
        assert {v["version"]: v["weight"] for v in forward.json()["versions"]} == {"1": 0, "2": 100}
        wait_until(lambda: versions_of(client, 16) == Counter({"2": 16}), timeout=10, what="every call on version 2")
        assert versions_of(client, 40) == Counter({"2": 40})
        back = set_weights(client, {"1": 100, "2": 0})  # roll back
        assert back.status_code == 200, back.text
        wait_until(lambda: versions_of(client, 16) == Counter({"1": 16}), timeout=10, what="every call on version 1")
        assert versions_of(client, 40) == Counter({"1": 40})
        assert client.get("/v1/models/risk-versions").json()["versions"][0]["weight"] == 100
    finally:
        set_weights(client, {"1": 90, "2": 10})
    entries = client.get("/v1/audit", params={"action": "model.weights.update"}).json()["data"]
    # Newest first: the reset of the `finally`, the rollback, the roll forward (from the config's weights).
    assert [e["after"]["weights"] for e in entries[:3]] == [{"1": 90, "2": 10}, {"1": 100, "2": 0}, {"1": 0, "2": 100}]
    assert entries[2]["before"] == {"weights": {"1": 90, "2": 10}}
    assert entries[2]["target_id"] == "risk-versions"
    # The same worker process all along: no restart.
    assert stack.ml.proc.pid == worker_pid
    assert stack.ml.alive()


def test_weights_are_checked_and_admin_only(client: httpx.Client, stack: Stack) -> None:
    for weights, param in (
        ({"7": 1}, "weights.7"),
        ({"1": -1}, "weights.1"),
        ({"1": "x"}, "weights.1"),
        ({"1": 0}, "weights"),
    ):
        response = set_weights(client, weights)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == param
    no_versions = client.put("/v1/models/risk-classifier/versions", json={"weights": {"1": 1}})
    assert no_versions.status_code == 422
    with stack.client(stack.new_key("versions", role="member")) as member:
        assert member.put("/v1/models/risk-versions/versions", json={"weights": {"1": 1}}).status_code == 403
    # The weights route every tenant's traffic: another tenant's admin may not move them.
    with stack.client(stack.new_key("not-an-operator", role="admin")) as other:
        refused = other.put("/v1/models/risk-versions/versions", json={"weights": {"1": 1}})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "operator_only"
        unchanged = other.get("/v1/models/risk-versions").json()["versions"]
        assert {v["version"]: v["weight"] for v in unchanged} == {"1": 90, "2": 10}


def test_a_version_fails_over_between_its_deployments(client: httpx.Client, stack: Stack) -> None:
    # Version 2's first deployment is the KServe server; make it fail, and the ONNX file of version 2 answers.
    httpx.post(f"{stack.kserve_url}/control", json={"fail_status": 503}).raise_for_status()
    try:
        body = predict(client, 3, V2["inputs"], version="2")
        assert body["version"] == "2"
        assert body["provider"] == "onnx"
        assert body["outputs"]["label"] == [V2["outputs"]["label"][3]]
        task = client.get(f"/v1/tasks/{body['task_id']}").json()
        assert [a["deployment"] for a in task["attempts"]][0] == "kserve/risk_classifier_v2"
        assert task["attempts"][0]["error"]["status_code"] == 503
    finally:
        httpx.post(f"{stack.kserve_url}/control", json={"fail_status": None}).raise_for_status()
    remote = predict(client, 4, V2["inputs"], version="2")
    assert remote["provider"] == "kserve"
    assert remote["outputs"]["label"] == [V2["outputs"]["label"][4]]
