"""Templates rendered outside the run's row lock.

An advance holds the run's row lock (a cancel or another advance waits on it), and a template may take up to its
budget's time. So the advance does not render: where it needs a rendered value it asks its `RenderPass`, which
either has it (rendered between two locked passes) or records a `RenderJob` and answers `Pending`; the advance
leaves that step as it is and commits. The runner (`runner.py`) then renders the jobs with no lock and no
transaction held, and advances again with the results. A result is keyed by what it was rendered from: the
template's kind, step, generation and item, and the status and generation of the steps its template can read
(its parents; every step for the run's output). A step's output is fixed once it has finished in a generation,
so a matching key means the same context; should the run have moved on meanwhile, the key differs and the
value is rendered again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from switchyard.core.models import RunStep
from switchyard.settings import Settings
from switchyard.workflows.budget import DEFAULT_BUDGET, Budget
from switchyard.workflows.templates import TemplateError, render_items, render_value

RenderKey = tuple[str, str, int, int, tuple[tuple[str, str, int], ...]]


@dataclass(frozen=True)
class WorkflowLimits:
    """What a run may make the workers do: the budget of each render, the items of a `for_each` step, and how
    many of them run at once when the step gives no `max_parallel`."""

    budget: Budget = DEFAULT_BUDGET
    max_items: int = 10_000
    default_max_parallel: int = 100
    # Seconds of rendering in one advance (see runner.py): the rest goes to a next advance.
    advance_render_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkflowLimits:
        """The limits of the SWITCHYARD_WORKFLOW_* settings."""
        return cls(
            budget=Budget(
                max_iterations=settings.workflow_template_max_iterations,
                max_chars=settings.workflow_template_max_chars,
                timeout_s=settings.workflow_template_timeout_s,
            ),
            max_items=settings.workflow_max_items,
            default_max_parallel=settings.workflow_default_max_parallel,
            advance_render_s=min(settings.workflow_advance_render_s, settings.requeue_after_s / 2),
        )


class Pending(Exception):
    """The value is not rendered yet: it will be, outside the lock, before the next pass."""


@dataclass(frozen=True)
class RenderJob:
    """One value to render: a template (or a dict or list of them) and the context it sees."""

    key: RenderKey
    value: Any
    context: Mapping[str, Any]
    max_items: int | None = None  # set for `for_each`: its expression must give at most this many items


def fingerprint(steps: Mapping[str, RunStep], ids: Iterable[str]) -> tuple[tuple[str, str, int], ...]:
    """What the given steps' part of a context depends on: their status and generation."""
    return tuple(sorted((sid, steps[sid].status, steps[sid].generation) for sid in ids if sid in steps))


@dataclass
class RenderPass:
    """The rendered values one locked pass of an advance may use, and the jobs it found missing."""

    rendered: Mapping[RenderKey, Any] = field(default_factory=dict)
    jobs: dict[RenderKey, RenderJob] = field(default_factory=dict)

    def value(self, key: RenderKey, value: Any, context: Mapping[str, Any], *, max_items: int | None = None) -> Any:
        """The rendered value; TemplateError if it failed to render; Pending (the job recorded) if not rendered."""
        if key in self.rendered:
            result = self.rendered[key]
            if isinstance(result, TemplateError):
                raise result
            return result
        self.jobs.setdefault(key, RenderJob(key, value, context, max_items))
        raise Pending


def render_jobs(jobs: Iterable[RenderJob], limits: WorkflowLimits, until: float | None = None) -> dict[RenderKey, Any]:
    """Render each job under the budget (no lock, no transaction held): its value, or the TemplateError. Past
    `until` (a `time.monotonic()` value) no further job is started: those left out stay pending."""
    out: dict[RenderKey, Any] = {}
    for job in jobs:
        if until is not None and out and time.monotonic() > until:
            break
        try:
            if job.max_items is not None:
                out[job.key] = render_items(job.value, job.context, job.max_items, limits.budget)
            else:
                out[job.key] = render_value(job.value, job.context, limits.budget)
        except TemplateError as exc:
            out[job.key] = exc
    return out
