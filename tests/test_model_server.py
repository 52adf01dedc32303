"""Tests of the ONNX model server (tests/servers/model_server.py), run as real processes on both protocols."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.processes import Process, free_port, wait_http

X = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.25, 8.0]], dtype=np.float32)


def _write_models(directory: Path) -> None:
    """`tiny`: y = x @ W + b; `multi`: the same y, relu(y) and argmax(y) (int64). Input `features` [None, 4]."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 2], np.linspace(-1, 1, 8, dtype=np.float32).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [2], [0.1, -0.2])
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 4])
    for name, extra in (("tiny", False), ("multi", True)):
        nodes = [helper.make_node("MatMul", ["features", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])]
        if extra:
            nodes.append(helper.make_node("Relu", ["y"], ["r"]))
            nodes.append(helper.make_node("ArgMax", ["y"], ["k"], axis=1, keepdims=0))
            outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [None, 2]))
            outputs.append(helper.make_tensor_value_info("k", TensorProto.INT64, [None]))
        graph = helper.make_graph(nodes, name, [features], outputs, initializer=[w, b])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(model)
        onnx.save(model, directory / f"{name}.onnx")


def _expected(models: Path, model: str) -> list[np.ndarray]:
    """The outputs of onnxruntime run directly on X."""
    session = ort.InferenceSession(str(models / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    return list(session.run(None, {"features": X}))


def _assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    _write_models(directory)
    return directory


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[dict[str, str]]:
    logs = tmp_path_factory.mktemp("model-server-logs")
    procs: list[Process] = []
    urls: dict[str, str] = {}
    try:
        for key, protocol, extra in (
            ("kserve", "kserve", []),
            ("tfserving", "tfserving", []),
            ("failing", "kserve", ["--fail-status", "503"]),
        ):
            port = free_port()
            argv = [sys.executable, "-m", "tests.servers.model_server", "--protocol", protocol, "--port", str(port)]
            proc = Process(key, [*argv, "--models-dir", str(models), *extra], dict(os.environ), logs)
            procs.append(proc)
            urls[key] = f"http://127.0.0.1:{port}"
        for proc, url in zip(procs, urls.values(), strict=True):
            wait_http(f"{url}/healthz", proc, timeout=30)
        yield urls
    finally:
        for proc in procs:
            proc.stop(5)


def test_kserve_metadata_and_infer_match_onnxruntime(servers: dict[str, str], models: Path) -> None:
    url = servers["kserve"]
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    meta = httpx.get(f"{url}/v2/models/tiny").json()
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]
    request: dict[str, Any] = {
        "id": "r1",
        "inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()}],
    }
    body = httpx.post(f"{url}/v2/models/tiny/infer", json=request).json()
    assert (body["model_name"], body["id"]) == ("tiny", "r1")
    [out] = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("y", "FP32", [2, 2])
    np.testing.assert_array_equal(np.asarray(out["data"], dtype=np.float32).reshape(2, 2), _expected(models, "tiny")[0])
    # requested outputs only, from a two-output model
    body = httpx.post(f"{url}/v2/models/multi/infer", json={**request, "outputs": [{"name": "r"}]}).json()
    assert [o["name"] for o in body["outputs"]] == ["r"]
    np.testing.assert_array_equal(
        np.asarray(body["outputs"][0]["data"], np.float32).reshape(2, 2), _expected(models, "multi")[1]
    )
    # bad inputs are 400, unknown models 404
    features = request["inputs"][0]
    for bad in ({**features, "datatype": "FP64"}, {**features, "shape": [4, 2]}, {**features, "data": [1.0]}):
        _assert_error(httpx.post(f"{url}/v2/models/tiny/infer", json={"inputs": [bad]}), 400)
    _assert_error(httpx.post(f"{url}/v2/models/nope/infer", json=request), 404)
    assert httpx.get(f"{url}/v2/models/nope").status_code == 404


def test_tfserving_columnar_and_row_formats(servers: dict[str, str], models: Path) -> None:
    url = servers["tfserving"]
    status = httpx.get(f"{url}/v1/models/tiny").json()["model_version_status"][0]
    assert (status["version"], status["state"], status["status"]["error_code"]) == ("1", "AVAILABLE", "OK")
    y, (y2, r2, k2) = _expected(models, "tiny")[0], _expected(models, "multi")
    rows = X.tolist()
    # columnar, single output: TF Serving returns the bare tensor; named or bare input
    for inputs in ({"features": rows}, rows):
        body = httpx.post(f"{url}/v1/models/tiny:predict", json={"inputs": inputs}).json()
        np.testing.assert_array_equal(np.asarray(body["outputs"], np.float32), y)
    # columnar, several outputs: an object by output name; the versioned path too
    body = httpx.post(f"{url}/v1/models/multi/versions/1:predict", json={"inputs": rows}).json()
    assert set(body["outputs"]) == {"y", "r", "k"}
    np.testing.assert_array_equal(np.asarray(body["outputs"]["r"], np.float32), r2)
    # row format: rows for a single output, one object per row for several
    body = httpx.post(f"{url}/v1/models/tiny:predict", json={"instances": rows}).json()
    np.testing.assert_array_equal(np.asarray(body["predictions"], np.float32), y)
    body = httpx.post(f"{url}/v1/models/multi:predict", json={"instances": [{"features": r} for r in rows]}).json()
    np.testing.assert_array_equal(np.asarray([p["y"] for p in body["predictions"]], np.float32), y2)
    assert [p["k"] for p in body["predictions"]] == k2.tolist()
    # errors
    _assert_error(httpx.post(f"{url}/v1/models/tiny:predict", json={"instances": [[1.0, 2.0]]}), 400)
    for path in ("nope:predict", "tiny/versions/7:predict"):
        _assert_error(httpx.post(f"{url}/v1/models/{path}", json={"instances": rows}), 404)


def test_fail_status_and_control(servers: dict[str, str], models: Path) -> None:
    url = servers["failing"]
    request: dict[str, Any] = {
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    _assert_error(httpx.post(f"{url}/v2/models/tiny/infer", json=request), 503)
    assert httpx.get(f"{url}/v2/models/tiny").status_code == 200  # metadata is never failed
    assert httpx.post(f"{url}/control", json={"fail_status": None}).json()["fail_status"] is None
    assert httpx.post(f"{url}/v2/models/tiny/infer", json=request).status_code == 200
    stats = httpx.get(f"{url}/control/stats").json()
    assert stats == {"total": 2, "by_status": {"200": 1, "503": 1}, "by_model": {"tiny": {"200": 1, "503": 1}}}
