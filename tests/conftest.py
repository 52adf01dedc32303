"""Session fixtures: one shared stack of real processes for the tests that do not break things."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.otel_support import REDIS_DB as OTEL_REDIS_DB
from tests.otel_support import Receiver, otel_env
from tests.support import Stack


# Redis databases 7, 8 and 9 belong to the session's stacks (probe, otel, shared), alive until the run ends: a
# module's own stack takes another number (two stacks on one database take each other's Celery messages).
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


# Tracing and JSON logs (tests/test_tracing.py, tests/test_logs.py): a stack of their own, made only when used.
@pytest.fixture(scope="session")
def otel() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def otel_stack(tmp_path_factory: pytest.TempPathFactory, otel: Receiver) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("otel"), redis_db=OTEL_REDIS_DB, ml=False, provider_worker=False, env=otel_env(otel)
    )
    try:
        # At DEBUG, where a worker writes a line per execution.
        s.provider = s.start_worker("provider,batch", loglevel="DEBUG")
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def otel_key(otel_stack: Stack) -> str:
    return otel_stack.new_key("tenant-otel")


# The fuzzer and the tenant-isolation probe (tests/test_fuzz.py, tests/test_isolation.py): a stack of their own,
# made only when used, where webhooks may deliver to 127.0.0.1 (the probe needs real deliveries) and whatever a
# fuzzer leaves behind cannot disturb the shared stack's tests.
@pytest.fixture(scope="session")
def probe_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("probe"), redis_db=7, env={"SWITCHYARD_WEBHOOK_ALLOW_PRIVATE": "true"})
    yield s
    s.close()


@pytest.fixture(scope="session")
def probe_key(probe_stack: Stack) -> str:
    return probe_stack.new_key("fuzzed", "admin")
