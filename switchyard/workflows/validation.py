"""A workflow spec checked whole: its graph, models, templates and step inputs, every problem named at once.

Decisions:

* Dependencies. A step's parents are its `depends_on` plus the steps its own templates (`input`, `when`,
  `for_each`) refer to as `steps.<id>` or `steps['<id>']`: a reference to a known step implies the dependency.
  So "a reference to a step that is not upstream" can only arise two ways, and both are reported: the step does
  not exist (`unknown step`), or the implied edge closes a cycle (reported with the cycle). A step referring to its
  own output, or depending on itself, is a problem of its own. The run `output` may refer to any step.
* `steps` may only be used with a literal id; `steps[name]` or `steps | length` could reach any step and so cannot
  be ordered, and is refused. Templates may read only `input`, `steps` and `item`.
* Cycles are found on explicit + implied edges. Each strongly connected group of steps is reported once, as one
  concrete cycle starting at its first step in spec order: "cycle: a -> b -> c -> a (each step depends on the
  next)", with param `steps[i].depends_on` of that first step.
* `item` exists only while a step with `for_each` renders its `input`: using it in `when`, in `for_each` itself,
  in a step without `for_each` or in the run `output` is a problem. `for_each` must be one `{{ expression }}`
  (it must yield a list); `max_parallel` needs `for_each`.
* Step inputs are checked with the tasks API's models (`INPUT_MODELS`). Templated strings stand in for values the
  check cannot know: a single `{{ expression }}` is replaced by None (it may become any JSON type) and a text
  template is kept as its text; errors located at or under a templated string are ignored. Everything written
  literally (field names, required fields, non-template values and their bounds) is checked as the tasks API
  would; the rendered input is checked again when the step's task is created.
"""

from __future__ import annotations

import heapq
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from switchyard.core.errors import InvalidRequest
from switchyard.core.validation import error_message
from switchyard.tasks.schemas import INPUT_MODELS
from switchyard.workflows import templates
from switchyard.workflows.spec import StepSpec, WorkflowSpec

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTEXT_HELP = "templates see input, steps.<id>.output and item"
_STEP_PARAM = re.compile(r"^steps\[(\d+)\]")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: the field, as the client wrote it, and what is wrong with it."""

    param: str
    message: str
    # The id of the step the param is in, so that a message names it as well as its index.
    step: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        where = f"{self.param} (step '{self.step}')" if self.step else self.param
        return f"{where}: {self.message}"


@dataclass
class Graph:
    """The steps' dependency graph: explicit `depends_on` plus the dependencies implied by references."""

    order: list[str]  # a topological order (parents first; ties broken by position in the spec)
    parents: dict[str, set[str]] = field(default_factory=dict)
    children: dict[str, set[str]] = field(default_factory=dict)


def validate_spec(spec: WorkflowSpec, models: Mapping[str, str]) -> list[Problem]:
    """Every problem with the spec; `models` maps each logical model name to its task type."""
    return _Checker(spec, models).run()[0]


def ensure_valid(spec: WorkflowSpec, models: Mapping[str, str]) -> Graph:
    """The spec's graph, or InvalidRequest listing every problem (param: the first problem's)."""
    problems, graph = _Checker(spec, models).run()
    if problems:
        raise InvalidRequest("; ".join(str(p) for p in problems), param=problems[0].param)
    return graph


# --- paths ------------------------------------------------------------------------------------------------------


def _child(param: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{param}[{key}]"
    if _IDENT.match(key):
        return f"{param}.{key}" if param else key
    return f'{param}["{key}"]'


def _strings(
    value: Any, param: str, loc: tuple[str | int, ...] = ()
) -> Iterator[tuple[str, tuple[str | int, ...], str]]:
    """Every string in a JSON-like value: (param, location, text). Dict keys are not templates."""
    if isinstance(value, str):
        yield param, loc, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, _child(param, str(k)), (*loc, str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, _child(param, i), (*loc, i))


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "list[str]"} or "[" in part)


def _data_loc(data: Any, loc: Sequence[str | int]) -> tuple[str | int, ...]:
    """A pydantic error location as a path in the data: union members' tags that are not keys are dropped."""
    out: list[str | int] = []
    node: Any = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif _is_union_tag(part):
            continue
        else:
            node = None
        out.append(part)
    return tuple(out)


# --- the checker ------------------------------------------------------------------------------------------------


class _Checker:
    def __init__(self, spec: WorkflowSpec, models: Mapping[str, str]) -> None:
        self.spec = spec
        self.models = models
        self.problems: list[Problem] = []
        self.index: dict[str, int] = {}  # step id -> position of its first definition
        for i, step in enumerate(spec.steps):
            self.index.setdefault(step.id, i)
        self.parents: dict[str, set[str]] = {sid: set() for sid in self.index}
        self.explicit: dict[str, set[str]] = {sid: set() for sid in self.index}

    def problem(self, param: str, message: str) -> None:
        match = _STEP_PARAM.match(param)
        step = self.spec.steps[int(match.group(1))].id if match else None
        self.problems.append(Problem(param, message, step))

    def run(self) -> tuple[list[Problem], Graph]:
        for i, step in enumerate(self.spec.steps):
            self.check_step(i, step)
        graph = self.check_graph()
        for param, _, text in _strings(self.spec.output, "output"):
            self.check_template(param, text, step=None, item_allowed=False)
        return self.problems, graph

    # one step

    def check_step(self, i: int, step: StepSpec) -> None:
        at = f"steps[{i}]"
        first = self.index[step.id]
        if first != i:
            self.problem(f"{at}.id", f"duplicate step id '{step.id}' (also steps[{first}])")

        model_type = self.models.get(step.model)
        if model_type is None:
            self.problem(f"{at}.model", f"unknown model '{step.model}'")
        elif model_type != step.type:
            self.problem(f"{at}.model", f"model '{step.model}' serves {model_type}, not {step.type}")

        for k, dep in enumerate(step.depends_on):
            if dep == step.id:
                self.problem(f"{at}.depends_on[{k}]", "a step cannot depend on itself")
            elif dep not in self.index:
                self.problem(f"{at}.depends_on[{k}]", f"unknown step '{dep}'")
            else:
                self.parents[step.id].add(dep)
                self.explicit[step.id].add(dep)

        for_each = step.for_each is not None
        for param, _, text in _strings(step.input, f"{at}.input"):
            self.check_template(param, text, step=step, item_allowed=for_each)
        if step.when is not None:
            self.check_template(f"{at}.when", step.when, step=step, item_allowed=False)
        if step.for_each is not None and self.check_template(
            f"{at}.for_each", step.for_each, step=step, item_allowed=False
        ):
            if not templates.is_single_expression(step.for_each):
                self.problem(f"{at}.for_each", "for_each must be a single {{ expression }} that yields a list")
        if step.max_parallel is not None and not for_each:
            self.problem(f"{at}.max_parallel", "max_parallel applies only to a step with for_each")
        pii = step.guardrails.pii if step.guardrails is not None else None
        if pii is not None and pii.mode == "reversible":
            # Nobody waits on a step's call to get the values back; restoring later would mean storing them.
            self.problem(
                f"{at}.guardrails.pii.mode",
                "reversible PII mode needs a caller waiting on the call: a step's values cannot be restored "
                "without storing them; use mask, hash or remove",
            )

        self.check_input(i, step)

    def check_template(self, param: str, text: str, *, step: StepSpec | None, item_allowed: bool) -> bool:
        """Check one template string; references to known steps become the step's parents. False if it is broken."""
        error = templates.compile_check(text)
        if error is not None:
            self.problem(param, f"bad template: {error}")
            return False
        ok = True
        for name in sorted(templates.variables(text) - templates.CONTEXT_NAMES):
            self.problem(param, f"unknown variable '{name}' ({_CONTEXT_HELP})")
            ok = False
        if templates.dynamic_step_access(text):
            self.problem(param, "steps must be referred to by a literal id: steps.<id> or steps['<id>']")
            ok = False
        if templates.uses_item(text) and not item_allowed:
            if step is None:
                self.problem(param, "item is not defined in the run output")
            elif step.for_each is None:
                self.problem(param, "item is defined only in the input of a step with for_each")
            else:
                self.problem(param, "item is defined only in the step's input")
            ok = False
        for ref in sorted(templates.references(text)):
            if ref not in self.index:
                self.problem(param, f"unknown step '{ref}'")
                ok = False
            elif step is not None and ref == step.id:
                self.problem(param, "a step cannot refer to its own output")
                ok = False
            elif step is not None:
                self.parents[step.id].add(ref)
        return ok

    def check_input(self, i: int, step: StepSpec) -> None:
        """The input against the tasks API's model for the type, templated strings standing in for any value."""
        model = INPUT_MODELS.get(step.type)
        if model is None:  # pragma: no cover - the spec's type Literal and INPUT_MODELS list the same types
            return
        templated: list[tuple[str | int, ...]] = []

        def placeholder(value: Any, loc: tuple[str | int, ...]) -> Any:
            if isinstance(value, str):
                if templates.is_single_expression(value):
                    templated.append(loc)
                    return None
                if not templates.is_literal(value):
                    templated.append(loc)
                return value
            if isinstance(value, dict):
                return {k: placeholder(v, (*loc, k)) for k, v in value.items()}
            if isinstance(value, list):
                return [placeholder(v, (*loc, j)) for j, v in enumerate(value)]
            return value

        data = placeholder(step.input, ())
        try:
            model.model_validate(data)
        except ValidationError as exc:
            seen: set[str] = set()
            for err in exc.errors():
                loc = _data_loc(data, err["loc"])
                # An unknown field is wrong whatever its value; other errors under a templated string may vanish
                # once it is rendered.
                if err["type"] != "extra_forbidden" and any(loc[: len(t)] == t for t in templated):
                    continue
                param = f"steps[{i}].input"
                for part in loc:
                    param = _child(param, part)
                line = f"{param}\0{error_message(err)}"
                if line not in seen:
                    seen.add(line)
                    self.problem(param, error_message(err))

    # the graph

    def check_graph(self) -> Graph:
        children: dict[str, set[str]] = {sid: set() for sid in self.index}
        for sid, parents in self.parents.items():
            for parent in parents:
                children[parent].add(sid)

        # Kahn's algorithm, ready steps taken in spec order.
        waiting = {sid: len(parents) for sid, parents in self.parents.items()}
        ready = [(self.index[sid], sid) for sid, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, sid = heapq.heappop(ready)
            order.append(sid)
            for child in children[sid]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, (self.index[child], child))

        if len(order) < len(self.index):
            self.report_cycles(set(self.index) - set(order), children)
        return Graph(order=order, parents=self.parents, children=children)

    def report_cycles(self, blocked: set[str], children: dict[str, set[str]]) -> None:
        """Report each group of steps that reach one another once, as one cycle through its first step."""
        done: set[str] = set()
        for sid in sorted(blocked, key=self.index.__getitem__):
            if sid in done:
                continue
            upstream = _reach(sid, self.parents, blocked)
            downstream = _reach(sid, children, blocked)
            group = (upstream & downstream) | {sid}
            done |= group
            if len(group) == 1:
                continue  # only downstream of a cycle, not on one
            path = _cycle_through(sid, self.parents, group)
            implied = [f"{a} -> {b}" for a, b in zip(path, path[1:], strict=False) if b not in self.explicit[a]]
            note = f"; {', '.join(implied)} implied by references" if implied else ""
            self.problem(
                f"steps[{self.index[sid]}].depends_on",
                f"cycle: {' -> '.join(path)} (each step depends on the next{note})",
            )


def _reach(start: str, edges: Mapping[str, set[str]], within: set[str]) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for nxt in edges[stack.pop()]:
            if nxt in within and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _cycle_through(start: str, parents: Mapping[str, set[str]], group: set[str]) -> list[str]:
    """The shortest path start -> ... -> start along "depends on" edges inside the group."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        sid = queue.popleft()
        for parent in sorted(parents[sid]):
            if parent not in group:
                continue
            if parent == start:
                path = [start]
                node = sid
                while node != start:
                    path.append(node)
                    node = came_from[node]
                path.append(start)
                path.reverse()
                # path was built backwards from the closing edge; reversed, it reads start -> ... -> start
                return path
            if parent not in came_from:
                came_from[parent] = sid
                queue.append(parent)
    return [start, start]  # pragma: no cover - a group of two or more always has a cycle through each member
