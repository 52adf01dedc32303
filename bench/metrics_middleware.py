"""The metrics middleware's own cost in process: microseconds per request of `RequestMetrics` around a trivial
ASGI app (no server, no sockets), against the same app bare. Run: `python -m bench.metrics_middleware`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from switchyard.observability.http import RequestMetrics
from switchyard.observability.metrics import families

N = 200_000


class _Route:
    path_format = "/v1/chat/completions"


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    scope["route"] = _Route  # what FastAPI's router leaves in the scope
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _receive() -> Message:
    return {"type": "http.request", "body": b""}


async def _send(message: Message) -> None:
    return None


async def _per_request_us(app: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
        await app(scope, _receive, _send)
    return (time.perf_counter() - start) / n * 1e6


async def main() -> None:
    measured = families()
    assert measured is not None, "SWITCHYARD_METRICS must be on for this benchmark"
    wrapped = RequestMetrics(_app, measured)
    await _per_request_us(wrapped, 10_000)  # warm the label caches
    bare, on = [], []
    for _ in range(5):  # alternate, best of five each
        bare.append(await _per_request_us(_app, N))
        on.append(await _per_request_us(wrapped, N))
    print(
        f"metrics middleware: {min(on) - min(bare):.2f} µs per request "
        f"(bare app {min(bare):.2f} µs, with the middleware {min(on):.2f} µs; best of 5 x {N})"
    )


if __name__ == "__main__":
    asyncio.run(main())
