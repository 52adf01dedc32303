"""Database errors without the data: what a failed statement's exception says, in logs and tracebacks.

`hide_parameters` keeps SQLAlchemy from printing the values bound to a statement, but Postgres itself quotes data
in its errors: the DETAIL of a unique violation names the key's values, the CONTEXT of a JSONB error shows the
document around the bad character (a tenant's prompt), and the primary message of a data exception quotes the
input it could not read (`invalid input syntax for type integer: "..."`). psycopg puts all of that in the
exception's message, which Celery, SQLAlchemy and our own handlers log. Here the message is cut to the primary
message, with a data exception's quoted values elided, and the SQLSTATE, constraint, table and column names
(schema, never data), so an operator still sees which statement failed and why. The structured fields stay on
the exception (`exc.diag`) for code that decides on them.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext

__all__ = ["install_terse_errors", "terse_message", "make_terse"]

# A value Postgres quotes in a message: "..." with "" as an escaped quote inside.
_QUOTED = re.compile(r'"(?:[^"]|"")*"')

# Marks an exception already rewritten (the same psycopg error reaches several handlers).
_TERSE = "_switchyard_terse"


def terse_message(exc: psycopg.Error) -> str | None:
    """The message of a server-reported error without the data it quotes, or None for an error the client
    library raised itself (its messages hold no row data: a NUL refused, a connection lost)."""
    diag = exc.diag
    sqlstate = diag.sqlstate or exc.sqlstate
    primary = diag.message_primary
    if not sqlstate or primary is None:
        return None
    if sqlstate.startswith("22"):
        # Class 22 (data exception): the primary message quotes the value that could not be read or stored.
        primary = _QUOTED.sub('"..."', primary)
    names = [
        f"{label} {value}"
        for label, value in (
            ("constraint", diag.constraint_name),
            ("table", diag.table_name),
            ("column", diag.column_name),
        )
        if value
    ]
    return f"{primary} (SQLSTATE {sqlstate}{''.join(', ' + n for n in names)})"


def make_terse(exc: BaseException) -> None:
    """Rewrite a psycopg error's message in place (idempotent); other exceptions are left alone."""
    if not isinstance(exc, psycopg.Error) or getattr(exc, _TERSE, False):
        return
    message = terse_message(exc)
    if message is None:
        return
    exc.args = (message,)
    setattr(exc, _TERSE, True)


def _on_error(context: ExceptionContext) -> None:
    orig = context.original_exception
    if not isinstance(orig, psycopg.Error):
        return
    make_terse(orig)
    wrapped: Any = context.sqlalchemy_exception
    if wrapped is not None and wrapped.args:
        # SQLAlchemy formatted the driver's message into its own when it wrapped it, before this hook ran.
        wrapped.args = (f"({type(orig).__module__}.{type(orig).__name__}) {orig}", *wrapped.args[1:])


def install_terse_errors(engine: Engine) -> None:
    """Every error of a statement run on `engine` carries the terse message (Postgres engines only)."""
    event.listen(engine, "handle_error", _on_error)
