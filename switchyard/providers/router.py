"""Which deployment serves an attempt, and how long to wait before the next one.

For now deployments are tried in their configured order, wrapping around; pinning narrows them to one
provider. The full strategies (weighted, least latency, breakers) replace `deployment_for_attempt`.
"""

from __future__ import annotations

import random

from switchyard.core.config import Deployment, ModelConfig


def candidates(model: ModelConfig, pinned_provider: str | None) -> list[Deployment]:
    """The deployments an attempt may use: all of them, or those of the pinned provider."""
    if pinned_provider is None:
        return list(model.deployments)
    return [d for d in model.deployments if d.provider == pinned_provider]


def deployment_for_attempt(model: ModelConfig, pinned_provider: str | None, attempt: int) -> Deployment:
    """Attempt n (1-based) goes to the n-th candidate, wrapping around: a retry fails over."""
    options = candidates(model, pinned_provider)
    return options[(attempt - 1) % len(options)]


def backoff_s(attempt: int, *, base_s: float, max_s: float, retry_after_s: float | None) -> float:
    """Exponential backoff with full jitter after failed attempt n; a provider's Retry-After is a floor."""
    jittered = random.uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))
    if retry_after_s is not None:
        return max(retry_after_s, min(jittered, 1.0))
    return jittered
