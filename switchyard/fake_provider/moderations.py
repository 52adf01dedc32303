"""OpenAI moderations (``/v1/moderations`` and Azure's routes), scored by ``[[flag]]`` markers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from switchyard.fake_provider.core import ProviderCore, _BadRequest
from switchyard.fake_provider.markers import _parse_markers

DEFAULT_MODERATION_MODEL = "omni-moderation-latest"

MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_FLAGGED_CATEGORY = "harassment"


class ModerationsEndpoints(ProviderCore):
    """``POST /v1/moderations`` and Azure's ``/openai/moderations`` and ``.../deployments/{deployment}/moderations``."""

    async def moderations(self, request: Request) -> Response:
        return await self._moderations(request, azure=False)

    async def azure_moderations(self, request: Request) -> Response:
        return await self._moderations(request, azure=True)

    async def _moderations(self, request: Request, *, azure: bool) -> Response:
        call = self._start(request)
        try:
            deployment = self._azure_deployment(request) if azure else None
            body = await self._read_json(request)
            texts = self._input_texts(body.get("input"), allow_parts=True)
            model = deployment or body.get("model") or DEFAULT_MODERATION_MODEL
            if not isinstance(model, str):
                raise _BadRequest("'model' must be a string", "model")
        except _BadRequest as exc:
            return await self._malformed(call, exc)
        failure = await self._screen(call, texts, model)
        if failure is not None:
            return failure

        results = []
        for text in texts:
            # each input is scored on its own, by a [[flag]] or [[flag:N]] that applies to this model
            markers = _parse_markers(text, model)
            score = 0.99 if markers.flag else markers.flag_score
            flagged = score is not None and score >= 0.5
            categories = {c: flagged and c == _FLAGGED_CATEGORY for c in MODERATION_CATEGORIES}
            scores = {c: 0.001 for c in MODERATION_CATEGORIES}
            if score is not None:
                scores[_FLAGGED_CATEGORY] = score
            results.append(
                {
                    "flagged": flagged,
                    "categories": categories,
                    "category_scores": scores,
                    "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
                }
            )
        return self._ok(call, {"id": f"modr-{call.rid:024x}", "model": model, "results": results})
