"""What every provider adapter offers, in our shapes rather than any SDK's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Usage:
    """Token counts of one call. `input_tokens` counts the whole prompt, cached and cache-written parts included."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }


@dataclass(frozen=True)
class CallResult:
    """The outcome of a successful call: the result object of API.md for the task type, and its usage."""

    output: dict[str, Any]
    usage: Usage = field(default_factory=Usage)
    provider_model: str = ""


class ProviderAdapter(Protocol):
    """One provider account. Methods block (worker threads run them) and raise ProviderError on failure."""

    def chat(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult: ...

    def embed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult: ...

    def moderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult: ...

    def close(self) -> None: ...
