"""The modes of the PII guardrail over text: `mask` (`<EMAIL_1>`), `hash` (`<EMAIL_3f2a9c1b>`, keyed, the same
in every call), `remove`, and `reversible` (placeholders as `mask`, and a vault that puts the values back into
the answer: whole, as it streams, and when the model altered the placeholders' spacing, case or brackets).

A `Scrubber` serves one call in one direction: within it, one value always gets one placeholder. The vault of a
reversible call lives in the memory of the process that waits on the call, never anywhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter

from switchyard.core.guardrail_spec import PII_ENTITIES, PiiGuardrail, PiiMode
from switchyard.guardrails.pii.detect import Span, detect

ALL_ENTITIES = frozenset(PII_ENTITIES)


class Scrubber:
    """Replaces what `detect` finds, by `mode`. `found` counts the values replaced, by type."""

    __slots__ = ("_key", "_placeholders", "_seen", "found", "mode", "vault", "wanted")

    def __init__(self, mode: PiiMode, entities: frozenset[str] = ALL_ENTITIES, hash_key: bytes = b"") -> None:
        self.mode = mode
        self.wanted = entities
        self._key = hash_key
        self.found: Counter[str] = Counter()
        # (type, value) -> placeholder, and how many of each type were numbered.
        self._placeholders: dict[tuple[str, str], str] = {}
        self._seen: Counter[str] = Counter()
        # placeholder -> value (reversible mode only: what the answer gets back).
        self.vault: dict[str, str] = {}

    @classmethod
    def of(cls, guardrail: PiiGuardrail, hash_key: bytes = b"", *, mode: PiiMode | None = None) -> Scrubber:
        """The scrubber of a guardrail (`mode` overrides the guardrail's: a fallback)."""
        entities = frozenset(guardrail.entities) if guardrail.entities else ALL_ENTITIES
        return cls(mode or guardrail.mode, entities, hash_key)

    def scrub(self, text: str) -> str:
        """`text` with its findings replaced."""
        spans = detect(text, self.wanted)
        if not spans:
            return text
        return self.replace(text, spans)

    def replace(self, text: str, spans: list[Span]) -> str:
        """`text` with `spans` (ordered, not overlapping) replaced."""
        out: list[str] = []
        at = 0
        for span in spans:
            out.append(text[at : span.start])
            out.append(self._placeholder(span.entity, text[span.start : span.end]))
            at = span.end
        out.append(text[at:])
        return "".join(out)

    def _placeholder(self, entity: str, value: str) -> str:
        self.found[entity] += 1
        if self.mode == "remove":
            return ""
        key = (entity, value)
        placeholder = self._placeholders.get(key)
        if placeholder is None:
            if self.mode == "hash":
                digest = hmac.new(self._key, f"{entity}:{value}".encode(), hashlib.sha256).hexdigest()[:8]
                placeholder = f"<{entity}_{digest}>"
            else:
                self._seen[entity] += 1
                placeholder = f"<{entity}_{self._seen[entity]}>"
                if self.mode == "reversible":
                    self.vault[placeholder] = value
            self._placeholders[key] = placeholder
        return placeholder

    def counts(self) -> dict[str, int]:
        """Values replaced by type (never the values)."""
        return dict(self.found)


# --- restoring a reversible call's answer ------------------------------------------------------------------------

# A placeholder as a model may give it back: `<EMAIL_1>`, `< email_1 >`, `<Email 1>`, `[EMAIL-1]`, `{EMAIL_1}`,
# `&lt;EMAIL_1&gt;`, `<CREDIT CARD 1>`. The type's words may be joined by `_`, `-`, spaces or nothing.
_TYPE_WORDS = "|".join(r"[\s_-]*".join(name.split("_")) for name in PII_ENTITIES)
_MANGLED = re.compile(
    rf"(?:<|&lt;|\[|\{{)\s*({_TYPE_WORDS})[\s_-]*(\d{{1,6}})\s*(?:>|&gt;|\]|\}})|\b({_TYPE_WORDS})_(\d{{1,6}})\b",
    re.IGNORECASE,
)
_NOT_WORD = re.compile(r"[\s_-]+")
# The longest a mangled placeholder can be, and what may begin one: a stream holds back from there.
_MAX_PLACEHOLDER = 48
_OPENERS = re.compile(r"(?:<|&|\[|\{)[^>\]}]*\Z")
_WORD_START = re.compile(r"\b[A-Za-z]")
_TRAILING_TYPE = re.compile(r"[A-Za-z_ -]*\d*\Z")
_TYPE_PREFIXES = tuple(name.replace("_", "") for name in PII_ENTITIES)


class Restorer:
    """Puts a reversible call's values back into text that holds its placeholders."""

    def __init__(self, vault: dict[str, str]) -> None:
        # Keyed as found in the text: the type's letters upper-cased, then the number.
        self._values = {_key(p[1:-1].rsplit("_", 1)[0], p[1:-1].rsplit("_", 1)[1]): v for p, v in vault.items()}

    def restore(self, text: str) -> str:
        """`text` with every placeholder of the vault (as given or mangled) replaced by its value; placeholders
        the vault does not know are left as they are."""
        if not self._values:
            return text
        return _MANGLED.sub(self._value, text)

    def _value(self, m: re.Match[str]) -> str:
        kind, number = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
        return self._values.get(_key(kind, number), m.group())

    def stream(self) -> StreamRestorer:
        """A restorer for an answer that arrives in pieces."""
        return StreamRestorer(self)


def _key(kind: str, number: str) -> str:
    return _NOT_WORD.sub("", kind).upper() + "#" + str(int(number))


class StreamRestorer:
    """Restores a streamed answer piece by piece. What could be the start of a placeholder split over pieces
    (an opening bracket with no closing one yet, a trailing `EMAIL_` or `Credit card`) is held back until the
    next piece says what it is; `flush` gives the rest at the end."""

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self._held = ""

    def feed(self, piece: str) -> str:
        """What of the answer so far can be sent now, restored."""
        text = self._held + piece
        cut = _hold_from(text)
        self._held = text[cut:]
        return self._restorer.restore(text[:cut])

    def flush(self) -> str:
        """The rest, restored."""
        text, self._held = self._held, ""
        return self._restorer.restore(text)


def _hold_from(text: str) -> int:
    """Where the part of `text` that might be an unfinished placeholder begins (len(text): none)."""
    tail_start = max(0, len(text) - _MAX_PLACEHOLDER)
    tail = text[tail_start:]
    opener = _OPENERS.search(tail)
    if opener is not None:
        return tail_start + opener.start()
    # A bare `EMAIL_1` or `credit card` at the very end: from the first word start whose rest could begin one.
    for word in _WORD_START.finditer(tail, max(0, len(tail) - 24)):
        rest = tail[word.start() :]
        if not _TRAILING_TYPE.fullmatch(rest):
            continue
        letters = _NOT_WORD.sub("", rest).upper().rstrip("0123456789")
        if any(p.startswith(letters) or letters.startswith(p) for p in _TYPE_PREFIXES):
            return tail_start + word.start()
    return len(text)


# --- scrubbing an answer as it streams ---------------------------------------------------------------------------

# A value longer than this may be cut by a streamed answer's pieces (a PEM block); the rest cannot.
_STREAM_HOLD = 160


class StreamScrubber:
    """Scrubs an answer that arrives in pieces (mask, hash or remove of a streamed response): the last
    `_STREAM_HOLD` characters are held back, and moved back further to the start of any finding that reaches
    into them, so that a value split over pieces is seen whole."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber
        self._held = ""

    def feed(self, piece: str) -> str:
        """What of the answer so far can be sent now, scrubbed."""
        text = self._held + piece
        if len(text) <= _STREAM_HOLD:
            self._held = text
            return ""
        spans = detect(text, self.scrubber.wanted)
        cut = len(text) - _STREAM_HOLD
        for span in spans:
            if span.end > cut:
                cut = min(cut, span.start)
                break
        self._held = text[cut:]
        return self.scrubber.replace(text[:cut], [s for s in spans if s.end <= cut])

    def flush(self) -> str:
        """The rest, scrubbed."""
        text, self._held = self._held, ""
        return self.scrubber.scrub(text)
