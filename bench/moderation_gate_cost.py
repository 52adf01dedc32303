"""CPU of the moderation gates' in-process parts, per call: deciding whether a task has a gate at all (the hot
path of every task a worker claims), making one, judging a moderation answer, and the keyword fallback.

    .venv/bin/python -m bench.moderation_gate_cost [-n 100000]

The moderation call itself is a provider call (the `sync_overhead` benchmark measures those); this is what the
gate adds around it, and what a task with no moderation guardrail pays: the `for_claim` lookup.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from switchyard.core.config import AppConfig
from switchyard.guardrails.moderation import keywords
from switchyard.guardrails.moderation.policy import judge, request_texts, scores_of
from switchyard.settings import Settings
from switchyard.tasks.moderation_gate import ModerationGates
from switchyard.tasks.transitions import Claim

CONFIG = {
    "providers": {"fake": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "x"}},
    "models": {
        "chat": {"type": "chat", "deployments": [{"provider": "fake", "model": "gpt-4o-mini"}]},
        "chat-guarded": {
            "type": "chat",
            "deployments": [{"provider": "fake", "model": "gpt-4o-mini"}],
            "guardrails": {"moderation": {"model": "mod", "thresholds": {"harassment": 0.5}}},
        },
        "mod": {"type": "moderate", "deployments": [{"provider": "fake", "model": "omni-moderation-latest"}]},
    },
}
MESSAGES = {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello " * 40}]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100_000)
    n = parser.parse_args().n
    gates = ModerationGates(Settings(), AppConfig.model_validate(CONFIG), None, None, None)  # type: ignore[arg-type]

    def claim(model: str, options: dict[str, Any]) -> Claim:
        return Claim("task_x", "clm_x", "ten_x", "chat", model, MESSAGES, options, 0)

    plain, guarded = claim("chat", {}), claim("chat-guarded", {})
    requested = claim("chat", {"guardrails": {"moderation": {"model": "mod", "thresholds": {"harassment": 0.5}}}})
    answer = {
        "flagged": False,
        "results": [{"categories": {"harassment": False}, "category_scores": {"harassment": 0.01, "hate": 0.002}}],
    }
    text = ("A perfectly ordinary sentence about shipping a parcel to a customer. " * 15)[:1000]
    shipped = keywords.load()

    def measure(label: str, fn: Any, times: int = n) -> None:
        c0 = time.process_time()
        for _ in range(times):
            fn()
        cpu = time.process_time() - c0
        print(f"{label:64} {cpu / times * 1e6:8.3f} us CPU/call")

    measure("no moderation guardrail: for_claim (every task pays this)", lambda: gates.for_claim(plain))
    measure("model's guardrail from the config file: for_claim -> TaskGate", lambda: gates.for_claim(guarded))
    measure("per-request guardrail in options: for_claim (parse) -> TaskGate", lambda: gates.for_claim(requested))
    measure("request texts of a chat (2 messages)", lambda: request_texts("chat", MESSAGES))
    measure("judge a moderation answer", lambda: judge(*scores_of(answer), {"harassment": 0.5}))
    measure("keyword fallback, shipped list, 1 KB of clean text", lambda: shipped.match([text]), n // 10)


if __name__ == "__main__":
    main()
