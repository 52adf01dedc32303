"""Adapters by provider `kind`, and the per-process set of adapters made from the config."""

from __future__ import annotations

from collections.abc import Callable

from switchyard.core.config import AppConfig, ProviderConfig
from switchyard.providers.anthropic_adapter import AnthropicAdapter
from switchyard.providers.base import ProviderAdapter
from switchyard.providers.openai_adapter import OpenAIAdapter

ADAPTERS: dict[str, Callable[[ProviderConfig], ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
}


class ProviderSet:
    """One adapter (one SDK client, one connection pool) per configured provider, made lazily."""

    def __init__(self, config: AppConfig) -> None:
        self._config = config
        self._adapters: dict[str, ProviderAdapter] = {}

    def get(self, name: str) -> ProviderAdapter:
        adapter = self._adapters.get(name)
        if adapter is None:
            provider = self._config.providers[name]
            adapter = self._adapters.setdefault(name, ADAPTERS[provider.kind](provider))
        return adapter

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()
        self._adapters.clear()
