"""Remote model servers: `kserve` (the KServe v2 / Open Inference Protocol, as KServe, Triton and OpenVINO
serve it) and `tfserving` (TensorFlow Serving's REST `:predict`). They take the same `{"inputs": {...}}` as
local ONNX models and answer the same `{"outputs": {...}}`, so a model can fail over between them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np

from switchyard.core.config import ProviderConfig
from switchyard.core.errors import ProviderError
from switchyard.providers.base import CallResult, OnDelta, Usage, unsupported
from switchyard.providers.errors import connection_error, status_error, timeout_error

_KSERVE_TYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "bool": "BOOL"}
_NUMPY_TYPES = {v: k for k, v in _KSERVE_TYPES.items()}


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise timeout_error(str(exc)) from exc
    except httpx.TransportError as exc:
        raise connection_error(str(exc)) from exc


def _array(value: Any) -> np.ndarray:
    """JSON numbers as the dtypes models take: floats as float32, integers as int64."""
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return array.astype("float32")
    if array.dtype.kind in "iu":
        return array.astype("int64")
    if array.dtype.kind == "b":
        return array
    raise ProviderError("invalid_request", "inputs must be arrays of numbers", retryable=False)


class _HttpModelServer:
    kind = ""

    def __init__(self, config: ProviderConfig) -> None:
        assert config.base_url is not None  # the config refuses these kinds without one
        self._client = httpx.Client(
            base_url=config.base_url.rstrip("/"),
            timeout=config.timeout_s or 60.0,
            limits=httpx.Limits(max_connections=config.max_connections, max_keepalive_connections=64),
            follow_redirects=False,
        )

    def _post(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        with _translated_errors():
            response = self._client.post(path, json=body, timeout=timeout_s)
        if response.status_code >= 400:
            raise status_error(response.status_code, _error_text(response), response.headers)
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise ProviderError("provider_error", "model server answered non-JSON", retryable=True) from None
        return data

    def chat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        raise unsupported(self.kind, "chat")

    def embed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported(self.kind, "embed")

    def moderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported(self.kind, "moderate")

    def close(self) -> None:
        self._client.close()


class KServeAdapter(_HttpModelServer):
    """`POST /v2/models/{model}/infer` with typed, flattened tensors."""

    kind = "kserve"

    def predict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        arrays = {name: _array(value) for name, value in request["inputs"].items()}
        body = {
            "inputs": [
                {"name": n, "shape": list(a.shape), "datatype": _KSERVE_TYPES[a.dtype.name], "data": a.ravel().tolist()}
                for n, a in arrays.items()
            ]
        }
        t0 = time.perf_counter()
        data = self._post(f"/v2/models/{model}/infer", body, timeout_s)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        try:
            outputs = {
                o["name"]: np.asarray(o["data"], dtype=_NUMPY_TYPES.get(o.get("datatype", ""), None))
                .reshape(o["shape"])
                .tolist()
                for o in data["outputs"]
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError("provider_error", f"malformed KServe response: {exc}", retryable=False) from None
        rows = _rows(arrays)
        return CallResult({"outputs": outputs}, Usage(predictions=rows, compute_ms=elapsed_ms), model)


class TFServingAdapter(_HttpModelServer):
    """`POST /v1/models/{model}:predict` in the columnar ("inputs") format."""

    kind = "tfserving"

    def predict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        arrays = {name: _array(value) for name, value in request["inputs"].items()}
        body = {"inputs": {n: a.tolist() for n, a in arrays.items()}}
        t0 = time.perf_counter()
        data = self._post(f"/v1/models/{model}:predict", body, timeout_s)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if "outputs" not in data:
            raise ProviderError("provider_error", "malformed TF Serving response: no 'outputs'", retryable=False)
        # A single-output model answers the bare tensor; it has no name to give.
        outputs = data["outputs"] if isinstance(data["outputs"], dict) else {"output": data["outputs"]}
        rows = _rows(arrays)
        return CallResult({"outputs": outputs}, Usage(predictions=rows, compute_ms=elapsed_ms), model)


def _rows(arrays: dict[str, np.ndarray]) -> int:
    first = next(iter(arrays.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])[:500]
    return str(body)[:500]
