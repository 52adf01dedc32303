"""What the drill checks once the faults are over and everything has settled, from the database, the webhook
receiver's log and the fake provider's per-tag counts."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import psycopg

from bench.drill.load import Accepted
from bench.drill.receiver import Received

TASK_DONE = ("succeeded", "failed", "canceled")
RUN_DONE = ("succeeded", "failed", "canceled")
BATCH_DONE = ("completed", "failed", "cancelled", "expired")
TAG_RE = re.compile(r"\[\[tag:(\d+)\]\]")


def _rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return list(conn.execute(query, params).fetchall())


def unsettled(url: str) -> dict[str, int]:
    """What is still moving: objects not ended, deliveries not ended, events not numbered yet."""
    row = _rows(
        url,
        """SELECT
             (SELECT count(*) FROM tasks WHERE status NOT IN ('succeeded', 'failed', 'canceled')),
             (SELECT count(*) FROM runs WHERE status NOT IN ('succeeded', 'failed', 'canceled')),
             (SELECT count(*) FROM batches WHERE status NOT IN ('completed', 'failed', 'cancelled', 'expired')),
             (SELECT count(*) FROM webhook_deliveries WHERE status IN ('pending', 'delivering')),
             (SELECT count(*) FROM events WHERE seq IS NULL)""",
    )[0]
    return dict(zip(("tasks", "runs", "batches", "deliveries", "unnumbered events"), map(int, row), strict=True))


def wait_settled(url: str, timeout: float) -> dict[str, int]:
    """Poll until nothing is moving (or `timeout`); returns what was still moving at the end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = unsettled(url)
        except psycopg.Error:
            left = {"database unreachable": 1}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def last_settled_at(url: str) -> float:
    """Wall-clock time the last object, step or delivery ended."""
    row = _rows(
        url,
        """SELECT extract(epoch FROM greatest(
             (SELECT max(finished_at) FROM tasks), (SELECT max(finished_at) FROM runs),
             (SELECT max(greatest(completed_at, failed_at, cancelled_at, expired_at)) FROM batches),
             (SELECT max(finished_at) FROM webhook_deliveries)))""",
    )[0]
    return float(row[0] or 0.0)


@dataclass
class Report:
    """Counts and the problems found: `problems` lists one line per object that broke a promise."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # reasons tasks and runs failed with
    problems: list[str] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0

    def problem(self, kind: str, text: str) -> None:
        if kind == "lost":
            self.lost += 1
        elif kind == "duplicated":
            self.duplicated += 1
        self.counts[f"problem: {kind}"] += 1
        if len(self.problems) < 200:
            self.problems.append(f"{kind}: {text}")


def check(url: str, accepted: Accepted, received: list[Received], tags: dict[str, int]) -> Report:
    """Every promise, for every object in the database and every one the API accepted."""
    report = Report()
    _check_tasks(url, accepted, tags, report)
    _check_idempotency(url, accepted, report)
    _check_runs(url, accepted, report)
    _check_batches(url, accepted, report)
    _check_events(url, report)
    _check_deliveries(url, received, report)
    return report


def _check_tasks(url: str, accepted: Accepted, tags: dict[str, int], report: Report) -> None:
    tasks = {
        row[0]: row[1:]
        for row in _rows(
            url,
            """SELECT t.id, t.status, t.error, t.input::text, t.reclaim_count,
                      count(a.id) FILTER (WHERE a.status = 'succeeded'), count(a.id)
               FROM tasks t LEFT JOIN attempts a ON a.task_id = t.id GROUP BY t.id""",
        )
    }
    ended = Counter(
        row[0]
        for row in _rows(
            url, "SELECT task_id FROM events WHERE type IN ('task.succeeded', 'task.failed', 'task.canceled')"
        )
    )
    report.counts["tasks in the database"] = len(tasks)
    report.counts["tasks accepted by the API"] = len(accepted.tasks)
    for task_id in accepted.tasks:
        if task_id not in tasks:
            report.problem("lost", f"task {task_id} ({accepted.tasks[task_id]}) answered 2xx, not in the database")
    for task_id, (status, error, input_text, reclaims, succeeded, attempts) in tasks.items():
        report.counts[f"tasks {status}"] += 1
        if status not in TASK_DONE:
            report.problem("lost", f"task {task_id} still {status}")
            continue
        if ended[task_id] != 1:
            kind = "duplicated" if ended[task_id] > 1 else "lost"
            report.problem(kind, f"task {task_id} has {ended[task_id]} terminal events")
        if status == "succeeded" and succeeded != 1:
            kind = "duplicated" if succeeded > 1 else "unexplained"
            report.problem(kind, f"task {task_id} succeeded with {succeeded} succeeded attempts")
        if status != "succeeded":
            reason = (error or {}).get("type") if isinstance(error, dict) else None
            if not reason:
                report.problem("unexplained", f"task {task_id} {status} without an error type")
            report.failures[f"task {status}: {reason}"] += 1
            if succeeded:
                report.problem("duplicated", f"task {task_id} {status} but has a succeeded attempt")
        # The provider may have seen a call no attempt records only when the worker making it died (a reclaim).
        for tag in TAG_RE.findall(input_text):
            check_calls(task_id, status, tags.get(tag, 0), attempts, reclaims, report)
        report.counts["task reclaims (lease of a lost worker expired)"] += reclaims
        report.counts["task attempts"] += attempts


def check_calls(task_id: str, status: str, calls: int, attempts: int, reclaims: int, report: Report) -> None:
    """A task's calls at the provider against what it recorded: each attempt is one call, and a worker that died
    mid-call (its lease reclaimed) may have made one more that no attempt records. More is a duplicate."""
    report.counts["provider calls counted"] += calls
    if calls > attempts + reclaims:
        report.problem(
            "duplicated",
            f"task {task_id} reached the provider {calls} times; {attempts} attempts recorded, {reclaims} reclaims",
        )
    if status == "succeeded" and calls == 0:
        report.problem("unexplained", f"task {task_id} succeeded but never reached the provider")


def _check_idempotency(url: str, accepted: Accepted, report: Report) -> None:
    """A request sent again with its Idempotency-Key made nothing new: one row per key, one id per key."""
    for table in ("tasks", "runs"):
        for key, n in _rows(
            url, f"SELECT idempotency_key, count(*) FROM {table} WHERE idempotency_key IS NOT NULL GROUP BY 1"
        ):
            report.counts[f"{table} with an Idempotency-Key"] += 1
            if n != 1:
                report.problem("duplicated", f"{n} {table} for Idempotency-Key {key}")
    for key, ids in accepted.replayed.items():
        if len(ids) != 1:
            report.problem("duplicated", f"Idempotency-Key {key} answered with {sorted(ids)}")


def _check_runs(url: str, accepted: Accepted, report: Report) -> None:
    runs = {row[0]: row[1:] for row in _rows(url, "SELECT id, status, error FROM runs")}
    ended = Counter(
        row[0]
        for row in _rows(url, "SELECT run_id FROM events WHERE type IN ('run.succeeded', 'run.failed', 'run.canceled')")
    )
    steps = _rows(url, "SELECT run_id, step_id, status FROM run_steps WHERE status NOT IN "
                  "('succeeded', 'failed', 'skipped', 'canceled')")  # fmt: skip
    report.counts["runs in the database"] = len(runs)
    for run_id in accepted.runs:
        if run_id not in runs:
            report.problem("lost", f"run {run_id} answered 2xx, not in the database")
    for run_id, (status, error) in runs.items():
        report.counts[f"runs {status}"] += 1
        if status not in RUN_DONE:
            report.problem("lost", f"run {run_id} still {status}")
        elif ended[run_id] != 1:
            report.problem("duplicated" if ended[run_id] > 1 else "lost", f"run {run_id}: {ended[run_id]} ends")
        if status in ("failed", "canceled"):
            report.failures[f"run {status}: {(error or {}).get('type')} {(error or {}).get('message', '')[:80]}"] += 1
    for run_id, step_id, status in steps:
        report.problem("lost", f"run {run_id} step {step_id} still {status}")


def _check_batches(url: str, accepted: Accepted, report: Report) -> None:
    batches = {
        row[0]: row[1:]
        for row in _rows(
            url,
            """SELECT b.id, b.status, b.total, b.completed, b.failed,
                      (SELECT count(*) FROM tasks t WHERE t.batch_id = b.id),
                      (SELECT count(DISTINCT t.batch_line) FROM tasks t WHERE t.batch_id = b.id)
               FROM batches b""",
        )
    }
    ended = Counter(
        row[0]
        for row in _rows(
            url,
            "SELECT batch_id FROM events WHERE type IN "
            "('batch.completed', 'batch.failed', 'batch.canceled', 'batch.expired')",
        )
    )
    report.counts["batches in the database"] = len(batches)
    for batch_id in accepted.batches:
        if batch_id not in batches:
            report.problem("lost", f"batch {batch_id} answered 2xx, not in the database")
    for batch_id, (status, total, completed, failed, tasks, lines) in batches.items():
        report.counts[f"batches {status}"] += 1
        if status not in BATCH_DONE:
            report.problem("lost", f"batch {batch_id} still {status}")
            continue
        if ended[batch_id] != 1:
            report.problem("duplicated" if ended[batch_id] > 1 else "lost", f"batch {batch_id}: {ended[batch_id]} ends")
        if status == "completed" and (completed + failed != total or lines != total):
            report.problem("lost", f"batch {batch_id}: {total} lines, {completed}+{failed} ended, {lines} ran")
        if tasks != lines:
            report.problem("duplicated", f"batch {batch_id}: {tasks} tasks for {lines} lines")


def _check_events(url: str, report: Report) -> None:
    count, low, high, unnumbered = _rows(
        url, "SELECT count(seq), min(seq), max(seq), count(*) FILTER (WHERE seq IS NULL) FROM events"
    )[0]
    report.counts["events"] = int(count)
    if unnumbered:
        report.problem("lost", f"{unnumbered} events never numbered")
    if count and (low != 1 or high - low + 1 != count):
        report.problem("lost", f"event ids have gaps: {count} events numbered {low}..{high}")


def _check_deliveries(url: str, received: list[Received], report: Report) -> None:
    webhooks = _rows(url, "SELECT id, url, events, object_id FROM webhooks")
    deliveries = _rows(
        url,
        "SELECT id, webhook_id, event_seq, status, attempt_count, last_status_code, last_error FROM webhook_deliveries",
    )
    events = _rows(url, "SELECT seq, type, task_id, run_id, batch_id FROM events WHERE seq IS NOT NULL")
    by_pair: dict[tuple[str, int], list[str]] = defaultdict(list)
    status_of: dict[str, str] = {}
    why: dict[str, str] = {}
    for delivery_id, webhook_id, seq, status, attempts, code, error in deliveries:
        by_pair[(webhook_id, seq)].append(delivery_id)
        status_of[delivery_id] = status
        why[delivery_id] = f"after {attempts} attempts, last {code or (error or '')[:120]}"
        report.counts[f"deliveries {status}"] += 1
    expected = 0
    for webhook_id, _url, patterns, object_id in webhooks:
        for seq, etype, task_id, run_id, batch_id in events:
            if object_id is not None and object_id not in (task_id, run_id, batch_id):
                continue
            if object_id is not None and task_id is not None and run_id is not None and object_id == run_id:
                continue  # a run's webhook gets the run's events, not its tasks'
            if patterns and not any(fnmatchcase(etype, p) for p in patterns):
                continue
            expected += 1
            got = by_pair.get((webhook_id, seq), [])
            if len(got) != 1:
                kind = "duplicated" if got else "lost"
                report.problem(kind, f"webhook {webhook_id} event {seq} ({etype}): {len(got)} deliveries")
    report.counts["(webhook, event) pairs"] = expected
    check_received(received, status_of, report, why)


def check_received(
    received: list[Received], status_of: dict[str, str], report: Report, why: dict[str, str] | None = None
) -> None:
    """The receiver's side: every request signed, one webhook-id per (receiver, event), every succeeded delivery
    answered 2xx at least once, nothing received that is not a delivery. `status_of`: delivery id → status;
    `why`: delivery id → its attempts and last error, told with a delivery that did not succeed."""
    ids_per_event: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    ok: set[str] = set()
    for r in received:
        report.counts["webhook requests received"] += 1
        if not r.verified:
            report.problem("unverified", f"{r.webhook_id} to {r.path} did not verify")
        ids_per_event[(r.path, r.event_type, r.object_id, r.timestamp)].add(r.webhook_id)
        if r.answered == 200:
            ok.add(r.webhook_id)
        if r.webhook_id not in status_of:
            report.problem("unexplained", f"received {r.webhook_id}, which is no delivery")
    for key, ids in ids_per_event.items():
        if len(ids) != 1:
            report.problem("duplicated", f"{key[1]} of {key[2]} to {key[0]} came with {len(ids)} webhook-ids")
    for delivery_id, status in status_of.items():
        if status != "succeeded":
            report.problem("lost", f"delivery {delivery_id} ended {status} {(why or {}).get(delivery_id, '')}".rstrip())
        elif delivery_id not in ok:
            report.problem("lost", f"delivery {delivery_id} succeeded, but the receiver never answered it 2xx")
