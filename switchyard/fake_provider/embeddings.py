"""OpenAI embeddings (``/v1/embeddings`` and Azure's deployment route): deterministic unit vectors."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from switchyard.fake_provider.chat import _tokens
from switchyard.fake_provider.core import ProviderCore, _BadRequest, _positive_int

DEFAULT_EMBEDDING_DIMENSIONS = 64
MAX_EMBEDDING_DIMENSIONS = 8192


def _embedding_bytes(text: str, dims: int) -> bytes:
    """Little-endian float32 unit vector derived from sha256 of the text."""
    seed = hashlib.sha256(text.encode("utf-8")).digest()
    need = dims * 4
    buf = bytearray(seed)
    counter = 0
    while len(buf) < need:
        buf += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    ints = struct.unpack(f"<{dims}I", bytes(buf[:need]))
    vals = [x / 2147483647.5 - 1.0 for x in ints]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return struct.pack(f"<{dims}f", *(v / norm for v in vals))


class EmbeddingsEndpoints(ProviderCore):
    """``POST /v1/embeddings`` and ``POST /openai/deployments/{deployment}/embeddings``."""

    async def embeddings(self, request: Request) -> Response:
        return await self._embeddings(request, azure=False)

    async def azure_embeddings(self, request: Request) -> Response:
        return await self._embeddings(request, azure=True)

    async def _embeddings(self, request: Request, *, azure: bool) -> Response:
        call = self._start(request)
        try:
            deployment = self._azure_deployment(request) if azure else None
            body = await self._read_json(request)
            model = deployment if deployment is not None else body.get("model")
            if not isinstance(model, str) or not model:
                raise _BadRequest("you must provide a model parameter", "model")
            texts = self._input_texts(body.get("input"), allow_parts=False)
            dims = _positive_int(body, "dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
            if dims > MAX_EMBEDDING_DIMENSIONS:
                raise _BadRequest(f"'dimensions' must be at most {MAX_EMBEDDING_DIMENSIONS}", "dimensions")
            fmt = body.get("encoding_format", "float")
            if fmt not in ("float", "base64"):
                raise _BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
        except _BadRequest as exc:
            return await self._malformed(call, exc)
        failure = await self._screen(call, texts, model)
        if failure is not None:
            return failure

        data: list[dict[str, Any]] = []
        for i, text in enumerate(texts):
            packed = _embedding_bytes(text, dims)
            vector: Any = (
                base64.b64encode(packed).decode("ascii")
                if fmt == "base64"
                else list(struct.unpack(f"<{dims}f", packed))
            )
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = _tokens(sum(len(t) for t in texts))
        result = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return self._ok(call, result)
