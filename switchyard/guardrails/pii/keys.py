"""The secret of `hash` mode: `SWITCHYARD_PII_HASH_KEY`, else a random key kept in `<data dir>/pii_hash_key`.

The same value must hash to the same placeholder in every call and every process (the API scrubs requests, the
workers scrub answers), so the key is read once per process at start-up. Generated keys suit one machine (the
embedded default, or processes sharing the data directory); a deployment over several machines sets
`SWITCHYARD_PII_HASH_KEY` to the same secret everywhere.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from pathlib import Path

from switchyard.settings import Settings, get_settings

_FILE = "pii_hash_key"
_key: bytes | None = None
_lock = threading.Lock()


def load_hash_key(settings: Settings) -> bytes:
    """This process's key (from the settings, else the data directory's file, made on first use)."""
    global _key
    with _lock:
        if settings.pii_hash_key is not None:
            _key = settings.pii_hash_key.get_secret_value().encode()
        else:
            _key = _from_file(settings.data_dir / _FILE)
        return _key


def hash_key() -> bytes:
    """The key loaded at start-up (loaded now from this process's settings if it was not)."""
    return _key if _key is not None else load_hash_key(get_settings())


def _from_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        # O_EXCL: of processes starting together, one writes the key and the others read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    for _ in range(100):
        key = path.read_text().strip()
        if key:
            return key.encode()
        threading.Event().wait(0.01)  # the writer has created the file but not written it yet
    raise RuntimeError(f"{path} is empty: remove it or set SWITCHYARD_PII_HASH_KEY")
