"""A stack with tracing on and JSON logs, and the OTLP/HTTP receiver its processes export their spans to (the
collector is the edge of our world: the test plays it, decoding what the SDK's real exporter sends)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support import wait_until

REDIS_DB = 8


def otel_env(receiver: Receiver) -> dict[str, str]:
    """A stack's environment for tracing to `receiver` and JSON logs."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        # Spans leave within a fifth of a second, not the SDK's default five.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "SWITCHYARD_LOG_FORMAT": "json",
        # The per-request and per-execution lines are at DEBUG.
        "SWITCHYARD_LOG_LEVEL": "DEBUG",
    }


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]] = field(default_factory=list)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver:
    """POST /v1/traces with a protobuf ExportTraceServiceRequest, as the OTLP/HTTP exporter sends it."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/traces":
                    receiver._take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _take(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    span = Span(
                        service=str(resource.get("service.name")),
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                    )
                    with self._lock:
                        self.spans.append(span)

    def of_trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, what: str, pick: Any, timeout: float = 30) -> list[Span]:
        """Wait until `pick(spans)` gives a non-empty list of spans."""

        def found() -> list[Span] | None:
            with self._lock:
                spans = list(self.spans)
            return pick(spans) or None

        result: list[Span] = wait_until(found, timeout=timeout, interval=0.2, what=what)
        return result

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
