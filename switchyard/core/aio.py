"""Stopping the background tasks a process runs on its event loop."""

from __future__ import annotations

import asyncio
from typing import Any

# How long to wait for a cancelled task before cancelling it again.
_RECANCEL_S = 0.25


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has ended, cancelling it again while it runs on.

    One cancel is not always enough: a library may swallow it (redis-py's asyncio client does, when the cancel
    arrives while a pub/sub connection is being made), and a loop that calls it again then runs forever. An API
    whose start-up failed waited on such a loop for good instead of exiting.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=_RECANCEL_S)
    if not task.cancelled():
        error = task.exception()
        if error is not None:
            raise error
