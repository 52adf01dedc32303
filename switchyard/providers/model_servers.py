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
from switchyard.providers.loop_clients import LoopClients

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
    """The HTTP plumbing of a model server; subclasses say what to post and how to read the answer."""

    kind = ""

    def __init__(self, config: ProviderConfig) -> None:
        assert config.base_url is not None  # the config refuses these kinds without one
        client_args: dict[str, Any] = {
            "base_url": config.base_url.rstrip("/"),
            "timeout": config.timeout_s or 60.0,
            "limits": httpx.Limits(max_connections=config.max_connections, max_keepalive_connections=64),
            "follow_redirects": False,
        }
        self._client = httpx.Client(**client_args)
        self._async_clients = LoopClients(lambda: httpx.AsyncClient(**client_args), lambda client: client.aclose())

    def _call(self, model: str, request: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        """The path and body to post for a prediction, and the inputs as arrays."""
        raise NotImplementedError

    def _outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """The named outputs in the server's answer."""
        raise NotImplementedError

    def _result(self, model: str, arrays: dict[str, np.ndarray], response: httpx.Response, t0: float) -> CallResult:
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if response.status_code >= 400:
            raise status_error(response.status_code, _error_text(response), response.headers)
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise ProviderError("provider_error", "model server answered non-JSON", retryable=True) from None
        outputs = self._outputs(data)
        return CallResult({"outputs": outputs}, Usage(predictions=_rows(arrays), compute_ms=elapsed_ms), model)

    def predict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        path, body, arrays = self._call(model, request)
        t0 = time.perf_counter()
        with _translated_errors():
            response = self._client.post(path, json=body, timeout=timeout_s)
        return self._result(model, arrays, response, t0)

    async def apredict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """`predict` on the running event loop."""
        path, body, arrays = self._call(model, request)
        t0 = time.perf_counter()
        with _translated_errors():
            response = await self._async_clients.get().post(path, json=body, timeout=timeout_s)
        return self._result(model, arrays, response, t0)

    def chat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        raise unsupported(self.kind, "chat")

    def embed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported(self.kind, "embed")

    def moderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported(self.kind, "moderate")

    async def achat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        """Refused, as `chat` is."""
        raise unsupported(self.kind, "chat")

    async def aembed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """Refused, as `embed` is."""
        raise unsupported(self.kind, "embed")

    async def amoderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """Refused, as `moderate` is."""
        raise unsupported(self.kind, "moderate")

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        """Close the running loop's async client."""
        await self._async_clients.aclose()


class KServeAdapter(_HttpModelServer):
    """`POST /v2/models/{model}/infer` with typed, flattened tensors."""

    kind = "kserve"

    def _call(self, model: str, request: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        arrays = {name: _array(value) for name, value in request["inputs"].items()}
        body = {
            "inputs": [
                {"name": n, "shape": list(a.shape), "datatype": _KSERVE_TYPES[a.dtype.name], "data": a.ravel().tolist()}
                for n, a in arrays.items()
            ]
        }
        return f"/v2/models/{model}/infer", body, arrays

    def _outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        try:
            return {
                o["name"]: np.asarray(o["data"], dtype=_NUMPY_TYPES.get(o.get("datatype", ""), None))
                .reshape(o["shape"])
                .tolist()
                for o in data["outputs"]
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError("provider_error", f"malformed KServe response: {exc}", retryable=False) from None


class TFServingAdapter(_HttpModelServer):
    """`POST /v1/models/{model}:predict` in the columnar ("inputs") format."""

    kind = "tfserving"

    def _call(self, model: str, request: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        arrays = {name: _array(value) for name, value in request["inputs"].items()}
        return f"/v1/models/{model}:predict", {"inputs": {n: a.tolist() for n, a in arrays.items()}}, arrays

    def _outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        if "outputs" not in data:
            raise ProviderError("provider_error", "malformed TF Serving response: no 'outputs'", retryable=False)
        # A single-output model answers the bare tensor; it has no name to give.
        outputs = data["outputs"]
        return outputs if isinstance(outputs, dict) else {"output": outputs}


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
