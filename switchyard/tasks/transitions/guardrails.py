"""What a running task's guardrails found: written under the guardrail kind's own key of `tasks.guardrails`
(the other kinds' keys are left as they are), with a `task.guardrail` event. No status changes here."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import bindparam, cast, func, literal
from sqlalchemy.dialects.postgresql import JSONB

from switchyard.core.db import Database
from switchyard.core.models import Task
from switchyard.tasks.transitions.common import Claim, TaskStatus, claim_event, log, task_update


def record_guardrails(db: Database, c: Claim, kind: str, record: dict[str, Any], event: dict[str, Any]) -> bool:
    """Set `tasks.guardrails[kind]` to `record` (never text: categories, counts, scores, verdicts) and append a
    `task.guardrail` event `{"id", "kind", **event}`. `c.guardrails` becomes the column as written; False when
    the claim was lost."""
    value: Any
    if db.is_postgres:
        # Merged in the statement: another kind's key written meanwhile is kept.
        # A row made without guardrails may hold JSON null rather than SQL NULL (the ORM's JSON type writes None
        # so): `null || {...}` would make an array, so JSON null counts as empty too.
        empty = cast(literal("{}"), JSONB)
        current = func.nullif(Task.guardrails, cast(literal("null"), JSONB))
        value = func.coalesce(current, empty).op("||", return_type=JSONB)(
            func.jsonb_build_object(kind, bindparam("record", record, type_=JSONB))
        )
    else:
        value = func.json_set(
            func.coalesce(func.nullif(Task.guardrails, "null"), "{}"),
            f"$.{kind}",
            func.json(orjson.dumps(record).decode()),
        )
    with db.transaction() as tx:
        row = tx.session.execute(
            task_update()
            .where(Task.id == c.task_id, Task.claim_id == c.claim_id, Task.status == TaskStatus.RUNNING)
            .values(guardrails=value)
            .returning(Task.guardrails)
        ).first()
        if row is None:
            log.warning("lease_lost", task_id=c.task_id)
            tx.session.rollback()
            return False
        c.guardrails = row.guardrails
        claim_event(tx.session, c, "task.guardrail", {"id": c.task_id, "kind": kind, **event})
    return True
