"""`stop_task` ends a background task that swallowed a cancel, and hands on what a task failed with."""

from __future__ import annotations

import asyncio

import pytest

from switchyard.core.aio import stop_task


def test_a_task_that_swallows_a_cancel_is_cancelled_again_until_it_ends() -> None:
    seen = {"swallowed": 0}

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if seen["swallowed"] == 2:
                    raise
                seen["swallowed"] += 1  # as a library that turns a cancel into a return would

    async def main() -> None:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await asyncio.wait_for(stop_task(task), timeout=5)
        assert task.cancelled()

    asyncio.run(main())
    assert seen["swallowed"] == 2


def test_what_a_task_failed_with_is_raised_and_none_is_a_no_op() -> None:
    async def failing() -> None:
        raise ValueError("boom")

    async def main() -> None:
        await stop_task(None)
        task = asyncio.create_task(failing())
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="boom"):
            await stop_task(task)

    asyncio.run(main())
