"""Group commit: threads that arrive while a write is under way have their items written together in the next
one, so N concurrent writers cost a few statements and commits instead of N. The first thread in writes for
everyone (no thread of its own, no added wait: a lone writer writes at once)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[K, T, R]):
    """`write(items)` writes a batch and returns the result of each item by its key (an item it leaves out
    gets None); `submit(items)` returns the results of the caller's own items, in order.

    A key's result goes to its first item in the batch; a second item with the same key (one task delivered
    twice, by a re-published message and the original) gets None, as a write that came second would: two
    callers must never both act on one claim."""

    def __init__(self, write: Callable[[list[T]], dict[K, R]], key: Callable[[T], K], timeout_s: float) -> None:
        self._write = write
        self._key = key
        self._timeout_s = timeout_s
        self._pending: list[tuple[T, Future[R | None]]] = []
        self._writing = False
        self._lock = threading.Lock()

    def submit(self, items: Sequence[T]) -> list[R | None]:
        mine = [(item, Future[R | None]()) for item in items]
        with self._lock:
            self._pending.extend(mine)
            lead = not self._writing
            self._writing = True
        while lead:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._writing = False
                    break
            try:
                results = self._write([item for item, _ in batch])
            except BaseException as exc:
                for _, fut in batch:
                    fut.set_exception(exc)
            else:
                given: set[K] = set()
                for item, fut in batch:
                    key = self._key(item)
                    fut.set_result(None if key in given else results.get(key))
                    given.add(key)
        return [fut.result(timeout=self._timeout_s) for _, fut in mine]
