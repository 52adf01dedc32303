"""A batch as the API shows it: OpenAI's `batch` object (also the `data` of a batch's terminal events)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from switchyard.core.models import Batch


def _unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def batch_view(b: Batch) -> dict[str, Any]:
    """OpenAI's batch object, plus `cost_usd`, `usage` and the batch's own `webhook`."""
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": {"object": "list", "data": b.errors} if b.errors else None,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": _unix(b.created_at),
        "in_progress_at": _unix(b.in_progress_at),
        "expires_at": _unix(b.expires_at),
        "finalizing_at": _unix(b.finalizing_at),
        "completed_at": _unix(b.completed_at),
        "failed_at": _unix(b.failed_at),
        "expired_at": _unix(b.expired_at),
        "cancelling_at": _unix(b.cancelling_at),
        "cancelled_at": _unix(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": b.metadata_,
        "cost_usd": round(b.cost_usd, 10),
        "usage": b.usage,
        "webhook": b.webhook,
    }
