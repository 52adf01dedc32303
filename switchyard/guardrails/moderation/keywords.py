"""The keyword fallback of the moderation gates (`when_unavailable: keywords`): whole-word, case-insensitive
phrase matching, one compiled pattern per category."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import yaml

from switchyard.defaults import DEFAULTS_DIR

SHIPPED_KEYWORDS = DEFAULTS_DIR / "moderation_keywords.yaml"
# The category a guardrail's own `keywords:` list reports (it has no categories).
CUSTOM_CATEGORY = "keywords"


class KeywordList:
    """Phrases by category, compiled once: `match` is one regex scan per category."""

    def __init__(self, phrases: Mapping[str, Iterable[str]]) -> None:
        self.patterns: list[tuple[str, re.Pattern[str]]] = []
        for category, words in phrases.items():
            alternatives = sorted({_phrase_pattern(w) for w in words if w and w.strip()}, key=len, reverse=True)
            if alternatives:
                # \b on both sides: "skill myself" or "kill myselfish" never match "kill myself".
                pattern = re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)
                self.patterns.append((category, pattern))

    def match(self, texts: Sequence[str]) -> str | None:
        """The first category with a phrase in any of `texts`, or None."""
        for category, pattern in self.patterns:
            if any(pattern.search(text) for text in texts):
                return category
        return None


def _phrase_pattern(phrase: str) -> str:
    # A phrase's spaces match any run of whitespace (line breaks too); everything else literally.
    return r"\s+".join(re.escape(word) for word in phrase.split())


@lru_cache(maxsize=8)
def load(path: Path = SHIPPED_KEYWORDS) -> KeywordList:
    """The keyword list of a YAML file of `category: [phrases]` (the shipped one by default), compiled once."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(w, str) for w in v) for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a mapping of category to a list of phrases")
    return KeywordList(data)


@lru_cache(maxsize=256)
def custom(phrases: tuple[str, ...]) -> KeywordList:
    """A guardrail's own `keywords:` (they replace the file's), compiled once per distinct list."""
    return KeywordList({CUSTOM_CATEGORY: phrases})
