"""`onnx` kind: models run in process by ONNX Runtime, one micro-batched session per model per worker process."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from switchyard.core.config import ProviderConfig
from switchyard.core.errors import AppError, ProviderError
from switchyard.ml.batching import BatchedSession
from switchyard.ml.signature import check_inputs
from switchyard.providers.base import CallResult, OnDelta, Usage, unsupported

log = structlog.get_logger(__name__)


class OnnxAdapter:
    """Calls get the deployment's `target`: the absolute path of its .onnx file, found when the config is loaded
    (the deployment's `model`, which clients see, is the file's name)."""

    def __init__(self, config: ProviderConfig) -> None:
        self._config = config
        self._sessions: dict[str, BatchedSession] = {}
        self._lock = threading.Lock()
        # apredict's threads, which mostly wait for their batch. Not the loop's default executor: its few
        # threads (cores + 4) would cap how many calls can wait together, so how many rows a batch merges.
        self._threads = ThreadPoolExecutor(max(8, 2 * config.max_batch_size), thread_name_prefix="onnx-apredict")

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
        # `model` is the file's path; errors an attempt records (a tenant reads them) name the file, not where it is.
        name = os.path.basename(model)
        try:
            session = self.session(model)
        except Exception:  # a file gone or unreadable since the config was loaded: the operator's log says which
            log.exception("onnx_model_unloadable", model=name)
            raise ProviderError("provider_error", f"model {name} could not be loaded", retryable=False) from None
        try:
            arrays = check_inputs(session.signature, request["inputs"])
        except AppError as exc:  # the API checks too; this guards other ways in
            raise ProviderError("invalid_request", exc.message, retryable=False) from None
        try:
            result = session.run(arrays, timeout_s)
        except TimeoutError:
            raise ProviderError("timeout", f"prediction did not finish within {timeout_s}s", retryable=True) from None
        except Exception as exc:  # ONNX Runtime failures (bad values, resource exhaustion)
            message = str(exc).replace(os.path.dirname(model) + os.sep, "")
            raise ProviderError("provider_error", f"onnxruntime: {message}", retryable=False) from exc
        rows = next(iter(arrays.values())).shape[0] if arrays else 0
        return CallResult(
            output={"outputs": {k: v.tolist() for k, v in result.outputs.items()}, "batch_size": result.batch_rows},
            usage=Usage(predictions=int(rows), compute_ms=result.compute_ms),
            provider_model=name,
        )

    async def apredict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """`predict` on a thread: the session's batcher merges the rows of calls waiting together."""
        call = functools.partial(contextvars.copy_context().run, self.predict, model, request, timeout_s)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    def chat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        raise unsupported("onnx", "chat")

    def embed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("onnx", "embed")

    def moderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("onnx", "moderate")

    async def achat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        """Refused, as `chat` is."""
        raise unsupported("onnx", "chat")

    async def aembed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """Refused, as `embed` is."""
        raise unsupported("onnx", "embed")

    async def amoderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """Refused, as `moderate` is."""
        raise unsupported("onnx", "moderate")

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        for session in self._sessions.values():
            session.close()

    async def aclose(self) -> None:
        """Nothing of this adapter belongs to a loop: its sessions and threads are released by `close()`."""
