"""What a predict result carries besides the raw outputs: the version that answered and, for a model with
`labels`, the top-k labels and scores of each row. Added by the worker when the task succeeds, so the task,
its events, webhooks and workflow steps all see them (not only `POST /v1/predict/{model}`)."""

from __future__ import annotations

from typing import Any

from switchyard.core.config import Deployment, ModelConfig


def labelled(model: ModelConfig | None, deployment: Deployment, result: dict[str, Any]) -> None:
    """Add `version` and `top_k` to a successful predict result (in place)."""
    if model is None:
        return
    version = model.version_of(deployment)
    if version is not None:
        result["version"] = version
    if model.labels:
        top = top_k(model.labels, result.get("outputs") or {}, model.scores_output, model.top_k)
        if top is not None:
            result["top_k"] = top


def top_k(
    labels: list[str], outputs: dict[str, Any], scores_output: str | None, k: int
) -> list[list[dict[str, Any]]] | None:
    """For each row, the k best labels with their scores, best first. The scores are `scores_output`, else the
    first output whose rows are as wide as the labels; None when there is no such output."""
    if scores_output is not None:
        rows = outputs.get(scores_output)
    else:
        rows = next((v for v in outputs.values() if _is_matrix(v, len(labels))), None)
    if not _is_matrix(rows, len(labels)):
        return None
    assert rows is not None
    k = min(k, len(labels))
    ranked = []
    for row in rows:
        order = sorted(range(len(labels)), key=lambda i: -float(row[i]))[:k]
        ranked.append([{"label": labels[i], "score": float(row[i])} for i in order])
    return ranked


def _is_matrix(value: Any, width: int) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, list) and len(row) == width for row in value)
