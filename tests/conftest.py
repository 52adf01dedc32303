"""Session fixtures: one shared stack of real processes for the tests that do not break things."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("stack"), redis_db=9)
    yield s
    s.close()


@pytest.fixture(scope="session")
def admin_key(stack: Stack) -> str:
    return stack.new_key("acme", "admin")


@pytest.fixture
def client(stack: Stack, admin_key: str) -> Iterator[httpx.Client]:
    with stack.client(admin_key) as c:
        yield c


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("misc")
