"""Logging for every process: structlog's events go through the standard library, so each line carries its
true level and the same format as the libraries' own lines (Celery, uvicorn, kombu)."""

from __future__ import annotations

import logging
import sys

import structlog

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


def configure_logging(level: str | int = "INFO") -> None:
    """Send structlog and standard logging to stderr at `level` (a name such as INFO, or a number)."""
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(number)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(number, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.StackInfoRenderer(),
            # Plain tracebacks: the default (rich, when installed) prints every frame's locals — thousands of
            # lines per error, and values (prompts, keys) that do not belong in a log.
            structlog.dev.ConsoleRenderer(colors=False, pad_event=0, exception_formatter=structlog.dev.plain_traceback),
        ],
        # Filtering in the bound logger drops a disabled level before any processor runs.
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
