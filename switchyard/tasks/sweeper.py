"""The tasks' sweep: no accepted task is lost. It re-publishes tasks left `queued` (a lost message, a flushed
or restarted broker, a due retry) and takes back `running` tasks whose worker lease expired (a killed
worker), failing those that have taken down too many workers. It is one of the periodic duties that
`workers/duties.py` composes and runs in the leading worker, in a transaction of the duty runner's.
Should two sweeps overlap anyway, rows are picked with SKIP LOCKED and changed by conditional updates; the
status changes themselves are the transitions module's."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from switchyard.core.db import Tx
from switchyard.settings import Settings
from switchyard.tasks import transitions
from switchyard.tasks.transitions import Dispatcher

BATCH = 500


@dataclass
class TaskSweep:
    """What one pass did, by task id."""

    reclaimed: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many of each, for the duty's log line."""
        return {
            "reclaimed": len(self.reclaimed),
            "republished": len(self.republished),
            "abandoned": len(self.abandoned),
        }


def sweep_tasks(tx: Tx, dispatcher: Dispatcher, settings: Settings, now: datetime) -> TaskSweep:
    """One pass in the caller's transaction; the messages are published after its commit."""
    reclaimed, abandoned = transitions.reclaim_expired(tx, dispatcher, now, BATCH)
    stale = now - timedelta(seconds=settings.requeue_after_s)
    republished = transitions.republish_due(tx, dispatcher, now, stale, BATCH)
    return TaskSweep(reclaimed=reclaimed, republished=republished, abandoned=abandoned)
