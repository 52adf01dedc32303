"""A real model server for tests: ONNX models served by onnxruntime over KServe v2 or TensorFlow Serving REST.

Run ``python -m tests.servers.model_server --protocol kserve|tfserving --port P --models-dir DIR
[--host H] [--fail-status S] [--latency-ms N]``. Every ``DIR/*.onnx`` is loaded before the port opens
(model name = file stem, version ``1``); only the chosen protocol's routes are served.

KServe v2 / Open Inference Protocol (as Triton and OpenVINO Model Server speak it)
- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models/{name}[/versions/1]/ready``
- ``GET /v2/models/{name}[/versions/1]`` -> ``{"name", "versions": ["1"], "platform": "onnxruntime_onnx",
  "inputs": [{"name", "datatype", "shape"}], "outputs": [...]}`` (``-1`` for dynamic dimensions)
- ``POST /v2/models/{name}[/versions/1]/infer`` with ``{"id"?, "inputs": [{"name", "shape", "datatype",
  "data"}], "outputs"?: [{"name"}]}`` -> ``{"model_name", "model_version": "1", "id"?, "outputs": [{"name",
  "datatype", "shape", "data"}]}``. ``data`` is flat row-major (nested is accepted too). The datatype must be
  the model's (FP32, FP64, FP16, INT8..INT64, UINT8..UINT64, BOOL), as Triton requires.

TensorFlow Serving REST
- ``GET /v1/models/{name}[/versions/1]`` -> model version status; ``GET /v1/models/{name}/metadata``
- ``POST /v1/models/{name}[/versions/1]:predict`` with ``{"signature_name"?, "instances": [...]}`` (row
  format: rows for a single-input model, else objects naming the inputs) -> ``{"predictions": [...]}`` (rows
  for a single-output model, else one object per row), or ``{"inputs": {name: tensor}}`` (columnar; a bare
  tensor for a single-input model) -> ``{"outputs": {name: tensor}}``, ``{"outputs": tensor}`` for a
  single-output model.

Errors are ``{"error": "..."}`` in both protocols: 400 for a bad request, 404 for an unknown model or version,
500 if onnxruntime fails.

Both protocols
- ``GET /healthz`` -> ``{"ok": true, "protocol", "models": [...]}`` (models are loaded before the port opens)
- ``GET /control``; ``POST /control`` with any of ``{"fail_status": 400-599 | null, "latency_ms": int}``.
  The latency is slept before every infer/predict answer; a fail status answers every infer/predict with
  that status and the protocol's error body. Metadata and health requests are never delayed nor failed.
- ``GET /control/stats`` -> ``{"total", "by_status": {"200": n}, "by_model": {name: {"200": n}}}`` counting
  infer/predict requests (by the model name in the path); ``POST /control/reset`` clears them.

Outputs that are not tensors (e.g. a scikit-learn ZipMap's sequence of maps) are not served.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["create_app", "load_models", "main"]

Protocol = Literal["kserve", "tfserving"]
Array = npt.NDArray[Any]
VERSION = "1"
log = logging.getLogger("model_server")

# onnxruntime element type -> (numpy dtype, KServe datatype, TensorFlow dtype)
_TYPES: dict[str, tuple[type[np.generic], str, str]] = {
    "tensor(float)": (np.float32, "FP32", "DT_FLOAT"),
    "tensor(double)": (np.float64, "FP64", "DT_DOUBLE"),
    "tensor(float16)": (np.float16, "FP16", "DT_HALF"),
    "tensor(int8)": (np.int8, "INT8", "DT_INT8"),
    "tensor(int16)": (np.int16, "INT16", "DT_INT16"),
    "tensor(int32)": (np.int32, "INT32", "DT_INT32"),
    "tensor(int64)": (np.int64, "INT64", "DT_INT64"),
    "tensor(uint8)": (np.uint8, "UINT8", "DT_UINT8"),
    "tensor(uint16)": (np.uint16, "UINT16", "DT_UINT16"),
    "tensor(uint32)": (np.uint32, "UINT32", "DT_UINT32"),
    "tensor(uint64)": (np.uint64, "UINT64", "DT_UINT64"),
    "tensor(bool)": (np.bool_, "BOOL", "DT_BOOL"),
}
# numpy kinds of parsed JSON data that may be converted to a tensor of the given kind
_ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype[Any]
    kserve: str
    tf: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension

    @classmethod
    def of(cls, arg: Any) -> TensorSpec | None:
        """The spec of an onnxruntime NodeArg, or None if it is not a tensor of a supported type."""
        kind = _TYPES.get(cast(str, arg.type))
        if kind is None:
            return None
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in cast(list[Any], arg.shape))
        return cls(cast(str, arg.name), np.dtype(kind[0]), kind[1], kind[2], shape)

    def array(self, value: Any, where: str) -> Array:
        """`value` (parsed JSON) as an array of this tensor's dtype; 400 if it is ragged or of the wrong kind."""
        try:
            raw = np.asarray(value)
        except ValueError as e:
            raise ApiError(400, f"{where}: tensor data is ragged or malformed") from e
        if raw.size and raw.dtype.kind not in _ACCEPTED_KINDS[self.dtype.kind]:
            raise ApiError(400, f"{where}: expected {self.dtype} values, got {raw.dtype} data")
        return raw.astype(self.dtype, copy=False)

    def check_shape(self, arr: Array, where: str) -> None:
        dims = zip(self.shape, arr.shape, strict=False)
        if arr.ndim != len(self.shape) or any(want not in (-1, got) for want, got in dims):
            raise ApiError(400, f"{where}: shape {list(arr.shape)} does not match the model's {list(self.shape)}")


@dataclass
class Model:
    name: str
    session: Any  # onnxruntime.InferenceSession (untyped)
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    async def run(self, feeds: dict[str, Array], outputs: list[str] | None = None) -> dict[str, Array]:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise ApiError(400, f"model '{self.name}' expects inputs {list(self.inputs)}; missing {missing}")
        for name, arr in feeds.items():
            self.inputs[name].check_shape(arr, f"input '{name}'")
        names = outputs if outputs is not None else list(self.outputs)
        try:
            results = await run_in_threadpool(self.session.run, names, feeds)
        except Exception as e:
            raise ApiError(500, f"onnxruntime failed on model '{self.name}': {e}") from e
        # the declared dtype also turns numpy.longlong (which orjson does not know) into numpy.int64
        pairs = zip(names, cast(list[Array], results), strict=True)
        return {n: np.ascontiguousarray(r, dtype=self.outputs[n].dtype) for n, r in pairs}


def load_models(models_dir: Path) -> dict[str, Model]:
    """Every `models_dir/*.onnx` in an onnxruntime session, by file stem."""
    models: dict[str, Model] = {}
    for path in sorted(models_dir.glob("*.onnx")):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs: dict[str, TensorSpec] = {}
        for arg in session.get_inputs():
            spec = TensorSpec.of(arg)
            if spec is None:
                raise SystemExit(f"{path}: input '{arg.name}' has unsupported type {arg.type}")
            inputs[spec.name] = spec
        outputs: dict[str, TensorSpec] = {}
        for arg in session.get_outputs():
            spec = TensorSpec.of(arg)
            if spec is None:
                log.warning("%s: output '%s' of type %s is not served", path.name, arg.name, arg.type)
            else:
                outputs[spec.name] = spec
        models[path.stem] = Model(path.stem, session, inputs, outputs)
    return models


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


async def _payload(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"malformed JSON: {e}") from e
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


@dataclass
class Server:
    protocol: Protocol
    models: dict[str, Model]
    fail_status: int | None = None
    latency_ms: int = 0
    stats: Counter[tuple[str, int]] = field(default_factory=Counter)

    def model(self, name: str, version: str | None = None) -> Model:
        model = self.models.get(name)
        if model is None or version not in (None, VERSION):
            if self.protocol == "tfserving":
                wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
                raise ApiError(404, f"Servable not found for request: {wanted}")
            version_text = "" if version is None else f" version {version}"
            raise ApiError(404, f"Request for unknown model: '{name}'{version_text} is not found")
        return model

    async def _inference(self, request: Request, answer: Callable[[Model, dict[str, Any]], Awaitable[Any]]) -> Response:
        """Latency, injected failure, model lookup and stats around one infer/predict request."""
        name: str = request.path_params["name"]
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if self.fail_status is not None:
            response = _error(self.fail_status, f"injected failure: HTTP {self.fail_status}")
        else:
            try:
                model = self.model(name, request.path_params.get("version"))
                response = _json(await answer(model, await _payload(request)))
            except ApiError as e:
                response = _error(e.status, e.message)
        self.stats[(name, response.status_code)] += 1
        return response

    # --- KServe v2 ------------------------------------------------------------------------------------------

    async def kserve_ready(self, request: Request) -> Response:
        return _json({"live": True} if request.url.path.endswith("/live") else {"ready": True})

    async def kserve_server(self, request: Request) -> Response:
        return _json({"name": "switchyard-test-model-server", "version": "1", "extensions": []})

    async def kserve_metadata(self, request: Request) -> Response:
        try:
            model = self.model(request.path_params["name"], request.path_params.get("version"))
        except ApiError as e:
            return _error(e.status, e.message)
        if request.url.path.endswith("/ready"):
            return _json({"name": model.name, "ready": True})

        def specs(tensors: dict[str, TensorSpec]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.kserve, "shape": list(t.shape)} for t in tensors.values()]

        return _json(
            {
                "name": model.name,
                "versions": [VERSION],
                "platform": "onnxruntime_onnx",
                "inputs": specs(model.inputs),
                "outputs": specs(model.outputs),
            }
        )

    async def kserve_infer(self, request: Request) -> Response:
        return await self._inference(request, self._kserve_answer)

    async def _kserve_answer(self, model: Model, payload: dict[str, Any]) -> dict[str, Any]:
        inputs = payload.get("inputs")
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
            raise ApiError(400, "'inputs' must be a non-empty list of tensor objects")
        feeds: dict[str, Array] = {}
        for item in cast(list[dict[str, Any]], inputs):
            name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
            spec = model.inputs.get(name) if isinstance(name, str) else None
            if spec is None or name in feeds:
                raise ApiError(400, f"unexpected inference input '{name}' for model '{model.name}'")
            if datatype != spec.kserve:
                raise ApiError(
                    400, f"unexpected datatype {datatype} for inference input '{name}', expecting {spec.kserve}"
                )
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
                raise ApiError(400, f"input '{name}': 'shape' must be a list of non-negative integers")
            if "data" not in item:
                raise ApiError(400, f"input '{name}' has no 'data'")
            arr = spec.array(item["data"], f"input '{name}'")
            if arr.size != math.prod(shape):
                raise ApiError(400, f"input '{name}': {arr.size} values do not fill shape {shape}")
            feeds[spec.name] = arr.reshape(shape)
        wanted: list[str] | None = None
        if payload.get("outputs") is not None:
            requested = payload["outputs"]
            if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
                raise ApiError(400, "'outputs' must be a list of objects with a 'name'")
            wanted = [o.get("name") for o in requested]
            unknown = [n for n in wanted if n not in model.outputs]
            if unknown:
                raise ApiError(400, f"unexpected inference outputs {unknown} for model '{model.name}'")
        results = await model.run(feeds, wanted)
        response: dict[str, Any] = {"model_name": model.name, "model_version": VERSION}
        if "id" in payload:
            response["id"] = payload["id"]
        response["outputs"] = [
            {"name": n, "datatype": model.outputs[n].kserve, "shape": list(a.shape), "data": a.ravel()}
            for n, a in results.items()
        ]
        return response

    # --- TensorFlow Serving REST ----------------------------------------------------------------------------

    async def tf_status(self, request: Request) -> Response:
        try:
            self.model(request.path_params["name"], request.path_params.get("version"))
        except ApiError as e:
            return _error(e.status, e.message)
        status = {"error_code": "OK", "error_message": ""}
        return _json({"model_version_status": [{"version": VERSION, "state": "AVAILABLE", "status": status}]})

    async def tf_metadata(self, request: Request) -> Response:
        try:
            model = self.model(request.path_params["name"])
        except ApiError as e:
            return _error(e.status, e.message)

        def specs(tensors: dict[str, TensorSpec]) -> dict[str, Any]:
            return {
                t.name: {
                    "dtype": t.tf,
                    "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in t.shape], "unknown_rank": False},
                    "name": t.name,
                }
                for t in tensors.values()
            }

        signature = {
            "inputs": specs(model.inputs),
            "outputs": specs(model.outputs),
            "method_name": "tensorflow/serving/predict",
        }
        return _json(
            {
                "model_spec": {"name": model.name, "signature_name": "", "version": VERSION},
                "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
            }
        )

    async def tf_predict(self, request: Request) -> Response:
        return await self._inference(request, self._tf_answer)

    async def _tf_answer(self, model: Model, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("signature_name", "serving_default") not in ("serving_default", ""):
            raise ApiError(400, f'Serving signature name: "{payload["signature_name"]}" not found in signature def')
        if ("instances" in payload) == ("inputs" in payload):
            raise ApiError(
                400,
                "Missing 'inputs' or 'instances' key"
                if "inputs" not in payload
                else "'instances' and 'inputs' cannot both be present",
            )
        only_input = next(iter(model.inputs)) if len(model.inputs) == 1 else None
        if "instances" in payload:
            instances = payload["instances"]
            if not isinstance(instances, list) or not instances:
                raise ApiError(400, "'instances' must be a non-empty list")
            if all(isinstance(i, dict) for i in instances):
                rows = cast(list[dict[str, Any]], instances)
                if any(set(row) != set(model.inputs) for row in rows):
                    raise ApiError(400, f"every instance must name exactly the inputs {list(model.inputs)}")
                feeds = {n: s.array([row[n] for row in rows], f"input '{n}'") for n, s in model.inputs.items()}
            elif only_input is None or any(isinstance(i, dict) for i in instances):
                raise ApiError(400, f"instances must be objects naming the inputs {list(model.inputs)}")
            else:
                feeds = {only_input: model.inputs[only_input].array(instances, f"input '{only_input}'")}
            results = await model.run(feeds)
            if len(results) == 1:
                return {"predictions": next(iter(results.values()))}
            batch = {len(a) if a.ndim else -1 for a in results.values()}
            if len(batch) != 1 or -1 in batch:
                raise ApiError(400, "outputs of different batch sizes cannot be returned as rows; use 'inputs'")
            return {"predictions": [{n: a[i] for n, a in results.items()} for i in range(batch.pop())]}
        inputs = payload["inputs"]
        if isinstance(inputs, dict):
            if set(inputs) != set(model.inputs):
                raise ApiError(400, f"'inputs' must name exactly the inputs {list(model.inputs)}")
            feeds = {n: s.array(inputs[n], f"input '{n}'") for n, s in model.inputs.items()}
        elif only_input is None:
            raise ApiError(400, f"'inputs' must be an object naming the inputs {list(model.inputs)}")
        else:
            feeds = {only_input: model.inputs[only_input].array(inputs, f"input '{only_input}'")}
        results = await model.run(feeds)
        return {"outputs": next(iter(results.values())) if len(results) == 1 else results}

    # --- shared ---------------------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return _json({"ok": True, "protocol": self.protocol, "models": list(self.models)})

    def _settings(self) -> dict[str, Any]:
        return {"fail_status": self.fail_status, "latency_ms": self.latency_ms}

    async def get_control(self, request: Request) -> Response:
        return _json(self._settings())

    async def post_control(self, request: Request) -> Response:
        try:
            body = await _payload(request)
        except ApiError as e:
            return _error(e.status, e.message)
        fail, latency = body.get("fail_status", self.fail_status), body.get("latency_ms", self.latency_ms)
        if fail is not None and not (type(fail) is int and 400 <= fail <= 599):
            return _error(400, "fail_status must be null or an integer 400-599")
        if not (type(latency) is int and latency >= 0):
            return _error(400, "latency_ms must be a non-negative integer")
        self.fail_status, self.latency_ms = fail, latency
        return _json(self._settings())

    async def get_stats(self, request: Request) -> Response:
        by_status: Counter[str] = Counter()
        by_model: dict[str, dict[str, int]] = {}
        for (model, status), n in sorted(self.stats.items()):
            by_status[str(status)] += n
            by_model.setdefault(model, {})[str(status)] = n
        return _json({"total": sum(by_status.values()), "by_status": dict(by_status), "by_model": by_model})

    async def post_reset(self, request: Request) -> Response:
        self.stats.clear()
        return _json({"ok": True})


def create_app(
    protocol: Protocol, models_dir: Path, *, fail_status: int | None = None, latency_ms: int = 0
) -> Starlette:
    """The app, with its models loaded; its state is `app.state.server` (a Server)."""
    server = Server(protocol, load_models(models_dir), fail_status=fail_status, latency_ms=latency_ms)
    routes = [
        Route("/healthz", server.healthz, methods=["GET"]),
        Route("/control", server.get_control, methods=["GET"]),
        Route("/control", server.post_control, methods=["POST"]),
        Route("/control/stats", server.get_stats, methods=["GET"]),
        Route("/control/reset", server.post_reset, methods=["POST"]),
    ]
    if protocol == "kserve":
        routes += [
            Route("/v2", server.kserve_server, methods=["GET"]),
            Route("/v2/health/live", server.kserve_ready, methods=["GET"]),
            Route("/v2/health/ready", server.kserve_ready, methods=["GET"]),
            Route("/v2/models/{name}", server.kserve_metadata, methods=["GET"]),
            Route("/v2/models/{name}/ready", server.kserve_metadata, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}", server.kserve_metadata, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/ready", server.kserve_metadata, methods=["GET"]),
            Route("/v2/models/{name}/infer", server.kserve_infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", server.kserve_infer, methods=["POST"]),
        ]
    else:
        routes += [
            Route("/v1/models/{name}:predict", server.tf_predict, methods=["POST"]),
            Route("/v1/models/{name}/versions/{version}:predict", server.tf_predict, methods=["POST"]),
            Route("/v1/models/{name}", server.tf_status, methods=["GET"]),
            Route("/v1/models/{name}/versions/{version}", server.tf_status, methods=["GET"]),
            Route("/v1/models/{name}/metadata", server.tf_metadata, methods=["GET"]),
        ]
    app = Starlette(routes=routes)
    app.state.server = server
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ONNX model server for tests (KServe v2 or TF Serving REST)")
    parser.add_argument("--protocol", choices=["kserve", "tfserving"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--fail-status", type=int, default=None, help="answer every infer/predict with this status")
    parser.add_argument("--latency-ms", type=int, default=0, help="sleep this long before every infer/predict answer")
    args = parser.parse_args(argv)
    if not args.models_dir.is_dir():
        parser.error(f"--models-dir {args.models_dir} is not a directory")
    if args.fail_status is not None and not 400 <= args.fail_status <= 599:
        parser.error("--fail-status must be 400-599")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    app = create_app(args.protocol, args.models_dir, fail_status=args.fail_status, latency_ms=args.latency_ms)
    log.info("serving %s on %s:%d: %s", args.protocol, args.host, args.port, ", ".join(app.state.server.models))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
