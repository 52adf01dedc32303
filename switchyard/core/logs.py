"""Logging for every process: structlog's events go through the standard library, so each line carries its
true level and the same format as the libraries' own lines (Celery, uvicorn, kombu).

Two formats (`SWITCHYARD_LOG_FORMAT`): `console`, lines for people; `json`, one JSON object a line for a log
pipeline, the libraries' lines included. Either way each line carries the ids bound where the work happens
(structlog's contextvars: `request_id` in the API, `task_id` and `run_id` in the workers) and, when tracing is on,
the current `trace_id`. Values — prompts, answers, keys — are never logged: only ids, counts and error types.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from switchyard.observability import tracing

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Lines per message or per call (Celery's two lines per task, the HTTP clients' line per provider call) and
# alembic's plugin list: at INFO they would bury everything else. A task's life is in its events and attempts.
_CHATTY = (
    "celery.worker.strategy",
    "celery.app.trace",
    "celery.worker.consumer.mingle",
    "httpx",
    "httpx2",
    "httpcore",
    "alembic.runtime.plugins",
)


def add_trace_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The current trace's id on a line logged inside a traced span (one check when tracing is off)."""
    if tracing.enabled() and "trace_id" not in event:
        trace_id = tracing.current_trace_id()
        if trace_id is not None:
            event["trace_id"] = trace_id
    return event


def _json_dumps(event: Any, **_: Any) -> str:
    # default=str: a value orjson cannot write (a Path, an exception) is still a line, not a lost one.
    return orjson.dumps(event, default=str).decode()


def configure_logging(level: str | int = "INFO", fmt: str = "console") -> None:
    """Send structlog and standard logging to stderr at `level` (a name such as INFO, or a number), as
    `console` lines or `json` objects."""
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("console", "json"):
        raise ValueError(f"unknown log format {fmt!r} (console or json)")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    root.setLevel(number)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(number, logging.WARNING))
    processors: list[Any]
    if fmt == "json":
        timestamp = structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")
        shared: list[Any] = [
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            add_trace_id,
            timestamp,
        ]
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                # The libraries' own lines (Celery, uvicorn): the same fields, then the same renderer.
                foreign_pre_chain=shared,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(serializer=_json_dumps),
                ],
            )
        )
        processors = [*shared, structlog.processors.StackInfoRenderer()]
        processors.append(structlog.stdlib.ProcessorFormatter.wrap_for_formatter)
    else:
        handler.setFormatter(logging.Formatter(FORMAT))
        processors = [
            structlog.contextvars.merge_contextvars,
            add_trace_id,
            structlog.processors.StackInfoRenderer(),
            # Plain tracebacks: the default (rich, when installed) prints every frame's locals — thousands of
            # lines per error, and values (prompts, keys) that do not belong in a log.
            structlog.dev.ConsoleRenderer(
                colors=False, pad_event_to=0, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    structlog.configure(
        processors=processors,
        # Filtering in the bound logger drops a disabled level before any processor runs.
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
