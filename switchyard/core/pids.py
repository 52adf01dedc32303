"""Files named by the process that owns them (sockets, snapshots in the data directory): is the owner alive?"""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may be another one than the owner, if the id was reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def owner_dead(path: Path | str) -> bool:
    """Whether `path`, named `<pid>.<suffix>`, belongs to a process that no longer exists."""
    stem = Path(path).stem
    return stem.isdigit() and not pid_alive(int(stem))
