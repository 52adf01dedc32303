"""Cost of a call from its usage and the deployment's prices (USD per million tokens)."""

from __future__ import annotations

from switchyard.core.config import Price
from switchyard.providers.base import Usage


def cost_usd(usage: Usage, price: Price) -> float:
    """Cached reads and cache writes are priced on their own (falling back to the input price when unset);
    only the remaining prompt tokens pay the full input price."""
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    plain_input = max(0, usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens)
    total = (
        plain_input * price.input
        + usage.cached_input_tokens * cached_price
        + usage.cache_write_tokens * write_price
        + usage.output_tokens * price.output
    )
    ml = usage.predictions / 1000 * price.per_1k_predictions + usage.compute_ms / 1000 * price.per_compute_second
    return total / 1_000_000 + ml
