"""GroupCommit (core/group_commit.py): writers that arrive during a write go together in the next one, and a key
written twice in one batch has one owner."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from switchyard.core.group_commit import GroupCommit


def test_items_that_arrive_during_a_write_share_the_next_and_a_repeated_key_has_one_owner() -> None:
    first_write = threading.Event()
    release = threading.Event()
    batches: list[list[str]] = []

    def write(items: list[str]) -> dict[str, str]:
        batches.append(list(items))
        if len(batches) == 1:
            first_write.set()
            release.wait(10)
        return {item: f"claimed {item}" for item in items}

    group: GroupCommit[str, str, str] = GroupCommit(write, key=lambda item: item, timeout_s=10)
    with ThreadPoolExecutor(4) as pool:
        lead = pool.submit(group.submit, ["a"])
        assert first_write.wait(10)
        # While "a" is being written, the same task arrives twice (a message and its re-published copy).
        copies = [pool.submit(group.submit, ["t1"]), pool.submit(group.submit, ["t1", "t2"])]
        while len(group._pending) < 3:
            threading.Event().wait(0.01)
        release.set()
        results = [lead.result(10), *(c.result(10) for c in copies)]
    assert batches == [["a"], ["t1", "t1", "t2"]]
    assert results[0] == ["claimed a"]
    # t1 went to exactly one of its two callers; t2 to its own.
    owners = [r for r in (results[1][0], results[2][0]) if r is not None]
    assert owners == ["claimed t1"]
    assert results[2][1] == "claimed t2"
