"""The PII guardrail around a call: which texts of a task's input and result it scrubs, what it records.

Requests are scrubbed where tasks are made (the API, the batch engine, the workflow engine), before the row is
written; answers in the worker, before the result and its streamed chunks are stored or published. Texts: the
`content` of chat messages (a string, or the `text` parts of a list) of every role, tool calls' arguments, the
`input` of embed and moderate tasks, a chat answer's content and tool calls. Predict inputs are not text.

What is recorded on the task (`tasks.guardrails`, shown as the task's `guardrails`) is, under `"pii"`, the
mode and, per direction, the values replaced by type: never a value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from switchyard.core.config import AppConfig
from switchyard.core.errors import InvalidRequest
from switchyard.core.guardrail_spec import Guardrails, PiiGuardrail
from switchyard.guardrails.pii.keys import hash_key
from switchyard.guardrails.pii.scrub import Scrubber, StreamScrubber
from switchyard.guardrails.resolve import effective

Texts = Callable[[str], str]


def map_input(task_type: str, task_input: dict[str, Any], fn: Texts) -> dict[str, Any]:
    """`task_input` with `fn` applied to each of its texts (a copy; the input is left as it is)."""
    if task_type == "chat":
        return {**task_input, "messages": [_message(m, fn) for m in task_input.get("messages") or []]}
    if task_type in ("embed", "moderate"):
        value = task_input.get("input")
        if isinstance(value, str):
            return {**task_input, "input": fn(value)}
        if isinstance(value, list):
            return {**task_input, "input": [fn(v) if isinstance(v, str) else v for v in value]}
    return task_input


def map_result(task_type: str, result: dict[str, Any], fn: Texts) -> dict[str, Any]:
    """A chat result with `fn` applied to its content and tool calls' arguments (other results hold no text)."""
    if task_type != "chat":
        return result
    out = dict(result)
    if isinstance(out.get("content"), str):
        out["content"] = fn(out["content"])
    if out.get("tool_calls"):
        out["tool_calls"] = [_tool_call(c, fn) for c in out["tool_calls"]]
    return out


def _message(message: dict[str, Any], fn: Texts) -> dict[str, Any]:
    out = dict(message)
    content = out.get("content")
    if isinstance(content, str):
        out["content"] = fn(content)
    elif isinstance(content, list):
        out["content"] = [
            {**p, "text": fn(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
            for p in content
        ]
    if out.get("tool_calls"):
        out["tool_calls"] = [_tool_call(c, fn) for c in out["tool_calls"]]
    return out


def _tool_call(call: Any, fn: Texts) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    return {**call, "function": {**function, "arguments": fn(function["arguments"])}}


# --- requests ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScrubbedRequest:
    """A task's input after the request's PII guardrail: what to store, what to record, and (reversible) the
    vault that restores the answer, which only the caller's process keeps."""

    input: dict[str, Any]
    record: dict[str, Any] | None = None
    vault: dict[str, str] | None = None


def scrub_request(
    config: AppConfig,
    task_type: str,
    model: str,
    task_input: dict[str, Any],
    requested: Guardrails | None,
    *,
    restorable: bool,
    param: str = "options.guardrails",
) -> ScrubbedRequest:
    """Apply the PII guardrail of a call to `model` (the config's, or `requested`) to its input.

    `restorable`: the caller waits on the call in this process, so a reversible guardrail can restore the
    answer. Elsewhere (a task polled later, a batch line, a workflow step) nothing could restore it without
    storing the values: reversible asked for by the request is refused (naming `param`), reversible from the
    config file falls back to `mask`, and the record says so."""
    if requested is None and config.guardrails is None and not _model_has(config, model):
        return ScrubbedRequest(task_input)  # the common case, at no cost
    guardrail = effective(config, model, requested).pii
    if guardrail is None or "request" not in guardrail.on or task_type == "predict":
        return ScrubbedRequest(task_input)
    mode = guardrail.mode
    fallback = False
    if mode == "reversible" and not restorable:
        if requested is not None and requested.pii is not None and requested.pii.mode == "reversible":
            raise InvalidRequest(
                "reversible PII mode needs a caller that waits for the answer (the OpenAI-compatible endpoints): "
                "a task that is polled, a batch line or a workflow step cannot have its values restored without "
                "storing them; use mask, hash or remove",
                param=f"{param}.pii.mode",
            )
        mode, fallback = "mask", True
    scrubber = Scrubber.of(guardrail, hash_key() if mode == "hash" else b"", mode=mode)
    scrubbed = map_input(task_type, task_input, scrubber.scrub)
    record: dict[str, Any] = {"mode": mode, "request": scrubber.counts()}
    if fallback:
        record["fallback_from"] = "reversible"
    return ScrubbedRequest(scrubbed, {"pii": record}, scrubber.vault if mode == "reversible" else None)


def _model_has(config: AppConfig, model: str) -> bool:
    spec = config.models.get(model)
    return spec is not None and spec.guardrails is not None


# --- answers ----------------------------------------------------------------------------------------------------


def response_guardrail(config: AppConfig, model: str, options: dict[str, Any]) -> PiiGuardrail | None:
    """The PII guardrail a task's answer goes through in the worker (None: the answer is left alone).
    Reversible never scrubs an answer: its caller's process restores it."""
    requested = options.get("guardrails")
    if requested is None and config.guardrails is None and not _model_has(config, model):
        return None  # the common case, without parsing anything
    guardrail = effective(config, model, Guardrails.model_validate(requested) if requested else None).pii
    if guardrail is None or "response" not in guardrail.on or guardrail.mode == "reversible":
        return None
    return guardrail


def response_scrubber(guardrail: PiiGuardrail) -> Scrubber:
    """The scrubber of one answer."""
    return Scrubber.of(guardrail, hash_key() if guardrail.mode == "hash" else b"")


def with_response(record: dict[str, Any] | None, scrubber: Scrubber) -> dict[str, Any]:
    """A task's guardrails record with what the answer's scrubbing found added under `pii.response` (what
    other guardrails recorded is kept)."""
    merged = dict(record or {})
    pii = dict(merged.get("pii") or {})
    pii.setdefault("mode", scrubber.mode)
    pii["response"] = scrubber.counts()
    merged["pii"] = pii
    return merged


def merge_record(record: dict[str, Any] | None, found: dict[str, Any] | None) -> dict[str, Any] | None:
    """`found` (a guardrail's record) merged into a task's record, kind by kind."""
    if not found:
        return record
    return {**(record or {}), **found}


class AnswerScrub:
    """One answer through a PII guardrail (mask, hash or remove on `response`), streamed or not: the chunks as
    they are published, then the result as it is stored, with one numbering of placeholders for both."""

    def __init__(self, guardrail: PiiGuardrail, streamed: bool) -> None:
        self.scrubber = response_scrubber(guardrail)
        self._stream = StreamScrubber(self.scrubber) if streamed else None
        self._raw: list[str] = []
        self._sent: list[str] = []

    def chunk(self, text: str) -> str:
        """What of a streamed answer can be published now ('' while a value may be cut in two)."""
        assert self._stream is not None
        self._raw.append(text)
        out = self._stream.feed(text)
        if out:
            self._sent.append(out)
        return out

    def rest(self) -> str:
        """The end of a streamed answer, held back until now."""
        if self._stream is None:
            return ""
        out = self._stream.flush()
        if out:
            self._sent.append(out)
        return out

    def result(self, task_type: str, output: dict[str, Any]) -> dict[str, Any]:
        """The answer's result, scrubbed. A streamed chat answer's content is the text its chunks carried
        (already scrubbed, and counted, once)."""
        streamed = "".join(self._raw)
        if self._stream is not None and task_type == "chat" and output.get("content") == streamed and streamed:
            rest = {k: v for k, v in output.items() if k != "content"}
            return {**map_result(task_type, rest, self.scrubber.scrub), "content": "".join(self._sent)}
        return map_result(task_type, output, self.scrubber.scrub)

    def record(self, existing: dict[str, Any] | None) -> dict[str, Any]:
        """The task's guardrails record with this answer's findings."""
        return with_response(existing, self.scrubber)
