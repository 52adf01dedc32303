"""Dynamic micro-batching over one ONNX Runtime session, in the manner of Triton's dynamic batcher.

Worker threads submit their rows and wait; one batching thread per model takes the first waiting request,
gathers more until `max_batch_size` rows or `max_wait_ms` have passed, runs the session once on the
concatenated inputs, and hands each caller its slice of the outputs. ONNX Runtime releases the GIL while it
runs, so the batching thread does not hold up the others.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from switchyard.ml.signature import Signature, read_onnx_signature


@dataclass(frozen=True)
class BatchResult:
    outputs: dict[str, np.ndarray]
    batch_rows: int  # rows in the session run that served this request (the merged batch size)
    compute_ms: float  # this request's share of that run, by rows


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    future: Future[BatchResult] = field(default_factory=Future)


def default_intra_op_threads() -> int:
    """The cores divided among the worker's processes (`SWITCHYARD_ML_PROCESSES`, set by the CLI for a
    prefork ML worker), so that processes do not oversubscribe the machine."""
    processes = max(1, int(os.environ.get("SWITCHYARD_ML_PROCESSES", "1")))
    return max(1, (os.cpu_count() or 1) // processes)


class BatchedSession:
    """One model's session and, when batching is on, its batching thread."""

    def __init__(self, path: str, *, max_batch_size: int, max_wait_ms: float, intra_op_threads: int | None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or default_intra_op_threads()
        options.inter_op_num_threads = 1
        # Idle intra-op threads otherwise spin for work after each run: with many small runs on a busy worker
        # that spinning costs more CPU than the runs themselves.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.signature: Signature = read_onnx_signature(path)
        self._session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self.signature.outputs]
        self._max_rows = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if max_batch_size > 1:
            self._thread = threading.Thread(target=self._loop, name=f"batcher:{os.path.basename(path)}", daemon=True)
            self._thread.start()

    def run(self, inputs: dict[str, np.ndarray], timeout_s: float) -> BatchResult:
        rows = _rows(inputs)
        if self._thread is None or rows >= self._max_rows:
            return self._run_batch([_Pending(inputs, rows)])[0]
        pending = _Pending(inputs, rows)
        self._queue.put(pending)
        return pending.future.result(timeout=timeout_s)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            rows = first.rows
            deadline = time.monotonic() + self._max_wait_s
            while rows < self._max_rows:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                if rows + item.rows > self._max_rows or not _compatible(first, item):
                    self._queue.put(item)  # it goes first in a later batch
                    break
                batch.append(item)
                rows += item.rows
            try:
                results = self._run_batch(batch)
            except Exception as exc:  # the callers get the error; the batcher lives on
                for item in batch:
                    item.future.set_exception(exc)
                continue
            for item, result in zip(batch, results, strict=True):
                item.future.set_result(result)

    def _run_batch(self, batch: list[_Pending]) -> list[BatchResult]:
        names = list(batch[0].inputs)
        merged = {
            n: batch[0].inputs[n] if len(batch) == 1 else np.concatenate([b.inputs[n] for b in batch]) for n in names
        }
        total = sum(b.rows for b in batch)
        t0 = time.perf_counter()
        values: list[Any] = self._session.run(self._output_names, merged)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        results = []
        start = 0
        for item in batch:
            end = start + item.rows
            outputs = {name: np.asarray(v)[start:end] for name, v in zip(self._output_names, values, strict=True)}
            results.append(BatchResult(outputs, total, elapsed_ms * item.rows / total))
            start = end
        return results


def _rows(inputs: dict[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


def _compatible(a: _Pending, b: _Pending) -> bool:
    """Requests merge when every input matches in dtype and in all but the batch dimension."""
    return a.inputs.keys() == b.inputs.keys() and all(
        a.inputs[n].dtype == b.inputs[n].dtype and a.inputs[n].shape[1:] == b.inputs[n].shape[1:] for n in a.inputs
    )
