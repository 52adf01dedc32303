"""OpenTelemetry traces: off unless asked for, and then one trace per request from the API through the broker to
the worker and the provider call.

The switch is read once per process (`setup_tracing`). When it is off, every helper here is one check of a module
global and returns at once: no SDK is imported, no span or context object is made. The broker's messages carry
task ids (several at once for batch lines), so Celery's per-message propagation cannot say which request a task
came from: each task stores the W3C `traceparent` of the span that created it, and the worker starts the task's
execution span as its child.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.trace import Span

    from switchyard.settings import Settings

log = structlog.get_logger(__name__)

_enabled = False
_configured = False

# The variables of the OpenTelemetry SDK that ask for an exporter (the SDK's own names).
_EXPORTER_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")

TRACER = "switchyard"


def enabled() -> bool:
    """Whether this process records traces."""
    return _enabled


def wanted(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """`SWITCHYARD_TRACING` when set; else on when an OTLP endpoint or a traces exporter other than `none` is
    named by the SDK's standard variables."""
    if settings.tracing is not None:
        return settings.tracing
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return any(environ.get(name) for name in _EXPORTER_VARIABLES)


def setup_tracing(settings: Settings, service: str) -> bool:
    """Start tracing in this process if `wanted`: a tracer provider with the SDK's OTLP/HTTP exporter (or the
    console's, `OTEL_TRACES_EXPORTER=console`), sampler and resource from the `OTEL_*` variables, and the
    instrumentations of the libraries we use. Call before engines and clients are made (the SQLAlchemy, Redis
    and aiohttp instrumentations patch their constructors). Idempotent; True when tracing is on."""
    global _enabled, _configured
    if _configured:
        return _enabled
    _configured = True
    if not wanted(settings):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning("tracing_unavailable", reason="the otel extra is not installed: pip install 'switchyard[otel]'")
        return False
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over this default (Resource.create reads them).
    default = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    # The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (parent-based, always on by default).
    provider = TracerProvider(resource=Resource.create(default))
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    # Batched, on a thread of the SDK: a request never waits on the collector (OTEL_BSP_* tune it).
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _instrument_libraries()
    _enabled = True
    log.info("tracing_on", service=service)
    return True


def _instrument_libraries() -> None:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    for instrumentor in (
        SQLAlchemyInstrumentor(),
        RedisInstrumentor(),
        HTTPXClientInstrumentor(),
        AioHttpClientInstrumentor(),
        CeleryInstrumentor(),  # type: ignore[no-untyped-call]
    ):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def instrument_app(app: FastAPI) -> None:
    """Server spans for the API's requests, continuing an incoming `traceparent` (no-op when tracing is off)."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # Probes and scrapes every few seconds would be most of the traces and none of the interest.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="/healthz,/readyz,/metrics", exclude_spans=["receive", "send"]
    )


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span (to store with a row this work creates), None when tracing
    is off or nothing is being traced."""
    if not _enabled:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) in a `traceparent`, None for none or a malformed one."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    return parts[1]


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), None when tracing is off or nothing is being traced."""
    return trace_id_of(current_traceparent())


def _context_of(traceparent: str | None) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not traceparent:
        return None
    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def _links(traceparents: Sequence[str | None]) -> list[Any]:
    from opentelemetry import trace

    links = []
    for tp in traceparents:
        ctx = trace.get_current_span(_context_of(tp)).get_span_context() if tp else None
        if ctx is not None and ctx.is_valid:
            links.append(trace.Link(ctx))
    return links


@contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    links: Sequence[str | None] = (),
    attributes: Mapping[str, Any] | None = None,
    kind: str = "internal",
) -> Iterator[Span | None]:
    """A span named `name`, made current for the block: a child of `parent` (a stored `traceparent`) when one
    is given, else of the current span; linked to each of `links` (traceparents of what caused this work).
    Yields None, and costs one check, when tracing is off. An exception leaving the block is recorded on it."""
    if not _enabled:
        yield None
        return
    from opentelemetry import trace

    context = _context_of(parent) if parent else None
    with trace.get_tracer(TRACER).start_as_current_span(
        name,
        context=context,
        kind=getattr(trace.SpanKind, kind.upper()),
        links=_links(links),
        attributes=dict(attributes or {}),
    ) as current:
        yield current


def shutdown() -> None:
    """Export what is still buffered (at a process's end)."""
    if not _enabled:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    flush = getattr(provider, "shutdown", None)
    if flush is not None:
        flush()
