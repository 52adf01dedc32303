"""What a moderation gate scores, what blocks, and what is kept of it.

- The request of a chat is the text of every message, whatever its role (text parts of multi-part content
  too): a caller writes the whole list, assistant turns included, and a forged assistant turn is a known way
  around a gate that reads only the user's. An embed's request is its input: text that leaves for a provider
  like a prompt does. Moderate and predict tasks are not gated.
- The response of a chat is its answer's text (tool calls are not text and are not scored).
- `thresholds` set: a listed category whose score is at or over its threshold blocks (unlisted categories do
  not). `thresholds` empty: the categories the moderation model flags block.
- Nothing of the text is ever kept: a verdict holds categories and scores only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from switchyard.core.guardrail_spec import ModerationGuardrail
from switchyard.guardrails.moderation.keywords import KeywordList, custom

ALLOWED = "allowed"
BLOCKED = "blocked"
# The model could not answer: `allow` lets the call through unchecked, `block` fails it.
UNCHECKED = "unchecked"
UNAVAILABLE = "unavailable"
# The worst of several checks (a streamed answer's) is what its record says.
_RANK = {ALLOWED: 0, UNCHECKED: 1, UNAVAILABLE: 2, BLOCKED: 3}
# Categories kept in a record: the highest scores.
TOP_SCORES = 3
# A streamed answer is checked at a sentence end once this many new characters arrived, after STREAM_MAX_CHARS
# new characters whatever they are, and at its end; each check scores the answer so far (its last
# STREAM_CONTEXT_CHARS), so a harmful sentence split over two windows is still seen whole.
STREAM_MIN_CHARS = 80
STREAM_MAX_CHARS = 400
STREAM_CONTEXT_CHARS = 8000
_SENTENCE_ENDS = frozenset(".!?\n")

CONTENT_BLOCKED = "content_blocked"
GUARDRAIL_UNAVAILABLE = "guardrail_unavailable"


def request_texts(task_type: str, request: Mapping[str, Any]) -> list[str]:
    """The texts of a request that a gate scores (empty ones left out)."""
    if task_type == "chat":
        texts = []
        for message in request.get("messages", ()):
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        return [t for t in texts if t.strip()]
    if task_type == "embed":
        value = request.get("input")
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        return [v for v in values if isinstance(v, str) and v.strip()]
    return []


def response_texts(result: Mapping[str, Any]) -> list[str]:
    """The text of a chat answer that a gate scores."""
    content = result.get("content")
    return [content] if isinstance(content, str) and content.strip() else []


@dataclass(frozen=True)
class Verdict:
    """What one check (or, for a stream, the worst of its checks) decided. `source`: who scored — the
    moderation model or the keyword fallback; None when nothing did."""

    verdict: str
    source: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    category: str | None = None
    score: float | None = None
    threshold: float | None = None
    reason: str | None = None

    @property
    def stops(self) -> bool:
        """Whether the call ends here (blocked, or the model away and `when_unavailable: block`)."""
        return self.verdict in (BLOCKED, UNAVAILABLE)

    def worst(self, other: Verdict | None) -> Verdict:
        return self if other is None or _RANK[self.verdict] >= _RANK[other.verdict] else other

    def record(self) -> dict[str, Any]:
        """As kept on the task (`tasks.guardrails.moderation.<direction>`) and in its event: no text."""
        out: dict[str, Any] = {"verdict": self.verdict, "source": self.source, "scores": self.scores}
        if self.category is not None:
            out.update(category=self.category, score=self.score)
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    def error(self, direction: str, model: str) -> dict[str, Any]:
        """The task's error when the verdict stops the call: `content_blocked` naming the category and score,
        or `guardrail_unavailable`."""
        if self.verdict == BLOCKED:
            by = f"moderation model '{model}'" if self.source == "model" else "the moderation keyword list"
            limit = f" (threshold {self.threshold:g})" if self.threshold is not None else ""
            return {
                "type": CONTENT_BLOCKED,
                "message": f"the {direction} was blocked by {by}: {self.category} scored {self.score:.3f}{limit}",
                "category": self.category,
                "score": self.score,
                "direction": direction,
            }
        return {
            "type": GUARDRAIL_UNAVAILABLE,
            "message": f"moderation model '{model}' could not check the {direction}: {self.reason}",
            "direction": direction,
        }


def top_scores(scores: Mapping[str, float], n: int = TOP_SCORES) -> dict[str, float]:
    """The `n` highest category scores, rounded for the record."""
    best = sorted(scores.items(), key=lambda item: item[1], reverse=True)[:n]
    return {category: round(score, 4) for category, score in best}


def scores_of(output: Mapping[str, Any]) -> tuple[dict[str, float], set[str]]:
    """Each category's highest score over the moderation answer's results (one per input), and the categories
    the model flagged."""
    scores: dict[str, float] = {}
    flagged: set[str] = set()
    for result in output.get("results") or [output]:
        for category, score in (result.get("category_scores") or {}).items():
            if isinstance(score, int | float) and score > scores.get(category, -1.0):
                scores[category] = float(score)
        flagged.update(c for c, on in (result.get("categories") or {}).items() if on is True)
    return scores, flagged


def judge(scores: Mapping[str, float], flagged: set[str], thresholds: Mapping[str, float]) -> Verdict:
    """The verdict of a moderation answer under a guardrail's thresholds."""
    over: list[tuple[float, str, float | None]] = []
    if thresholds:
        over = [(scores[c], c, t) for c, t in thresholds.items() if c in scores and scores[c] >= t]
    else:
        over = [(scores.get(c, 1.0), c, None) for c in flagged]
    top = top_scores(scores)
    if not over:
        return Verdict(ALLOWED, "model", top)
    score, category, threshold = max(over, key=lambda o: o[0])
    return Verdict(BLOCKED, "model", top, category, round(score, 4), threshold)


def by_keywords(texts: Sequence[str], guard: ModerationGuardrail, shipped: KeywordList, reason: str) -> Verdict:
    """The keyword fallback: a phrase of the guardrail's own list (else the shipped one) blocks, scored 1.0."""
    keywords = custom(tuple(guard.keywords)) if guard.keywords is not None else shipped
    category = keywords.match(texts)
    if category is None:
        return Verdict(ALLOWED, "keywords", reason=reason)
    return Verdict(BLOCKED, "keywords", {category: 1.0}, category, 1.0, reason=reason)


def when_unavailable(texts: Sequence[str], guard: ModerationGuardrail, shipped: KeywordList, reason: str) -> Verdict:
    """The verdict when the moderation model could not answer, by the guardrail's `when_unavailable`."""
    if guard.when_unavailable == "allow":
        return Verdict(UNCHECKED, reason=reason)
    if guard.when_unavailable == "keywords":
        return by_keywords(texts, guard, shipped, reason)
    return Verdict(UNAVAILABLE, reason=reason)


class StreamWindows:
    """When the text of a streamed answer is due for a check (see STREAM_MIN_CHARS)."""

    def __init__(self) -> None:
        self.pending = 0  # characters since the last check's end

    def add(self, chunk: str) -> bool:
        """Count a chunk in; whether a check is due."""
        self.pending += len(chunk)
        if self.pending >= STREAM_MAX_CHARS:
            return True
        return self.pending >= STREAM_MIN_CHARS and not _SENTENCE_ENDS.isdisjoint(chunk)

    def checked(self) -> None:
        self.pending = 0
