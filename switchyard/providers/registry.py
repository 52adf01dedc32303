"""Adapters by provider `kind`, and the per-process set of adapters made from the config."""

from __future__ import annotations

from collections.abc import Callable

from switchyard.core.config import AppConfig, ProviderConfig
from switchyard.providers.anthropic_adapter import AnthropicAdapter
from switchyard.providers.base import ProviderAdapter
from switchyard.providers.model_servers import KServeAdapter, TFServingAdapter
from switchyard.providers.onnx_adapter import OnnxAdapter
from switchyard.providers.openai_adapter import OpenAIAdapter

ADAPTERS: dict[str, Callable[[ProviderConfig], ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "onnx": OnnxAdapter,
    "kserve": KServeAdapter,
    "tfserving": TFServingAdapter,
}


class ProviderSet:
    """One adapter per configured provider: its sync clients (connection pools), and an async one for each
    event loop that calls it (made there on first use).

    All are made up front, in the worker's start-up hook: made lazily, the first burst of tasks would race
    to build (and throw away) a client each."""

    def __init__(self, config: AppConfig) -> None:
        self._adapters: dict[str, ProviderAdapter] = {
            name: ADAPTERS[provider.kind](provider) for name, provider in config.providers.items()
        }

    def get(self, name: str) -> ProviderAdapter:
        return self._adapters[name]

    async def aclose(self) -> None:
        """Close the adapters' async clients of the running loop (await it on each loop that made calls)."""
        for adapter in self._adapters.values():
            await adapter.aclose()

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()
        self._adapters.clear()
