"""Fake OpenAI/Anthropic model provider for development, tests, load tests and failure drills.

See :mod:`switchyard.fake_provider.app` (``create_app``, ``run``) for the behaviour and the marker syntax.
The app module is deliberately not imported here, so that
``python -m switchyard.fake_provider.app`` runs without a runpy warning.

The rest is one module per concern: ``core`` (state, settings, the steps every endpoint shares), ``markers``,
``responses`` (JSON, SSE and AWS event-stream framing), ``chat`` (what both chat APIs share), and the endpoint
groups ``openai_chat``, ``embeddings``, ``moderations``, ``messages`` (Anthropic, Bedrock, Vertex), ``control``.
"""
