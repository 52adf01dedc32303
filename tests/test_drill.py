"""The chaos drill, short: a few hundred objects through two APIs and three workers while a worker is SIGKILLed,
Redis restarts empty, the drill's private Postgres crashes and an API process dies mid-request; then every task,
run, batch, event and (webhook, event) pair is checked (bench/drill). `make drill` runs the long one."""

from __future__ import annotations

import base64
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
from standardwebhooks import Webhook

from bench.drill.checks import Report, check_calls, check_received
from bench.drill.cluster import _postgres_bin
from bench.drill.drill import run_drill
from bench.drill.faults import WEIGHTS
from bench.drill.receiver import Receiver


@pytest.mark.skipif(_postgres_bin() is None, reason="no initdb/postgres binaries for the drill's own Postgres")
def test_short_drill_loses_and_duplicates_nothing() -> None:
    result = run_drill(objects=300, faults=5, gap_s=4.0, settle_s=90.0, seed=11, log=False)
    assert set(Counter(f.kind for f in result.faults)) == set(WEIGHTS)
    assert not [f for f in result.faults if f.error], result.summary()
    assert result.accepted.objects >= 300
    counts = result.report.counts
    # Every kind of object was there to check.
    for what in ("runs in the database", "batches in the database", "(webhook, event) pairs", "provider calls counted"):
        assert counts[what], result.summary()
    assert result.report.lost == 0, result.summary()
    assert result.report.duplicated == 0, result.summary()
    assert result.ok, result.summary()


def _post(receiver: Receiver, secret: str, msg_id: str, body: bytes, *, good: bool = True) -> None:
    when = datetime.now(UTC)
    signature = Webhook(secret if good else "whsec_" + base64.b64encode(b"x" * 32).decode()).sign(msg_id, when, body)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())), "webhook-signature": signature}
    assert httpx.post(f"{receiver.url}/sub", content=body, headers=headers).status_code == 200


def test_receiver_side_checks_catch_bad_signatures_and_two_ids_for_one_event() -> None:
    # The checks must be able to fail: a forged signature, one event sent under two webhook-ids, an id that is
    # no delivery, a delivery never answered 2xx.
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    receiver = Receiver(fail_rate=0.0, hang_rate=0.0, hang_s=0.0)
    try:
        receiver.secrets["/sub"] = secret
        event = b'{"type": "task.succeeded", "timestamp": "t1", "data": {"id": "task_1"}}'
        _post(receiver, secret, "msg_a", event)
        _post(receiver, secret, "msg_a", event)  # a retry under the same id: fine
        _post(receiver, secret, "msg_b", event)  # the same event under another id: a duplicate
        _post(
            receiver, secret, "msg_c", b'{"type": "task.failed", "timestamp": "t2", "data": {"id": "t2"}}', good=False
        )
        received = receiver.snapshot()
    finally:
        receiver.close()
    assert [r.verified for r in received] == [True, True, True, False]
    report = Report()
    check_received(received, {"msg_a": "succeeded", "msg_b": "succeeded", "msg_d": "succeeded"}, report)
    kinds = Counter(problem.split(":")[0] for problem in report.problems)
    assert kinds == {"unverified": 1, "duplicated": 1, "unexplained": 1, "lost": 1}, report.problems
    assert report.duplicated == 1
    assert report.lost == 1


def test_a_provider_call_beyond_attempts_and_reclaims_is_a_duplicate() -> None:
    report = Report()
    check_calls("task_ok", "succeeded", 2, attempts=1, reclaims=1, report=report)  # a killed worker's call
    check_calls("task_ok2", "failed", 3, attempts=3, reclaims=0, report=report)
    assert report.problems == []
    check_calls("task_twice", "succeeded", 2, attempts=1, reclaims=0, report=report)
    check_calls("task_never", "succeeded", 0, attempts=1, reclaims=0, report=report)
    assert report.duplicated == 1
    assert len(report.problems) == 2, report.problems
