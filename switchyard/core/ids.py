"""Identifiers: a prefix, then 26 Crockford base32 characters (48-bit milliseconds + 80 random bits).

They sort by creation time, which makes `ORDER BY id` the newest-first order and the cursor of pagination.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """A new time-sortable id such as `task_01j9...`."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def id_floor(prefix: str, when: datetime) -> str:
    """The smallest id `new_id(prefix)` can make at `when`: every id made before then sorts below it."""
    value = int(when.timestamp() * 1000) << 80
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
