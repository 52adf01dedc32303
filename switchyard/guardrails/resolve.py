"""Which guardrails a call runs under: the config file's top level, then the model's, then the request's."""

from __future__ import annotations

from typing import Any

from switchyard.core.config import AppConfig
from switchyard.core.guardrail_spec import Guardrails


def effective(config: AppConfig, model: str, requested: Guardrails | None = None) -> Guardrails:
    """The guardrails of a call to `model`. Each kind (pii, moderation) is taken from the most specific place
    that sets it: the request, else the model, else the top level."""
    layers = [config.guardrails, config.models[model].guardrails if model in config.models else None, requested]
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is not None:
            merged.update({kind: value for kind, value in layer if value is not None})
    return Guardrails(**merged)
