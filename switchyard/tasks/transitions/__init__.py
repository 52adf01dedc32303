"""The one owner of a task's state. Every status change of a task is written here, each with its event in the
same transaction and its after-commit step (publish the id, signal a synchronous waiter, advance a run);
other code calls these functions rather than writing statuses itself.

The hot transitions (create, claim, finish) are a single statement on Postgres: a data-modifying CTE that
changes the task and appends its event (and its attempt) and notifies the event relay, run in autocommit, so
one round trip and one commit carry a whole transition. SQLite (embedded mode) runs the same changes as
plain statements in one transaction. Every write after a claim is conditional on still holding it
(`claim_id`): a worker whose lease was taken over cannot overwrite the outcome of the one that took it.
"""

from switchyard.tasks.transitions.cancel import cancel, cancel_queued_of_batch, cancel_queued_of_run
from switchyard.tasks.transitions.common import (
    CANCELED_ERROR,
    MAX_RECLAIMS,
    TERMINAL,
    AttemptRecord,
    BatchAdvancer,
    BatchDispatcher,
    Claim,
    Dispatcher,
    Finished,
    OnFinished,
    RunAdvancer,
    RunDispatcher,
    TaskRef,
    TaskStatus,
)
from switchyard.tasks.transitions.create import (
    acreate_plain,
    create_batch_lines,
    create_plain,
    enqueue,
    new_task,
)
from switchyard.tasks.transitions.finish import FinishGroup, FirstFinish, finish, write_first_finishes
from switchyard.tasks.transitions.guardrails import record_guardrails
from switchyard.tasks.transitions.running import cancel_released, claim, hand_back, record_retry, release
from switchyard.tasks.transitions.settle import Settler, install_settler, settle_now
from switchyard.tasks.transitions.sweep import reclaim_expired, republish_due

__all__ = [
    "CANCELED_ERROR",
    "MAX_RECLAIMS",
    "TERMINAL",
    "AttemptRecord",
    "BatchAdvancer",
    "BatchDispatcher",
    "Claim",
    "Dispatcher",
    "FinishGroup",
    "Finished",
    "FirstFinish",
    "OnFinished",
    "RunAdvancer",
    "RunDispatcher",
    "Settler",
    "TaskRef",
    "TaskStatus",
    "acreate_plain",
    "cancel",
    "cancel_queued_of_batch",
    "cancel_queued_of_run",
    "cancel_released",
    "claim",
    "create_batch_lines",
    "create_plain",
    "enqueue",
    "finish",
    "hand_back",
    "install_settler",
    "new_task",
    "reclaim_expired",
    "record_guardrails",
    "record_retry",
    "release",
    "republish_due",
    "settle_now",
    "write_first_finishes",
]
