"""Use Switchyard through the official `openai` SDK: only `base_url` changes.

Run it with the service up (`make dev` in another terminal prints the URL and a key):

    SWITCHYARD_API_KEY=sy_... python examples/openai_sdk.py

SWITCHYARD_URL defaults to http://127.0.0.1:8000. It calls chat completions (plain, then streamed with
`include_usage`), embeddings (as floats and as base64), moderations and the model list. `model` is a logical
model of Switchyard's config; each call runs as a task, routed, retried, costed and recorded like any other.
Exits 1 on an API error.
"""

import base64
import os
import struct
import sys

import openai
from openai import OpenAI

URL = os.environ.get("SWITCHYARD_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("SWITCHYARD_API_KEY")
if not KEY:
    sys.exit("SWITCHYARD_API_KEY is not set: use the key `make dev` printed (SWITCHYARD_API_KEY=sy_... python ...)")

# Switchyard retries and fails over itself; the SDK's own retries would only repeat that work.
client = OpenAI(base_url=f"{URL}/v1", api_key=KEY, max_retries=0)


def main() -> None:
    # Chat. with_raw_response gives the headers too: Switchyard adds the task's id and its cost.
    raw = client.chat.completions.with_raw_response.create(
        model="chat-default", messages=[{"role": "user", "content": "Hi from the openai SDK"}]
    )
    reply = raw.parse()
    print(f"chat: {reply.choices[0].message.content!r} ({reply.usage.total_tokens} tokens)")
    print(f"  task {raw.headers['x-switchyard-task-id']}, cost ${float(raw.headers['x-switchyard-cost-usd']):.8f}")

    # Streamed chat: chunks as the provider produces them; with include_usage a last chunk has no choices
    # and carries the usage.
    print("streamed chat:")
    stream = client.chat.completions.create(
        model="chat-default",
        messages=[{"role": "user", "content": "Stream this answer to me, a few words at a time"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].delta.content:
                print(f"  chunk {chunk.choices[0].delta.content!r}")
        elif chunk.usage:
            print(f"  usage: {chunk.usage.prompt_tokens} in, {chunk.usage.completion_tokens} out")

    # Embeddings as floats (the SDK asks for base64 on the wire and decodes it for you) ...
    texts = ["a first sentence", "a second one"]
    floats = client.embeddings.create(model="embed-default", input=texts)
    vectors = [item.embedding for item in floats.data]
    print(f"embeddings: {len(vectors)} vectors of {len(vectors[0])} floats; first values {vectors[0][:3]}")
    # ... or as base64 when you ask for it: little-endian float32, half the bytes of JSON floats.
    packed = client.embeddings.create(model="embed-default", input=texts, encoding_format="base64")
    raw_bytes = base64.b64decode(packed.data[0].embedding)
    decoded = struct.unpack(f"<{len(raw_bytes) // 4}f", raw_bytes)
    same = all(abs(a - b) < 1e-6 for a, b in zip(decoded, vectors[0], strict=True))
    print(f"  base64: {len(packed.data[0].embedding)} characters, decoded equal to the floats: {same}")

    # Moderation (`model` may be left out: the config's first moderation model answers). The fake model of
    # `make dev` flags text containing [[flag]].
    moderation = client.moderations.create(input=["a friendly note", "a hostile note [[flag]]"])
    for text, result in zip(["a friendly note", "a hostile note [[flag]]"], moderation.results, strict=True):
        flagged = [name for name, hit in result.categories.model_dump().items() if hit]
        print(f"moderation: {text!r} flagged={result.flagged} {flagged}")

    # The logical models of the config; Switchyard adds each one's task type (and ML models' signatures).
    models = client.models.list()
    print("models: " + ", ".join(f"{m.id} ({getattr(m, 'type', '?')})" for m in models))


if __name__ == "__main__":
    try:
        main()
    except openai.APIError as exc:  # errors come as {"error": {"type", "message", "param", "code"}}
        sys.exit(f"{type(exc).__name__}: {exc}")
