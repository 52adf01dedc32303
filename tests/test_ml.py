"""ML prediction through the real stack: predict tasks, the synchronous endpoint (JSON and CSV), input checks
against the model's signature, micro-batching, KServe and TF Serving deployments, and failover to local ONNX."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from switchyard.defaults import MODELS_DIR
from tests.support import Stack, wait_task

REFERENCE = json.loads((MODELS_DIR / "risk_classifier.reference.json").read_text())
ROWS: list[list[float]] = REFERENCE["inputs"]


def assert_matches_reference(outputs: dict[str, Any], rows: int) -> None:
    """Outputs equal scikit-learn's own outputs on the same rows (recorded when the model was built)."""
    assert outputs["label"] == REFERENCE["outputs"]["label"][:rows]
    np.testing.assert_allclose(outputs["probabilities"], REFERENCE["outputs"]["probabilities"][:rows], atol=1e-4)


def test_predict_task_runs_onnx_and_costs_per_prediction(client: httpx.Client) -> None:
    body = {"type": "predict", "model": "risk-classifier", "input": {"inputs": {"features": ROWS}}}
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    task = wait_task(client, response.json()["id"])
    assert task["status"] == "succeeded", task
    assert_matches_reference(task["result"]["outputs"], len(ROWS))
    assert task["result"]["provider"] == "onnx"
    assert task["usage"]["predictions"] == len(ROWS)
    assert task["cost_usd"] == pytest.approx(len(ROWS) / 1000 * 0.5)


def test_compute_second_pricing(client: httpx.Client) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0, 5.0]] * 4
    response = client.post("/v1/predict/revenue-regressor", json={"inputs": {"features": rows}})
    assert response.status_code == 200, response.text
    task = client.get(f"/v1/tasks/{response.json()['task_id']}").json()
    assert task["usage"]["compute_ms"] > 0
    assert task["cost_usd"] == pytest.approx(task["usage"]["compute_ms"] / 1000 * 2.0, rel=1e-3)


def test_sync_predict_json(client: httpx.Client) -> None:
    response = client.post("/v1/predict/risk-classifier", json={"inputs": {"features": ROWS[:3]}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches_reference(body["outputs"], 3)
    assert body["model"] == "risk-classifier"
    assert body["latency_ms"] > 0
    assert response.headers["x-switchyard-task-id"] == body["task_id"]


def test_sync_predict_csv_raw_and_multipart(client: httpx.Client) -> None:
    header = ",".join(REFERENCE["feature_names"])
    csv_text = "\n".join([header, *(",".join(str(v) for v in row) for row in ROWS[:4])]) + "\n"
    raw = client.post("/v1/predict/risk-classifier", content=csv_text, headers={"Content-Type": "text/csv"})
    assert raw.status_code == 200, raw.text
    assert_matches_reference(raw.json()["outputs"], 4)
    form = client.post("/v1/predict/risk-classifier", files={"file": ("rows.csv", csv_text, "text/csv")})
    assert form.status_code == 200, form.text
    assert_matches_reference(form.json()["outputs"], 4)
    bad = client.post("/v1/predict/risk-classifier", content="a,b\nx,y\n", headers={"Content-Type": "text/csv"})
    assert bad.status_code == 422
    assert bad.json()["error"]["param"] == "file"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"features": [[1.0] * 7]}, "shape [1, 7]"),
        ({"features": [[1.0] * 8], "extra": [1]}, "unknown input 'extra'"),
        ({"feature": [[1.0] * 8]}, "unknown input 'feature'"),
        ({"features": [["a"] * 8]}, "numbers"),
        ({"features": [[1.0] * 8, [1.0] * 7]}, "regular array"),
        ({"features": [1.0] * 8}, "shape [8]"),
    ],
)
def test_wrong_inputs_are_422_naming_the_input(client: httpx.Client, inputs: dict[str, Any], message: str) -> None:
    for response in (
        client.post("/v1/tasks", json={"type": "predict", "model": "risk-classifier", "input": {"inputs": inputs}}),
        client.post("/v1/predict/risk-classifier", json={"inputs": inputs}),
    ):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"].startswith("input.inputs."), error
        assert message in error["message"], error


def test_models_list_includes_signatures(client: httpx.Client) -> None:
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    risk = models["risk-classifier"]
    assert risk["type"] == "predict"
    assert risk["signature"]["inputs"] == [{"name": "features", "dtype": "float32", "shape": [None, 8]}]
    assert {o["name"] for o in risk["signature"]["outputs"]} == {"label", "probabilities"}
    assert models["chat-default"]["object"] == "model"
    assert "signature" not in models["chat-default"]


def test_concurrent_predictions_are_merged_into_batches(client: httpx.Client) -> None:
    def one(i: int) -> int:
        response = client.post("/v1/predict/risk-classifier", json={"inputs": {"features": [ROWS[i % len(ROWS)]]}})
        assert response.status_code == 200, response.text
        assert response.json()["outputs"]["label"] == [REFERENCE["outputs"]["label"][i % len(ROWS)]]
        return int(response.json()["batch_size"])

    with ThreadPoolExecutor(max_workers=24) as pool:
        sizes = list(pool.map(one, range(96)))
    # Single-row requests that arrived together ran in one session call.
    assert max(sizes) > 1, sizes


@pytest.mark.parametrize("model", ["risk-kserve", "risk-tfserving"])
def test_remote_model_servers(client: httpx.Client, model: str) -> None:
    response = client.post(f"/v1/predict/{model}", json={"inputs": {"features": ROWS[:5]}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider"] == model.removeprefix("risk-")
    assert_matches_reference(body["outputs"], 5)


def test_failing_remote_server_falls_back_to_local_onnx(stack: Stack, client: httpx.Client) -> None:
    httpx.post(f"{stack.kserve_url}/control", json={"fail_status": 503}).raise_for_status()
    try:
        response = client.post("/v1/predict/risk-remote-first", json={"inputs": {"features": ROWS[:2]}})
    finally:
        httpx.post(f"{stack.kserve_url}/control", json={"fail_status": None}).raise_for_status()
    assert response.status_code == 200, response.text
    assert_matches_reference(response.json()["outputs"], 2)
    task = client.get(f"/v1/tasks/{response.json()['task_id']}").json()
    assert [(a["provider"], a["status"]) for a in task["attempts"]] == [("kserve", "failed"), ("onnx", "succeeded")]
    assert task["attempts"][0]["error"]["status_code"] == 503
