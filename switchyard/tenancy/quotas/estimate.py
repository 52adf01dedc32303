"""What a call may cost at worst and how many tokens it counts, before any provider has answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from switchyard.core.config import AppConfig, Deployment, Price
from switchyard.providers.router import candidates, estimate_tokens

# Output tokens a chat without `max_tokens` (or `max_completion_tokens`) counts against `tpm` and reserves
# against a budget. Settlement brings both back to the real usage when the call ends.
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class Estimate:
    """Tokens counted against `tpm` at admission, and the worst-case cost reserved against budgets."""

    tokens: int
    cost_usd: float


def _rows(task_input: dict[str, Any]) -> int:
    """How many rows a predict task scores (its inputs are columns of equal length, or one row)."""
    inputs = task_input.get("inputs")
    if isinstance(inputs, dict):
        for column in inputs.values():
            if isinstance(column, list):
                return max(1, len(column))
    if isinstance(inputs, list):
        return max(1, len(inputs))
    return 1


def _deployments(config: AppConfig, model: str, pinned: str | None) -> list[Deployment]:
    """Every deployment the route of a call may reach: the model's (or the pinned provider's) and, unpinned,
    those of each fallback of any kind, so the worst case covers whatever route the call takes."""
    spec = config.models.get(model)
    if spec is None:
        return []
    if pinned is not None:
        return candidates(spec, pinned)
    names = dict.fromkeys([model, *spec.fallbacks, *spec.context_window_fallbacks, *spec.content_policy_fallbacks])
    return [d for name in names if name in config.models for d in config.models[name].deployments]


def estimate(
    config: AppConfig, task_type: str, model: str, task_input: dict[str, Any], options: dict[str, Any], *, batch: bool
) -> Estimate:
    """The prompt estimate plus the output allowance in tokens, and the most expensive deployment's price for
    them (its batch price for a batch line). Compute-second prices of ML models are not reserved: their cost
    is only known afterwards, and settles then."""
    prompt = estimate_tokens(task_type, task_input)
    output = 0
    if task_type == "chat":
        output = int(task_input.get("max_tokens") or task_input.get("max_completion_tokens") or DEFAULT_MAX_TOKENS)
    rows = _rows(task_input) if task_type == "predict" else 0
    worst = 0.0
    for dep in _deployments(config, model, options.get("provider")):
        price: Price = dep.price.batch if batch and dep.price.batch is not None else dep.price
        cost = (prompt * price.input + output * price.output) / 1_000_000 + rows / 1000 * price.per_1k_predictions
        worst = max(worst, cost)
    return Estimate(tokens=prompt + output, cost_usd=worst)
