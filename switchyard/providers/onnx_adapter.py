"""`onnx` kind: models run in process by ONNX Runtime, one micro-batched session per model per worker process."""

from __future__ import annotations

import threading
from typing import Any

from switchyard.core.config import ProviderConfig
from switchyard.core.errors import AppError, ProviderError
from switchyard.ml.batching import BatchedSession
from switchyard.ml.signature import check_inputs
from switchyard.providers.base import CallResult, OnDelta, Usage, unsupported


class OnnxAdapter:
    """`model` of a deployment is the path of the .onnx file (made absolute when the config is loaded)."""

    def __init__(self, config: ProviderConfig) -> None:
        self._config = config
        self._sessions: dict[str, BatchedSession] = {}
        self._lock = threading.Lock()

    def session(self, path: str) -> BatchedSession:
        """The model's session, made once per process (after any fork: workers call this from tasks)."""
        session = self._sessions.get(path)
        if session is None:
            with self._lock:
                session = self._sessions.get(path)
                if session is None:
                    session = BatchedSession(
                        path,
                        max_batch_size=self._config.max_batch_size,
                        max_wait_ms=self._config.max_batch_wait_ms,
                        intra_op_threads=self._config.intra_op_threads,
                    )
                    self._sessions[path] = session
        return session

    def predict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        session = self.session(model)
        try:
            arrays = check_inputs(session.signature, request["inputs"])
        except AppError as exc:  # the API checks too; this guards other ways in
            raise ProviderError("invalid_request", exc.message, retryable=False) from None
        try:
            result = session.run(arrays, timeout_s)
        except TimeoutError:
            raise ProviderError("timeout", f"prediction did not finish within {timeout_s}s", retryable=True) from None
        except Exception as exc:  # ONNX Runtime failures (bad values, resource exhaustion)
            raise ProviderError("provider_error", f"onnxruntime: {exc}", retryable=False) from exc
        rows = next(iter(arrays.values())).shape[0] if arrays else 0
        return CallResult(
            output={"outputs": {k: v.tolist() for k, v in result.outputs.items()}, "batch_size": result.batch_rows},
            usage=Usage(predictions=int(rows), compute_ms=result.compute_ms),
            provider_model=session.path.rsplit("/", 1)[-1],
        )

    def chat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        raise unsupported("onnx", "chat")

    def embed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("onnx", "embed")

    def moderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("onnx", "moderate")

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
