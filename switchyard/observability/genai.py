"""Provider-call spans with the OpenTelemetry GenAI semantic conventions (`gen_ai.*` attributes)."""

from __future__ import annotations

from collections.abc import Awaitable

from switchyard.core.config import AppConfig, Deployment
from switchyard.core.errors import ProviderError
from switchyard.observability import tracing
from switchyard.providers.base import CallResult

# Our task types as the conventions' `gen_ai.operation.name` (their well-known values where there is one).
OPERATIONS = {"chat": "chat", "embed": "embeddings", "moderate": "moderation", "predict": "predict"}

# `gen_ai.system` of a provider kind, and of the clouds that host a kind's models.
_SYSTEMS = {"azure": "az.ai.openai", "bedrock": "aws.bedrock", "vertex": "gcp.vertex_ai"}


def system_of(config: AppConfig, deployment: Deployment) -> str:
    """The conventions' `gen_ai.system` for the provider account a deployment runs on."""
    provider = config.providers.get(deployment.provider)
    if provider is None:
        return deployment.provider
    return _SYSTEMS.get(provider.platform or "", str(provider.kind))


async def traced_call(
    call: Awaitable[CallResult],
    *,
    config: AppConfig,
    deployment: Deployment,
    task_type: str,
    task_id: str,
    attempt: int,
) -> CallResult:
    """Await a provider call in a client span `{operation} {model}` carrying the request's model, and once it
    answers the model that answered and the tokens used; an error's type when it fails. Nothing of the
    request or the answer is recorded. Without tracing, only the await."""
    if not tracing.enabled():
        return await call
    from opentelemetry.trace import Status, StatusCode

    operation = OPERATIONS.get(task_type, task_type)
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.system": system_of(config, deployment),
        "gen_ai.request.model": deployment.model,
        "switchyard.task_id": task_id,
        "switchyard.deployment": deployment.name,
        "switchyard.attempt": attempt,
    }
    with tracing.span(f"{operation} {deployment.model}", kind="client", attributes=attributes) as span:
        assert span is not None
        try:
            result = await call
        except ProviderError as exc:
            span.set_attribute("error.type", exc.error_type)
            if exc.status_code is not None:
                span.set_attribute("http.response.status_code", exc.status_code)
            span.set_status(Status(StatusCode.ERROR, exc.error_type))
            raise
        span.set_attribute("gen_ai.response.model", result.provider_model or deployment.model)
        span.set_attribute("gen_ai.usage.input_tokens", result.usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", result.usage.output_tokens)
        return result
