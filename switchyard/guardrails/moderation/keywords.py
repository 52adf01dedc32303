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
    """Phrases by category, compiled into one pattern: `match` is a single regex scan of the lowered text
    (no IGNORECASE, which makes every alternative several times slower), the phrase found giving its category."""

    def __init__(self, phrases: Mapping[str, Iterable[str]]) -> None:
        self.categories: dict[str, str] = {}  # a phrase, lowered and its spaces collapsed -> its category
        for category, words in phrases.items():
            for word in words:
                key = _normal(word)
                if key:
                    self.categories.setdefault(key, category)
        alternatives = sorted((_phrase_pattern(k) for k in self.categories), key=len, reverse=True)
        # Whole words: "skill myself" or "kill myselfish" never match "kill myself".
        self.pattern = re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)") if alternatives else None

    def match(self, texts: Sequence[str]) -> str | None:
        """The category of the first phrase found in `texts`, or None."""
        if self.pattern is None:
            return None
        for text in texts:
            found = self.pattern.search(text.lower())
            if found is not None:
                return self.categories.get(_normal(found.group(0)), CUSTOM_CATEGORY)
        return None


def _normal(phrase: str) -> str:
    return " ".join(phrase.lower().split())


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
