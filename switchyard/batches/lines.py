"""Validating a batch's input file, line by line, with the validators of the endpoints the lines name: an
OpenAI body is mapped to its task as the OpenAI-compatible endpoint maps it, a `/v1/tasks` body is checked as
`POST /v1/tasks` checks it. A bad line is reported by its line number (1-based, as an editor counts)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from switchyard.core.config import AppConfig
from switchyard.core.errors import AppError, InvalidRequest
from switchyard.core.validation import invalid_request
from switchyard.guardrails import pii
from switchyard.ml.signature import Signature
from switchyard.tasks import openai_mapping
from switchyard.tasks.schemas import TaskCreate
from switchyard.tasks.service import validate_input

from .schemas import ENDPOINTS

# A failed validation names at most this many lines (a file of 50,000 bad lines needs no 50,000 errors).
MAX_ERRORS = 100
# What a line's PII guardrail found, kept in the line's options until its task is made (`batch_lines` has no
# column of its own for it); the batch engine moves it to the task's `guardrails`.
FOUND_KEY = "_guardrails_found"
MAX_CUSTOM_ID_CHARS = 512


@dataclass(frozen=True)
class Line:
    """A valid line: the task it runs as."""

    custom_id: str
    type: str
    model: str
    input: dict[str, Any]
    options: dict[str, Any]
    metadata: dict[str, Any]


class LineError(Exception):
    """A line that cannot run: OpenAI's batch error (`code`, `message`, `param`, `line`)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class LineRules:
    """What every line of one batch is checked against."""

    config: AppConfig
    signatures: Mapping[str, Signature]
    endpoint: str
    options: dict[str, Any]
    max_line_bytes: int
    max_lines: int


def error(code: str, message: str, *, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    """One entry of a batch's `errors.data`."""
    return {"code": code, "message": message, "param": param, "line": line}


def parse(rules: LineRules, raw_lines: Iterable[bytes]) -> Iterator[tuple[int, Line | LineError]]:
    """Each non-blank line of the file, by line number: its task, or what is wrong with it. Stops after
    `max_lines` lines with a `too_many_lines` error on the next."""
    seen: set[str] = set()
    count = 0
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        if count == rules.max_lines:
            yield number, LineError("too_many_lines", f"a batch holds at most {rules.max_lines} requests")
            return
        count += 1
        try:
            line = _parse_line(rules, raw)
        except LineError as exc:
            yield number, exc
            continue
        if line.custom_id in seen:
            yield number, LineError("duplicate_custom_id", f"custom_id '{line.custom_id}' is used twice", "custom_id")
            continue
        seen.add(line.custom_id)
        yield number, line


def _parse_line(rules: LineRules, raw: bytes) -> Line:
    if len(raw) > rules.max_line_bytes:
        raise LineError("line_too_large", f"the line is over the limit of {rules.max_line_bytes} bytes")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise LineError("invalid_json_line", "the line is not valid JSON") from None
    if not isinstance(obj, dict):
        raise LineError("invalid_json_line", "the line must be a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("missing_custom_id", "custom_id must be a non-empty string", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise LineError("invalid_custom_id", f"custom_id is over {MAX_CUSTOM_ID_CHARS} characters", "custom_id")
    if obj.get("method") != "POST":
        raise LineError("invalid_method", "method must be POST", "method")
    url = obj.get("url")
    if url not in ENDPOINTS:
        raise LineError("invalid_url", f"url must be one of {', '.join(ENDPOINTS)}", "url")
    if url != rules.endpoint:
        raise LineError("mismatched_endpoint", f"url '{url}' is not the batch's endpoint '{rules.endpoint}'", "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("invalid_body", "body must be a JSON object", "body")
    extra = sorted(set(obj) - {"custom_id", "method", "url", "body"})
    if extra:
        raise LineError("invalid_request", f"unknown field '{extra[0]}'", extra[0])
    try:
        task = _task(rules, url, body)
        options = {**rules.options, **task.options.model_dump(exclude_none=True)}
        normalised = validate_input(rules.config, rules.signatures, task, options.get("provider"))
        # Scrubbed now, so that the stored line (and the task made of it) never holds the values.
        scrubbed = pii.scrub_request(
            rules.config, task.type, task.model, normalised, task.options.guardrails, restorable=False
        )
    except AppError as exc:
        if url != "/v1/tasks" and isinstance(exc, InvalidRequest):
            exc = openai_mapping.openai_style(exc)  # named as the OpenAI body names it: `messages`, not `input.…`
        code = exc.code or ("model_not_found" if exc.param == "model" else "invalid_request")
        raise LineError(code, exc.message, f"body.{exc.param}" if exc.param else "body") from None
    options.pop("stream", None)
    if scrubbed.record is not None:
        options[FOUND_KEY] = scrubbed.record
    return Line(custom_id, task.type, task.model, scrubbed.input, options, dict(task.metadata))


def _task(rules: LineRules, url: str, body: dict[str, Any]) -> TaskCreate:
    if url != "/v1/tasks":
        return openai_mapping.task_of_request(rules.config, url, body)
    try:
        task = TaskCreate.model_validate(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    if task.webhook is not None:
        raise LineError("invalid_request", "a line has no webhook of its own: give the batch one", "body.webhook")
    if task.options.stream:
        raise LineError("invalid_request", "a batch line cannot stream", "body.options.stream")
    return task
