"""Per-deployment `rpm` and `tpm` limits, counted in Redis across every worker (the `limits` library): a
deployment at its limit is skipped. Requests are counted in a moving window (exact); tokens in a sliding
window counter, which takes a call's whole token count at once."""

from __future__ import annotations

import time

import structlog
from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from switchyard.core.config import Deployment

log = structlog.get_logger(__name__)

_NAMESPACE = "switchyard"


class RateLimits:
    def __init__(self, redis_url: str | None) -> None:
        # Without Redis (embedded mode) the counts are this process's own.
        storage = storage_from_string(redis_url or "memory://")
        self._requests = MovingWindowRateLimiter(storage)
        self._tokens = SlidingWindowCounterRateLimiter(storage)

    def has_room(self, dep: Deployment, prompt_tokens: int) -> bool:
        """Whether a call of about `prompt_tokens` fits under the deployment's limits now."""
        try:
            if dep.rpm is not None and not self._requests.test(RateLimitItemPerMinute(dep.rpm), _NAMESPACE, dep.name):
                return False
            if dep.tpm is not None:
                item = RateLimitItemPerMinute(dep.tpm)
                return self._tokens.test(item, _NAMESPACE, dep.name, cost=max(1, min(prompt_tokens, dep.tpm)))
        except Exception:
            # A limit that cannot be read does not stop traffic (Redis away): the provider's own 429s still do.
            log.warning("rate_limit_unavailable", deployment=dep.name, exc_info=True)
        return True

    def take(self, dep: Deployment) -> bool:
        """Count one request; False when the limit was reached meanwhile (by another worker)."""
        if dep.rpm is None:
            return True
        try:
            return self._requests.hit(RateLimitItemPerMinute(dep.rpm), _NAMESPACE, dep.name)
        except Exception:
            log.warning("rate_limit_unavailable", deployment=dep.name, exc_info=True)
            return True

    def spend_tokens(self, dep: Deployment, tokens: int) -> None:
        """Count the tokens a call used (after it)."""
        if dep.tpm is None or tokens <= 0:
            return
        try:
            self._tokens.hit(RateLimitItemPerMinute(dep.tpm), _NAMESPACE, dep.name, cost=tokens)
        except Exception:
            log.warning("rate_limit_unavailable", deployment=dep.name, exc_info=True)

    def seconds_until_room(self, dep: Deployment) -> float:
        """How long until the deployment's windows have room again (an estimate, at least a little)."""
        waits = [0.5]
        try:
            for limiter, limit in ((self._requests, dep.rpm), (self._tokens, dep.tpm)):
                if limit is not None:
                    stats = limiter.get_window_stats(RateLimitItemPerMinute(limit), _NAMESPACE, dep.name)
                    if stats.remaining <= 0:
                        waits.append(stats.reset_time - time.time())
        except Exception:
            return 1.0
        return max(waits)

    def usage(self, dep: Deployment) -> dict[str, int | None]:
        """Requests and tokens left in the current minute (None: no limit)."""
        out: dict[str, int | None] = {"rpm_remaining": None, "tpm_remaining": None}
        try:
            if dep.rpm is not None:
                item = RateLimitItemPerMinute(dep.rpm)
                out["rpm_remaining"] = self._requests.get_window_stats(item, _NAMESPACE, dep.name).remaining
            if dep.tpm is not None:
                item = RateLimitItemPerMinute(dep.tpm)
                out["tpm_remaining"] = self._tokens.get_window_stats(item, _NAMESPACE, dep.name).remaining
        except Exception:
            pass
        return out
