"""A batch's line counts (batches/repository.line_counts), kept a window at a time: the lines below the first
unfinished one are settled on the batch row, and each count reads only the lines from there on. On both
databases Switchyard runs on, migrated by `switchyard migrate`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from switchyard.batches.repository import line_counts
from switchyard.core.models import Batch, Task, Tenant, utcnow
from switchyard.tasks.transitions import TaskStatus, new_task
from tests.support import PG_ADMIN_URL, ROOT, cli, create_database, drop_database

UNFINISHED = (TaskStatus.QUEUED, TaskStatus.RUNNING)


@pytest.fixture(params=["postgres", "sqlite"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    name = None
    if request.param == "postgres":
        name, url = create_database(PG_ADMIN_URL, "switchyard_counts")
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        url = f"sqlite:///{tmp_path / 'counts.db'}"
    done = subprocess.run(
        cli("migrate"), env={**os.environ, "SWITCHYARD_DATABASE_URL": url}, cwd=ROOT, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    try:
        with Session(engine) as s:
            yield s
    finally:
        engine.dispose()
        if name is not None:
            drop_database(PG_ADMIN_URL, name)


def test_counts_settle_below_the_first_unfinished_line_and_add_up_to_every_line(session: Session) -> None:
    session.add(Tenant(id="ten_1", name="t"))
    session.flush()
    batch = Batch(
        id="batch_1",
        tenant_id="ten_1",
        status="in_progress",
        endpoint="/v1/chat/completions",
        input_file_id="file_1",
        completion_window="24h",
        options={},
        webhook=None,
        total=10,
        released=8,
        expires_at=utcnow() + timedelta(hours=1),
    )
    session.add(batch)
    for line in range(8):
        session.add(
            new_task(
                tenant_id="ten_1", type="chat", model="m", input={}, options={}, batch_id="batch_1", batch_line=line
            )
        )
    session.flush()

    def end(lines: range, status: TaskStatus, tokens: int) -> None:
        session.execute(
            update(Task)
            .where(Task.batch_id == "batch_1", Task.batch_line.in_(list(lines)))
            .values(status=status, cost_usd=0.5, usage={"input_tokens": tokens, "output_tokens": 1})
        )

    # Lines 0-2 ended, 3 runs, 4-5 ended, 6-7 queued: 0-2 settle, 4-5 are counted but not settled.
    end(range(3), TaskStatus.SUCCEEDED, 10)
    end(range(4, 6), TaskStatus.FAILED, 5)
    session.execute(update(Task).where(Task.batch_line == 3).values(status=TaskStatus.RUNNING))
    counts = line_counts(session, batch, UNFINISHED)
    assert counts.by_status == {"succeeded": 3, "failed": 2, "running": 1, "queued": 2}
    assert counts.cost_usd == pytest.approx(2.5)
    assert counts.usage["input_tokens"] == 40
    assert counts.usage["output_tokens"] == 5
    assert batch.settled_below == 3
    assert batch.settled is not None
    assert batch.settled["by_status"] == {"succeeded": 3}
    assert batch.settled["usage"]["input_tokens"] == 30

    # A settled line is not read again: were it (wrongly) changed, the counts would not show it.
    session.execute(update(Task).where(Task.batch_line == 0).values(cost_usd=100.0))
    # Line 3 ends; 6-7 still queued: everything below 6 settles, and the total is unchanged but for line 3.
    end(range(3, 4), TaskStatus.SUCCEEDED, 10)
    counts = line_counts(session, batch, UNFINISHED)
    assert counts.by_status == {"succeeded": 4, "failed": 2, "queued": 2}
    assert counts.cost_usd == pytest.approx(3.0)
    assert batch.settled_below == 6

    # Every released line ended: the mark reaches `released`, and the settled counts are the batch's.
    end(range(6, 8), TaskStatus.SUCCEEDED, 10)
    counts = line_counts(session, batch, UNFINISHED)
    assert counts.by_status == {"succeeded": 6, "failed": 2}
    assert counts.usage["input_tokens"] == 70
    assert batch.settled_below == 8
    assert batch.settled["by_status"] == counts.by_status
    # Saved with the transaction: read back, the next count starts where this one stopped.
    session.commit()
    session.expire_all()
    again = session.get(Batch, "batch_1")
    assert again is not None
    assert again.settled_below == 8
    assert line_counts(session, again, UNFINISHED).by_status == {"succeeded": 6, "failed": 2}
