"""What the leading worker publishes about the queues: per queue kind, the tasks waiting and the oldest's age."""

from __future__ import annotations

from dataclasses import dataclass

# The Redis hash the figures live in (field `at`, then one field per queue: "<depth> <oldest age in seconds>"),
# and the file that stands in for it in embedded mode (in the data directory).
REDIS_KEY = "switchyard:queue_load"
FILE_NAME = "queue_load.json"
# Redis forgets figures nobody refreshes: a deployment with no worker left never sheds on old numbers.
REDIS_TTL_S = 60


@dataclass(frozen=True)
class QueueLoad:
    """One queue: tasks due and waiting for a worker, and how long the oldest of them has waited."""

    depth: int
    oldest_age_s: float


@dataclass(frozen=True)
class LoadSnapshot:
    """The queues as measured at `at` (Unix seconds, the measuring worker's clock)."""

    at: float
    queues: dict[str, QueueLoad]

    def encode(self) -> dict[str, str]:
        """The Redis hash's fields (and the embedded file's JSON object)."""
        fields = {name: f"{q.depth} {q.oldest_age_s:.3f}" for name, q in self.queues.items()}
        return {"at": f"{self.at:.3f}", **fields}

    @classmethod
    def decode(cls, fields: dict[str, str]) -> LoadSnapshot | None:
        """The snapshot of `encode`'s fields; None when they are missing or malformed."""
        try:
            at = float(fields["at"])
            queues = {}
            for name, value in fields.items():
                if name == "at":
                    continue
                depth, age = value.split()
                queues[name] = QueueLoad(int(depth), float(age))
        except (KeyError, ValueError):
            return None
        return cls(at, queues)
