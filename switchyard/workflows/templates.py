"""Sandboxed Jinja2 templates over a workflow run: `input`, `steps.<id>.output` and `item`.

A string that is exactly one `{{ expression }}` (whitespace around it allowed, nothing else) evaluates to the
expression's own JSON value: a list stays a list, a number a number, an object an object. Any other string renders
as text; a non-string value printed inside text appears in its JSON form (`true`, `null`, `[1, 2]`).

Templates run in Jinja's immutable sandbox (no `_`-prefixed attributes, no mutating methods, no file loading), with
StrictUndefined (a missing variable, key or attribute is an error, not an empty string), no autoescaping and a small
set of built-in filters. A data key wins over a dict's method of the same name: `input.items` is the input's
`items`, not `dict.items`.

Every render runs under a `Budget` (see `budget.py`): loop iterations and calls, the length of any string or list it
builds, and wall time. A template that would go past one fails with a TemplateError naming the limit; nothing large
is built first and measured after.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Set, Sized
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.environment import TemplateExpression
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from switchyard.workflows.budget import (
    DEFAULT_BUDGET,
    Budget,
    BudgetExceeded,
    Meter,
    guarded_filters,
    meter,
    start,
    stop,
)

# The names a template can see; everything else is an unknown variable.
CONTEXT_NAMES = frozenset({"input", "steps", "item"})

# Jinja's built-in filters that templates may use: value shaping, nothing that formats markup or loads anything.
SAFE_FILTERS = frozenset(
    {
        "abs",
        "batch",
        "capitalize",
        "count",
        "d",
        "default",
        "dictsort",
        "first",
        "float",
        "groupby",
        "int",
        "items",
        "join",
        "last",
        "length",
        "list",
        "lower",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "replace",
        "reverse",
        "round",
        "select",
        "selectattr",
        "slice",
        "sort",
        "string",
        "sum",
        "title",
        "tojson",
        "trim",
        "truncate",
        "unique",
        "upper",
        "wordcount",
    }
)

# `{{ ... }}` alone, with Jinja's whitespace-control markers; the AST check decides whether it is one expression.
_SINGLE = re.compile(r"^\s*\{\{[-+]?(?P<expr>.*?)[-+]?\}\}\s*$", re.DOTALL)
_FALSE_TEXT = frozenset({"", "false", "0", "null", "none"})


class TemplateError(Exception):
    """A template failed to compile or to evaluate; the message names the template text."""

    def __init__(self, message: str, *, template: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.template = template


def _finalize(value: Any) -> Any:
    """How a value printed inside text reads: JSON for objects, lists, booleans and null."""
    if value is None or isinstance(value, bool | dict | list | tuple):
        meter().size(value)  # before json.dumps builds it: a list can hold one long string many times
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


# The filter every loop's iterable goes through; a template may name it too, to no effect but counting.
_LOOP_FILTER = "_metered_loop"


class _Metered(NodeTransformer):
    """Rewrites a template's tree so that what can repeat or grow goes through the render's meter: every loop's
    iterable counts its iterations, and `~` (concatenation) checks the length it builds."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        # A filter compiles to a direct call (a Call node would go through the sandbox's call checks).
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("metered_concat"), list(node.nodes), [], None, None)


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox with the budget's hooks: operators, calls and loops are metered, str methods that can grow
    a string are checked before they run, and data keys come before a dict's methods."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        return super()._generate(_Metered().visit(source), *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `input.items` is the data's `items` when there is one; the method only when there is not.
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        meter().binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        meter().call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        # `"{:>30000000}".format(1)`: the width and precision in each field are checked before formatting.
        template = value.__self__

        def checked(*args: Any, **kwargs: Any) -> Any:
            meter().format_call(template, args, kwargs)
            return wrapped(*args, **kwargs)

        return checked

    def metered_concat(self, *parts: Any) -> str:
        """`a ~ b`: the parts' text, refused if it would be longer than the budget allows."""
        return meter().concat(parts)


def _make_env() -> _Environment:
    env = _Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    filters = {name: f for name, f in env.filters.items() if name in SAFE_FILTERS}
    env.filters = {**filters, **guarded_filters(filters), _LOOP_FILTER: _metered_loop}
    env.globals = {"range": _range, "dict": dict}
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": False}
    return env


def _metered_loop(iterable: Any) -> Iterator[Any]:
    """A loop's iterable, counted one iteration at a time against the render's budget."""
    return meter().loop(iterable)


def _range(*args: int) -> range:
    """`range`, no longer than the budget's iterations (its items may become a list or a loop)."""
    return meter().range(*args)


_ENV = _make_env()


@dataclass(frozen=True)
class _Analysis:
    references: frozenset[str]
    dynamic_steps: bool
    variables: frozenset[str]
    single: str | None  # the expression's source when the template is exactly one `{{ expression }}`
    literal: bool  # plain text without any template syntax


def _short(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


@lru_cache(maxsize=4096)
def _template(text: str) -> jinja2.Template:
    """The compiled template; raises jinja2.TemplateSyntaxError (including unknown filters)."""
    return _ENV.from_string(text)


@lru_cache(maxsize=4096)
def _expression(source: str) -> TemplateExpression:
    return _ENV.compile_expression(source, undefined_to_none=False)


def _is_steps(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "steps" and node.ctx == "load"


@lru_cache(maxsize=4096)
def _analyse(text: str) -> _Analysis:
    """What a template refers to; raises jinja2.TemplateSyntaxError if it does not parse."""
    ast = _ENV.parse(text)
    covered: set[int] = set()
    refs: set[str] = set()
    for attr in ast.find_all(nodes.Getattr):
        if _is_steps(attr.node):
            refs.add(attr.attr)
            covered.add(id(attr.node))
    for item in ast.find_all(nodes.Getitem):
        if _is_steps(item.node) and isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str):
            refs.add(item.arg.value)
            covered.add(id(item.node))
    variables = frozenset(meta.find_undeclared_variables(ast))
    steps_global = "steps" in variables
    dynamic = steps_global and any(
        n.name == "steps" and n.ctx == "load" and id(n) not in covered for n in ast.find_all(nodes.Name)
    )
    return _Analysis(
        references=frozenset(refs) if steps_global else frozenset(),
        dynamic_steps=dynamic,
        variables=variables,
        single=_single_source(text, ast),
        literal=all(
            isinstance(out, nodes.Output) and all(isinstance(n, nodes.TemplateData) for n in out.nodes)
            for out in ast.body
        ),
    )


def _single_source(text: str, ast: nodes.Template) -> str | None:
    match = _SINGLE.match(text)
    if match is None or len(ast.body) != 1 or not isinstance(ast.body[0], nodes.Output):
        return None
    parts = [n for n in ast.body[0].nodes if not (isinstance(n, nodes.TemplateData) and not n.data.strip())]
    if len(parts) != 1 or isinstance(parts[0], nodes.TemplateData):
        return None
    return match.group("expr")


def _analysis_or_none(text: str) -> _Analysis | None:
    try:
        return _analyse(text)
    except (jinja2.TemplateError, RecursionError):
        return None


# --- inspection -------------------------------------------------------------------------------------------------


def compile_check(text: str) -> str | None:
    """None if the template compiles; else the problem (syntax error, unknown filter, include/import/extends)."""
    try:
        _template(text)
        ast = _ENV.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        where = f" (line {exc.lineno})" if exc.lineno and "\n" in text else ""
        return f"{exc.message or exc}{where}"
    except jinja2.TemplateError as exc:
        return str(exc)
    except RecursionError:
        return "nested too deeply"
    if any(True for _ in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport))):
        return "templates cannot extend, include or import other templates"
    if (single := _single_source(text, ast)) is not None:
        try:
            _expression(single)
        except jinja2.TemplateError as exc:
            return str(exc)
    return None


def references(text: str) -> set[str]:
    """The step ids the template names as `steps.<id>` or `steps['<id>']` (empty if it does not parse)."""
    analysis = _analysis_or_none(text)
    return set(analysis.references) if analysis else set()


def dynamic_step_access(text: str) -> bool:
    """True if the template uses `steps` other than with a literal id (`steps[name]`, `steps | length`, ...)."""
    analysis = _analysis_or_none(text)
    return bool(analysis and analysis.dynamic_steps)


def variables(text: str) -> set[str]:
    """The top-level names the template looks up in its context (loop variables and `set` names excluded)."""
    analysis = _analysis_or_none(text)
    return set(analysis.variables) if analysis else set()


def uses_item(text: str) -> bool:
    """True if the template reads `item` from its context (a loop variable named item does not count)."""
    return "item" in variables(text)


def is_single_expression(text: str) -> bool:
    """True if the string is exactly one `{{ expression }}` and so evaluates to a JSON value, not text."""
    analysis = _analysis_or_none(text)
    return bool(analysis and analysis.single is not None)


def is_literal(text: str) -> bool:
    """True if the string has no template syntax at all and renders as itself."""
    analysis = _analysis_or_none(text)
    return bool(analysis and analysis.literal)


# --- rendering --------------------------------------------------------------------------------------------------


def _key(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    return str(key)


def _plain(value: Any, text: str, m: Meter) -> Any:
    """The expression's result as plain JSON-like Python: dict, list, str, int, float, bool or None; its size
    counts against the render's budget as it is copied."""
    if isinstance(value, Undefined):
        try:
            str(value)  # StrictUndefined raises its own message (undefined name, unsafe attribute) here
        except Exception as exc:
            raise TemplateError(f"template {_short(text)}: {exc}", template=text) from exc
        raise TemplateError(f"template {_short(text)}: undefined value", template=text)
    if value is None or isinstance(value, bool):
        m.emit(1)
        return value
    if isinstance(value, int | float):
        m.emit(1)
        return value
    if isinstance(value, str):
        m.emit(len(value))
        return str(value)  # a Markup (from tojson) becomes a plain str
    if isinstance(value, Mapping):
        m.emit(len(value))
        return {_key(k): _plain(v, text, m) for k, v in value.items()}
    if isinstance(value, list | tuple | range | Set | Iterator):
        out = []
        for v in value:
            m.emit(1)
            out.append(_plain(v, text, m))
        return out
    raise TemplateError(
        f"template {_short(text)}: evaluates to a {type(value).__name__}, which is not a JSON value", template=text
    )


def _evaluate(text: str, context: Mapping[str, Any], m: Meter, max_items: int | None = None) -> Any:
    try:
        analysis = _analyse(text)
        if analysis.literal:
            m.emit(len(text))
            return text
        if analysis.single is not None:
            value = _expression(analysis.single)(dict(context))
            if max_items is not None and isinstance(value, Sized) and len(value) > max_items:
                # Refused before it is copied: `range(100000)|list * 10` never becomes a million items.
                raise TemplateError(
                    f"for_each gave {len(value)} items; a step takes at most {max_items} "
                    "(SWITCHYARD_WORKFLOW_MAX_ITEMS)",
                    template=text,
                )
            return _plain(value, text, m)
        out: list[str] = []
        for chunk in _template(text).generate(dict(context)):
            m.emit(len(chunk))
            out.append(chunk)
        return "".join(out)
    except TemplateError:
        raise
    except BudgetExceeded as exc:
        raise TemplateError(f"template {_short(text)} is over its budget: {exc}", template=text) from None
    except RecursionError:
        raise TemplateError(f"template {_short(text)}: nested too deeply", template=text) from None
    except MemoryError:  # pragma: no cover - the budget's checks come first
        raise TemplateError(f"template {_short(text)}: out of memory", template=text) from None
    except Exception as exc:  # undefined names, attribute and type errors, security errors, syntax errors
        raise TemplateError(f"template {_short(text)}: {exc}", template=text) from exc


def _walk(value: Any, context: Mapping[str, Any], m: Meter) -> Any:
    if isinstance(value, str):
        return _evaluate(value, context, m)
    if isinstance(value, dict):
        return {k: _walk(v, context, m) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, context, m) for v in value]
    return value


def render_value(value: Any, context: Mapping[str, Any], budget: Budget = DEFAULT_BUDGET) -> Any:
    """Render every string in `value` (walking dicts and lists; keys are not templates) against the context,
    all of it under one budget; over it, a TemplateError names the limit."""
    m, token = start(budget)
    try:
        return _walk(value, context, m)
    finally:
        stop(token)


def render_items(text: str, context: Mapping[str, Any], max_items: int, budget: Budget = DEFAULT_BUDGET) -> Any:
    """A `for_each` expression's value; more than `max_items` items is a TemplateError (checked before the
    value is copied)."""
    m, token = start(budget)
    try:
        return _evaluate(text, context, m, max_items)
    finally:
        stop(token)


def truthy(value: Any) -> bool:
    """A `when` result: a bool is itself; text "", "false", "0", "null" and "none" (any case) are false."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_TEXT
    return bool(value)
