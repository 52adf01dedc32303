"""Fake model provider: a real HTTP server speaking the OpenAI and Anthropic APIs.

Used for development, tests, load benchmarks and failure drills. Everything it does is
deterministic: no randomness, no model, no per-request logging.

Endpoints
---------
- ``POST /v1/chat/completions`` (OpenAI, ``stream: true`` supported, incl. ``stream_options.include_usage``)
- ``POST /v1/embeddings`` (OpenAI, ``encoding_format`` ``float`` or ``base64``, ``dimensions``; default 64)
- ``POST /v1/moderations`` (OpenAI)
- ``POST /v1/messages`` (Anthropic, ``stream: true`` supported)
- ``GET /v1/models`` (OpenAI-style model list; counted in stats, never fails)
- Azure OpenAI, as ``openai.AzureOpenAI(azure_endpoint=<fake>, api_version=..., api_key=...)`` calls it (the
  SDK sends the key in an ``api-key`` header, which the fake ignores like it ignores every credential):

  - ``POST /openai/deployments/{deployment}/chat/completions?api-version=...`` (streaming too)
  - ``POST /openai/deployments/{deployment}/embeddings?api-version=...``
  - ``POST /openai/moderations?api-version=...`` (where the SDK sends moderations: not a deployment route)
    and ``POST /openai/deployments/{deployment}/moderations?api-version=...`` (for a client whose
    ``base_url`` already ends in a deployment)

  They answer exactly like the ``/v1`` routes, with the deployment name as the model (the body's
  ``model`` is ignored). A missing or empty ``api-version`` query parameter is a 400 (param
  ``api-version``), like any malformed request.
- Anthropic on Bedrock, as ``anthropic.AnthropicBedrock(base_url=<fake>, aws_access_key=..., aws_secret_key=...,
  aws_region=...)`` calls it (SigV4-signed with any credentials; the signature is not checked):

  - ``POST /model/{modelId}/invoke``: a Messages body without ``model`` (and without ``stream``), with
    ``anthropic_version``; answered with the same JSON as ``/v1/messages``.
  - ``POST /model/{modelId}/invoke-with-response-stream``: the same body; the stream events of
    ``/v1/messages`` in AWS event-stream framing (content type ``application/vnd.amazon.eventstream``):
    one binary message per event, with headers ``:event-type: chunk``, ``:content-type:
    application/json``, ``:message-type: event`` and the payload ``{"bytes": "<base64 of the event JSON>"}``.

  ``modelId`` may be URL-encoded (``anthropic.claude-3-5-haiku-20241022-v1%3A0``); it is used decoded.
- Anthropic on Vertex AI, as ``anthropic.AnthropicVertex(base_url=<fake>/v1, region=..., project_id=...,
  access_token=...)`` calls it (the bearer token is not checked, so google-auth is not needed):
  ``POST /v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict`` (JSON)
  and ``...:streamRawPredict`` (SSE, as ``/v1/messages``). The same paths without the leading ``/v1`` are
  served too. The body is a Messages body without ``model``, with ``anthropic_version``.
- Bedrock and Vertex bodies without a string ``anthropic_version`` are a 400; the model comes from the URL.
  Any other Vertex method after the ``:`` is a 404.
- ``GET /healthz`` -> ``{"ok": true}`` (not counted)
- ``GET /control`` -> current settings; ``POST /control`` with any subset of
  ``{"latency_ms": int, "fail_rate": float, "fail_status": int, "context_windows": {model: int}}`` changes
  them at run time (``context_windows`` replaces the whole map; ``{}`` clears it)
- ``GET /control/stats`` -> ``{"requests": {path: {status: count}}, "total": n}``; every route is counted under
  the (URL-decoded) path it was called with, e.g. ``/openai/deployments/gpt-a/chat/completions`` or
  ``/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke``, without the query string
- ``GET /control/tags`` -> ``{"tags": {N: count}, "total": n}``: how many requests carrying ``[[tag:N]]``
  reached the provider (parsed, before any injected failure), so a drill can count side effects per object
- ``POST /control/reset`` -> clears stats, the tag counts, the fail-first counters and the fail-rate request counter. It
  leaves the settings alone (latency, fail rate and status, context windows).

Behaviour
---------
- Chat reply is ``"echo: " + text`` where *text* is the text of the LAST ``user`` message (string content or
  the joined ``text`` blocks of a list content). Anthropic's ``system`` is never echoed. Markers stay in the
  echoed text.
- Usage: ``ceil(chars / 4)`` tokens; prompt chars = all message text incl. system prompts; reply chars =
  the reply length (tool-call replies count ``len(name) + 2``).
- ``max_tokens`` (or OpenAI ``max_completion_tokens``): if the reply has more tokens, it is cut to
  ``max_tokens * 4`` characters and the finish reason is ``length`` / stop_reason ``max_tokens``.
- Context windows (``--context-window MODEL=N``, ``create_app(context_windows=...)`` or ``POST /control``):
  a chat request (any chat route) to MODEL whose prompt tokens exceed N gets the context-length error of
  ``[[context]]`` with W = N. Embeddings and moderations ignore the windows.
- Embeddings: unit vectors (float32) derived from sha256 of each input text.
- Moderation flags any input containing ``[[flag]]`` (category ``harassment`` scores 0.99); ``[[flag:N]]``
  makes ``harassment`` score N/100 (flagged when N >= 50). Every other score is 0.001.

Markers (searched in the text of ALL messages, incl. system, or in embeddings/moderation ``input``)
---------------------------------------------------------------------------------------------------
Any marker may end with ``@<model>`` inside the brackets (``[[fail:503@gpt-a]]``, ``[[fail:503:2@gpt-a]]``,
``[[context@gpt-small]]``): it then applies only to requests for exactly that model (on Azure the deployment
name, on Bedrock and Vertex the model id from the URL). Unqualified markers apply to every model. Of several
markers of one kind, the first one that applies to the request's model wins; the others are ignored.

- ``[[fail:503]]``       answer with that status (any 400-599), always.
- ``[[fail:503:2]]``     (extension) fail with 503 only the first 2 times a request with this exact text
                         (all searched text joined) is seen; afterwards answer normally. The count is kept
                         per text for an unqualified marker (shared by all models), and per text and model
                         for a qualified one.
- ``[[sleep:250]]``      wait 250 ms more before answering (added to ``latency_ms``).
- ``[[trickle:200]]``    (extension) in a streamed chat, wait 200 ms before each event after the first.
- ``[[retry-after:2]]``  add ``Retry-After: 2`` to the response, whatever its status.
- ``[[cached:N]]``       (extension) report N cached prompt tokens: OpenAI
                         ``usage.prompt_tokens_details.cached_tokens = N`` (``prompt_tokens`` stays the full
                         count); Anthropic ``cache_read_input_tokens = N`` and ``input_tokens`` = full - N.
- ``[[cache-write:N]]``  (extension) Anthropic ``cache_creation_input_tokens = N`` (also subtracted from
                         ``input_tokens``, floored at 0); ignored on OpenAI.
- ``[[break:K]]``        (extension) in a streamed chat, abort the connection abruptly after K content
                         chunks (no finish chunk, no ``[DONE]`` / no ``message_stop``). Ignored when not
                         streaming. Works the same in Bedrock's event-stream framing.
- ``[[tag:N]]``          (extension) count the request under N in ``GET /control/tags``; changes nothing else.
- ``[[tool]]``           (extension) when the request has ``tools``, answer with a call of the first tool
                         (OpenAI ``tool_calls`` id ``call_1``, finish_reason ``tool_calls``; Anthropic
                         ``tool_use`` block id ``toolu_1``, stop_reason ``tool_use``), arguments ``{}``.
- ``[[context]]``        (extension) chat only: 400, the provider's context-length error. OpenAI: type
                         ``invalid_request_error``, param ``messages``, code ``context_length_exceeded``,
                         message "This model's maximum context length is W tokens. However, your messages
                         resulted in N tokens. Please reduce the length of the messages."; Anthropic:
                         ``invalid_request_error`` "prompt is too long: N tokens > W maximum". N = the prompt
                         tokens; W = the model's context window if one is set (even when N fits in it: the
                         marker forces the error), else N - 1.
- ``[[policy]]``         (extension) chat only: 400, a content-policy refusal. OpenAI: type
                         ``invalid_request_error``, code ``content_policy_violation``, message "Your request
                         was rejected as a result of our safety system. Your prompt may contain text that is
                         not allowed by our content policy."; Anthropic: ``invalid_request_error`` "Output
                         blocked by content filtering policy".
- ``[[flag]]``           moderation flags the input.
- ``[[flag:N]]``         (extension) moderation scores ``harassment`` N/100 (0-100), flagged when N >= 50.

Global settings (``--latency-ms``, ``--fail-rate``, ``--fail-status`` or ``POST /control``) apply to every
API request. The fail rate is deterministic: API request number n (1-based, counted over all API requests
since start or the last reset) fails with ``fail_status`` iff ``floor(n*F) > floor((n-1)*F)``. Marker
failures take precedence. Latency is applied before answering (before the response headers of a stream),
also before an injected failure. Malformed requests (bad JSON, missing ``model``/``messages``/``input``)
get a 400 after the global latency, without injected failures. A request that is to be answered is then
checked, in this order, for ``[[context]]``, an exceeded context window and ``[[policy]]``: so an injected
failure (marker or fail rate) wins over these 400s.

Error bodies are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``) except on the Anthropic
routes (``/v1/messages``, Bedrock, Vertex) where they are Anthropic-shaped
(``{"type": "error", "error": {"type", "message"}}``).

Run with ``python -m switchyard.fake_provider.app --port 8911 --latency-ms 0 --fail-rate 0 --fail-status 500``
and any number of ``--context-window MODEL=N`` (or ``switchyard fake-provider``, which calls :func:`run`).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Mapping

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from switchyard.fake_provider.chat import _split_chunks as _split_chunks
from switchyard.fake_provider.control import ControlEndpoints
from switchyard.fake_provider.embeddings import EmbeddingsEndpoints
from switchyard.fake_provider.messages import MessagesEndpoints
from switchyard.fake_provider.moderations import ModerationsEndpoints
from switchyard.fake_provider.openai_chat import OpenAIChatEndpoints
from switchyard.fake_provider.responses import _install_log_filter

__all__ = ["create_app", "run"]


class FakeProvider(OpenAIChatEndpoints, EmbeddingsEndpoints, ModerationsEndpoints, MessagesEndpoints, ControlEndpoints):
    """State and request handlers of one fake provider instance."""


# ---------------------------------------------------------------------------------------------------------
# Public API


def create_app(
    latency_ms: int = 0,
    fail_rate: float = 0.0,
    fail_status: int = 500,
    context_windows: Mapping[str, int] | None = None,
) -> Starlette:
    """Builds the fake provider ASGI app. Its state is reachable as ``app.state.fake`` (a FakeProvider)."""
    fake = FakeProvider(
        latency_ms=latency_ms, fail_rate=fail_rate, fail_status=fail_status, context_windows=context_windows
    )
    _install_log_filter()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _install_log_filter()  # again, after the server configured logging
        yield

    azure = "/openai/deployments/{deployment}"
    vertex = "/projects/{project}/locations/{region}/publishers/anthropic/models/{target}"
    routes = [
        Route("/v1/chat/completions", fake.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", fake.embeddings, methods=["POST"]),
        Route("/v1/moderations", fake.moderations, methods=["POST"]),
        Route("/v1/messages", fake.messages, methods=["POST"]),
        Route("/v1/models", fake.models, methods=["GET"]),
        Route(f"{azure}/chat/completions", fake.azure_chat_completions, methods=["POST"]),
        Route(f"{azure}/embeddings", fake.azure_embeddings, methods=["POST"]),
        Route(f"{azure}/moderations", fake.azure_moderations, methods=["POST"]),
        Route("/openai/moderations", fake.azure_moderations, methods=["POST"]),
        # "path" so that a model id (an inference profile ARN) holding an encoded "/" still matches
        Route("/model/{model_id:path}/invoke", fake.bedrock_invoke, methods=["POST"]),
        Route("/model/{model_id:path}/invoke-with-response-stream", fake.bedrock_invoke_stream, methods=["POST"]),
        Route(f"/v1{vertex}", fake.vertex_predict, methods=["POST"]),
        Route(vertex, fake.vertex_predict, methods=["POST"]),
        Route("/healthz", fake.healthz, methods=["GET"]),
        Route("/control", fake.get_control, methods=["GET"]),
        Route("/control", fake.post_control, methods=["POST"]),
        Route("/control/stats", fake.get_stats, methods=["GET"]),
        Route("/control/tags", fake.get_tags, methods=["GET"]),
        Route("/control/reset", fake.post_reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.fake = fake
    return app


def run(
    host: str = "127.0.0.1",
    port: int = 8911,
    latency_ms: int = 0,
    fail_rate: float = 0.0,
    fail_status: int = 500,
    context_windows: Mapping[str, int] | None = None,
) -> None:
    """Serves the fake provider with uvicorn until interrupted."""
    app = create_app(
        latency_ms=latency_ms, fail_rate=fail_rate, fail_status=fail_status, context_windows=context_windows
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")


def _context_window(value: str) -> tuple[str, int]:
    """Parses ``MODEL=N``; the split is at the last "=", so a model name may contain one."""
    model, sep, size = value.rpartition("=")
    try:
        tokens = int(size)
    except ValueError:
        tokens = 0
    if not sep or not model or tokens < 1:
        raise argparse.ArgumentTypeError(f"expected MODEL=N with N a positive integer, got {value!r}")
    return model, tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Switchyard fake OpenAI/Anthropic model provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8911)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument(
        "--context-window",
        type=_context_window,
        action="append",
        default=[],
        metavar="MODEL=N",
        help="context window of MODEL in tokens (repeatable)",
    )
    args = parser.parse_args(argv)
    run(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        context_windows=dict(args.context_window),
    )


if __name__ == "__main__":
    main()
