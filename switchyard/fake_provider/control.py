"""The endpoints that answer about the fake itself: health, the model list, settings and stats."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from switchyard.fake_provider.core import ProviderCore, _BadRequest
from switchyard.fake_provider.moderations import DEFAULT_MODERATION_MODEL
from switchyard.fake_provider.responses import _json_response


class ControlEndpoints(ProviderCore):
    """``GET /healthz``, ``GET /v1/models`` and the ``/control`` routes."""

    async def models(self, request: Request) -> Response:
        self._count("/v1/models", 200)
        names = ("fake-chat", "fake-embedding", DEFAULT_MODERATION_MODEL)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "switchyard-fake"} for m in names]
        return _json_response({"object": "list", "data": data})

    async def healthz(self, request: Request) -> Response:
        return _json_response({"ok": True})

    async def get_control(self, request: Request) -> Response:
        return _json_response(self.settings())

    async def post_control(self, request: Request) -> Response:
        try:
            body = await self._read_json(request)
            unknown = set(body) - {"latency_ms", "fail_rate", "fail_status", "context_windows"}
            if unknown:
                raise _BadRequest(f"unknown fields: {sorted(unknown)}")
            self.configure(body)
        except _BadRequest as exc:
            return _json_response({"error": exc.message}, 400)
        except ValueError as exc:
            return _json_response({"error": str(exc)}, 400)
        return _json_response(self.settings())

    async def get_stats(self, request: Request) -> Response:
        total = sum(sum(by_status.values()) for by_status in self.stats.values())
        return _json_response({"requests": self.stats, "total": total})

    async def get_tags(self, request: Request) -> Response:
        """How many requests carrying each ``[[tag:N]]`` reached the provider (drills count side effects)."""
        return _json_response({"tags": self.tags, "total": sum(self.tags.values())})

    async def post_reset(self, request: Request) -> Response:
        self.reset()
        return _json_response({"ok": True})
