"""The fake provider's state (settings, counters) and the request steps every API endpoint shares.

Each group of endpoints (:mod:`.openai_chat`, :mod:`.embeddings`, :mod:`.moderations`, :mod:`.messages`,
:mod:`.control`) is a subclass of :class:`ProviderCore`; :class:`switchyard.fake_provider.app.FakeProvider`
combines them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchyard.fake_provider.markers import _NO_MARKERS, _Markers, _parse_markers
from switchyard.fake_provider.responses import _error_type, _json_response


class _BadRequest(Exception):
    """A request the fake cannot answer as asked: 400 unless ``status`` says otherwise (Vertex's unknown method)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


def _positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _BadRequest(f"'{key}' must be a positive integer", key)
    return value


@dataclass(slots=True)
class _Call:
    """One API request on its way through the steps that every API endpoint shares.

    Numbered when it arrives (the fail rate counts requests; ids derive from ``rid``). ``markers`` and
    ``headers`` are filled in by :meth:`ProviderCore._screen` once the request has been parsed.
    """

    path: str
    anthropic: bool  # Anthropic-shaped errors and request-id header (/v1/messages, Bedrock, Vertex), else OpenAI
    number: int
    rid: int
    markers: _Markers = field(default_factory=_Markers)
    headers: dict[str, str] = field(default_factory=dict)


class ProviderCore:
    """State of one fake provider instance and the steps shared by all its API endpoints."""

    def __init__(
        self,
        latency_ms: int = 0,
        fail_rate: float = 0.0,
        fail_status: int = 500,
        context_windows: Mapping[str, int] | None = None,
    ) -> None:
        self.latency_ms = 0
        self.fail_rate = 0.0
        self.fail_status = 500
        self.context_windows: dict[str, int] = {}
        self.configure(
            {
                "latency_ms": latency_ms,
                "fail_rate": fail_rate,
                "fail_status": fail_status,
                "context_windows": dict(context_windows or {}),
            }
        )
        self.api_requests = 0
        self.stats: dict[str, dict[str, int]] = {}
        # fail-first counters, keyed by the "@model" of the marker (None when unqualified) and the text
        self.fail_seen: dict[tuple[str | None, str], int] = {}
        # requests that reached the provider, by their [[tag:N]] (only tagged ones: drills count side effects)
        self.tags: dict[str, int] = {}
        self._ids = 0

    # -- settings / bookkeeping ---------------------------------------------------------------------------

    def configure(self, values: Mapping[str, Any]) -> None:
        """Validates then applies any subset of latency_ms, fail_rate, fail_status, context_windows.

        Raises ValueError, and changes nothing, if any value is bad.
        """
        latency = values.get("latency_ms", self.latency_ms)
        rate = values.get("fail_rate", self.fail_rate)
        status = values.get("fail_status", self.fail_status)
        windows = values.get("context_windows", self.context_windows)
        if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
            raise ValueError("latency_ms must be a non-negative number")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ValueError("fail_rate must be a number between 0 and 1")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError("fail_status must be an integer between 400 and 599")
        if not isinstance(windows, Mapping) or not all(
            isinstance(model, str) and model and not isinstance(size, bool) and isinstance(size, int) and size > 0
            for model, size in windows.items()
        ):
            raise ValueError("context_windows must map model names to positive integers (tokens)")
        self.latency_ms = int(latency)
        self.fail_rate = float(rate)
        self.fail_status = status
        self.context_windows = dict(windows)

    def settings(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "fail_rate": self.fail_rate,
            "fail_status": self.fail_status,
            "context_windows": dict(self.context_windows),
        }

    def reset(self) -> None:
        """Clears the counters; the settings (incl. context windows) stay, like latency and fail rate do."""
        self.api_requests = 0
        self.stats.clear()
        self.fail_seen.clear()
        self.tags.clear()

    def _count(self, path: str, status: int) -> None:
        by_status = self.stats.get(path)
        if by_status is None:
            by_status = self.stats[path] = {}
        key = str(status)
        by_status[key] = by_status.get(key, 0) + 1

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _injected_failure(self, n: int, markers: _Markers, text: str) -> int | None:
        """Status to fail with for API request number n, or None."""
        if markers.fail_status is not None:
            if markers.fail_times is None:
                return markers.fail_status
            # A qualified marker counts for its model alone, so that "[[fail:503:1@a]] [[fail:503:1@b]]" fails
            # the first request to each of a and b; an unqualified one counts every model's requests.
            key = (markers.fail_model, text)
            seen = self.fail_seen.get(key, 0) + 1
            self.fail_seen[key] = seen
            if seen <= markers.fail_times:
                return markers.fail_status
        rate = self.fail_rate
        if rate > 0.0 and math.floor(n * rate) > math.floor((n - 1) * rate):
            return self.fail_status
        return None

    async def _delay(self, markers: _Markers) -> None:
        ms = self.latency_ms + markers.sleep_ms
        if ms > 0:
            await asyncio.sleep(ms / 1000.0)

    @staticmethod
    async def _read_json(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _BadRequest("request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise _BadRequest("request body must be a JSON object")
        return body

    @staticmethod
    def _azure_deployment(request: Request) -> str | None:
        """The deployment an Azure route names (None on /openai/moderations), once ``api-version`` is checked.

        Azure rejects a call without an API version before looking at anything else, so this comes first.
        """
        if not request.query_params.get("api-version"):
            raise _BadRequest("Missing required query parameter 'api-version'", "api-version")
        deployment = request.path_params.get("deployment")
        return deployment if isinstance(deployment, str) else None

    @staticmethod
    def _platform_body(body: Mapping[str, Any]) -> None:
        """Bedrock and Vertex take the Messages body with the API version in it instead of in a header."""
        version = body.get("anthropic_version")
        if not isinstance(version, str) or not version:
            raise _BadRequest("anthropic_version: Field required", "anthropic_version")

    # -- steps shared by every API endpoint -----------------------------------------------------------------

    def _start(self, request: Request, *, anthropic: bool = False) -> _Call:
        """Counts an API request and gives it its number and id, before anything can go wrong with it.

        The request is accounted under its URL-decoded path, so each deployment / model id of the platform
        routes has its own line in the stats.
        """
        self.api_requests += 1
        path = request.scope["path"]
        return _Call(path=path, anthropic=anthropic, number=self.api_requests, rid=self._next_id())

    def _error(
        self,
        call: _Call,
        status: int,
        message: str,
        headers: Mapping[str, str],
        param: str | None = None,
        code: str | None = None,
    ) -> Response:
        """Error response in the shape of the request's API (``param`` and ``code`` exist only in OpenAI's)."""
        self._count(call.path, status)
        error_type = _error_type(status, anthropic=call.anthropic)
        body: dict[str, Any]
        if call.anthropic:
            body = {"type": "error", "error": {"type": error_type, "message": message}}
        else:
            body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        return _json_response(body, status, headers)

    async def _malformed(self, call: _Call, exc: _BadRequest) -> Response:
        """400 for a request that could not be parsed: after the global latency, never an injected failure."""
        await self._delay(_NO_MARKERS)
        request_id = f"req_{call.rid:024x}"
        headers = {"request-id": request_id} if call.anthropic else {"x-request-id": request_id}
        return self._error(call, exc.status, exc.message, headers, exc.param)

    async def _screen(self, call: _Call, texts: list[str], model: str) -> Response | None:
        """Applies the markers in a parsed request's text, then any injected failure and the latency.

        Returns the injected failure's error response, or None when the request is to be answered. Either
        way ``call.markers`` and ``call.headers`` are set afterwards.
        """
        search = "\n".join(texts)
        call.markers = _parse_markers(search, model)
        if call.markers.tag is not None:
            self.tags[call.markers.tag] = self.tags.get(call.markers.tag, 0) + 1
        request_id = f"req_{call.rid:024x}"
        call.headers = {"x-request-id": request_id}
        if call.markers.retry_after is not None:
            call.headers["retry-after"] = call.markers.retry_after
        if call.anthropic:
            call.headers["request-id"] = request_id
        failure = self._injected_failure(call.number, call.markers, search)
        await self._delay(call.markers)
        if failure is None:
            return None
        return self._error(call, failure, f"injected failure (HTTP {failure})", call.headers)

    def _ok(self, call: _Call, result: Any) -> Response:
        """A JSON answer, counted in the stats like every error is."""
        self._count(call.path, 200)
        return _json_response(result, 200, call.headers)

    @staticmethod
    def _input_texts(value: Any, *, allow_parts: bool) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value:
            texts: list[str] = []
            for item in value:
                if isinstance(item, str):
                    texts.append(item)
                elif allow_parts and isinstance(item, dict):
                    text = item.get("text") if item.get("type") == "text" else ""
                    texts.append(text if isinstance(text, str) else "")
                else:
                    raise _BadRequest("'input' must be a string or an array of strings", "input")
            return texts
        raise _BadRequest("'input' must be a string or a non-empty array of strings", "input")
