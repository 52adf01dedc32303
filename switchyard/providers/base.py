"""What every provider adapter offers, in our shapes rather than any SDK's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from switchyard.core.errors import ProviderError


@dataclass(frozen=True)
class Usage:
    """Token counts of one call. `input_tokens` counts the whole prompt, cached and cache-written parts included."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    # ML models: rows predicted and this call's share of model compute time.
    predictions: int = 0
    compute_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        usage: dict[str, float] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }
        if self.predictions:
            usage["predictions"] = self.predictions
            usage["compute_ms"] = self.compute_ms
        return usage


@dataclass(frozen=True)
class CallResult:
    """The outcome of a successful call: the result object of API.md for the task type, and its usage."""

    output: dict[str, Any]
    usage: Usage = field(default_factory=Usage)
    provider_model: str = ""


def unsupported(kind: str, task_type: str) -> ProviderError:
    """What an adapter raises for a task type its provider does not serve (the config refuses such models;
    this guards a pinned or misrouted call)."""
    return ProviderError("invalid_request", f"{kind} providers do not serve {task_type} tasks", retryable=False)


# Receives each chunk of streamed text as the provider produces it.
OnDelta = Callable[[str], None]


class ProviderAdapter(Protocol):
    """One provider account. The plain methods block (worker threads run them); the `a`-prefixed ones are
    the same calls for an event loop, with the same results and the same ProviderError on failure.

    `chat` with `on_delta` streams: text chunks go to `on_delta` as they arrive, and the whole result is
    returned at the end as without it. `achat` calls `on_delta` (a plain function) on the loop's thread.

    The async methods bind resources (connection pools) to the loop that first calls them: `aclose()`,
    awaited on that loop before it ends, releases them; `close()` releases the rest."""

    def chat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult: ...

    def embed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult: ...

    def moderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult: ...

    def predict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult: ...

    def close(self) -> None: ...

    async def achat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult: ...

    async def aembed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult: ...

    async def amoderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult: ...

    async def apredict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult: ...

    async def aclose(self) -> None: ...
