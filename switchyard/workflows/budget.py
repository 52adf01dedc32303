"""What one template render may spend: loop iterations and calls, characters built, and wall time.

A workflow's templates are written by a tenant and run in a shared worker, so each render has a budget
(`Budget`, from the SWITCHYARD_WORKFLOW_TEMPLATE_* settings). The sandbox (`templates.py`) reports to the render's
`Meter` at every loop iteration, call and intercepted operator, and asks it before running anything that can
build a large value in one step (`"a".ljust(n)`, `"{:>n}".format(x)`, `s.replace(a, b)`, `l * n`, `a ~ b`,
`|join`, ...). Such an operation is refused from its arguments, before it allocates: measuring afterwards would
already have spent the memory and the time. The clock is read at every metered point, so a render stops within
one metered step of its deadline; between two such points the work is bounded by the size limits.
"""

from __future__ import annotations

import functools
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment
from jinja2.nodes import EvalContext

# int results above this many bits are refused (`**`, `*`): about 30,000 decimal digits.
MAX_INT_BITS = 100_000
# `sum` with a list or string start concatenates, copying its result at every item (quadratic): kept short.
MAX_CONCATENATING_SUM = 1_000


@dataclass(frozen=True)
class Budget:
    """The limits of one render (one `render_value` call: a step's `when`, `for_each`, one item's input, or the
    run's output)."""

    # Loop iterations plus calls (functions, methods, macros), and the longest range or list a template builds.
    max_iterations: int = 100_000
    # The longest string a template builds, and the rendered value's total size in characters.
    max_chars: int = 2_000_000
    timeout_s: float = 1.0


DEFAULT_BUDGET = Budget()


class BudgetExceeded(Exception):
    """A render went past its budget; the message names the limit and the setting that raises it."""


_ITERATIONS = "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_ITERATIONS"
_CHARS = "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_CHARS"
_TIMEOUT = "SWITCHYARD_WORKFLOW_TEMPLATE_TIMEOUT_S"

# printf-style conversion specifiers: `%(name)-30s`, `%*d`, `%.5f`; the width and precision are checked.
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")
_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill"})
# Methods whose result size cannot be told from their arguments cheaply; a template has no need of them.
_REFUSED_METHODS = frozenset({"translate", "maketrans", "to_bytes"})


class Meter:
    """The budget of one render as it is spent."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.deadline = time.monotonic() + budget.timeout_s
        self.steps_left = budget.max_iterations
        self.chars = 0  # characters of output so far

    # --- spending ---------------------------------------------------------------------------------------------

    def tick(self, n: int = 1) -> None:
        """Count n iterations or calls, and look at the clock."""
        self.steps_left -= n
        if self.steps_left < 0:
            raise BudgetExceeded(
                f"the template ran more than {self.budget.max_iterations} loop iterations and calls ({_ITERATIONS})"
            )
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"the template took longer than {self.budget.timeout_s:g} s ({_TIMEOUT})")

    def emit(self, n: int) -> None:
        """Count n characters of the render's output."""
        self.chars += n
        if self.chars > self.budget.max_chars:
            raise BudgetExceeded(f"the template's output is longer than {self.budget.max_chars} characters ({_CHARS})")
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"the template took longer than {self.budget.timeout_s:g} s ({_TIMEOUT})")

    def chars_ok(self, n: int, what: str) -> None:
        """Refuse to build a string (or bytes) of n characters when it is over the limit."""
        if n > self.budget.max_chars:
            raise BudgetExceeded(f"{what} would be longer than {self.budget.max_chars} characters ({_CHARS})")

    def items_ok(self, n: int, what: str) -> None:
        """Refuse to build a sequence of n items when it is over the limit."""
        if n > self.budget.max_iterations:
            raise BudgetExceeded(f"{what} would have more than {self.budget.max_iterations} items ({_ITERATIONS})")

    def size(self, value: Any) -> int:
        """The value's size in characters (strings by length, other items by one), stopping as soon as it is
        over the limit: a list can hold the same long string many times, so this is checked before the value
        is turned into text."""
        limit = self.budget.max_chars
        total = 0
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str | bytes):
                total += len(item)
            elif isinstance(item, Mapping):
                total += len(item)
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list | tuple | set | frozenset):
                total += len(item)
                stack.extend(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                total += item.bit_length() // 3 + 1
            else:
                total += 1
            if total > limit:
                raise BudgetExceeded(f"a value of more than {limit} characters ({_CHARS})")
        return total

    # --- the sandbox's hooks ----------------------------------------------------------------------------------

    def loop(self, iterable: Any) -> Iterator[Any]:
        """A loop's items, each one counted."""
        for item in iterable:
            self.steps_left -= 1
            if self.steps_left < 0 or time.monotonic() > self.deadline:
                self.tick(0)  # raises, naming the limit
            yield item

    def range(self, *args: int) -> range:
        """`range(...)`, refused when longer than the iterations a render may run."""
        rng = range(*args)
        self.items_ok(len(rng), f"range{args}")
        return rng

    def concat(self, parts: Iterable[Any]) -> str:
        """`a ~ b ~ ...` as text, checked as it grows."""
        out: list[str] = []
        total = 0
        for part in parts:
            text = str(part)
            total += len(text)
            self.chars_ok(total, "the result of '~'")
            out.append(text)
        return "".join(out)

    def binop(self, operator: str, left: Any, right: Any) -> None:
        """Check `*`, `**`, `+` and `%` before Python computes them."""
        self.tick()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(times, int) and not isinstance(times, bool):
                    if isinstance(seq, str | bytes):
                        self.chars_ok(len(seq) * times, "the result of '*'")
                    elif isinstance(seq, list | tuple):
                        self.items_ok(len(seq) * times, "the result of '*'")
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise BudgetExceeded("the result of '*' would be too large a number")
        elif operator == "**":
            if _is_int(left) and _is_int(right) and right > 0 and left.bit_length() * right > MAX_INT_BITS:
                raise BudgetExceeded("the result of '**' would be too large a number")
        elif operator == "+":
            if isinstance(left, str | bytes) and isinstance(right, str | bytes):
                self.chars_ok(len(left) + len(right), "the result of '+'")
            elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
                self.items_ok(len(left) + len(right), "the result of '+'")
        elif operator == "%" and isinstance(left, str | bytes):
            self._percent(left, right)

    def _percent(self, template: str | bytes, args: Any) -> None:
        text = template.decode("latin-1") if isinstance(template, bytes) else template
        values = args if isinstance(args, tuple) else (args,)
        for match in _PERCENT_SPEC.finditer(text):
            for part in match.groups():
                if part == "*":
                    self._no_large_int(values, "a '%' width or precision")
                elif part is not None:
                    self.chars_ok(int(part), "a '%' width or precision")

    def format_call(self, template: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """`str.format`: a width or precision in a field, or a nested field that could supply one, is checked."""
        self.tick()
        for _, _, spec, _ in string.Formatter().parse(template):
            if not spec:
                continue
            if "{" in spec:
                self._no_large_int((*args, *kwargs.values()), "a format width or precision")
            for digits in _DIGITS.findall(spec):
                self.chars_ok(int(digits), "a format width or precision")

    def _no_large_int(self, values: Iterable[Any], what: str) -> None:
        for value in values:
            if _is_int(value):
                self.chars_ok(value, what)
            elif isinstance(value, Mapping):
                self._no_large_int(value.values(), what)

    def call(self, obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Every call is counted; methods that can build a long string from short arguments are checked."""
        self.tick()
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if name in _REFUSED_METHODS and owner is not None:
            raise BudgetExceeded(f"'{name}' is not available in templates")
        if not isinstance(owner, str | bytes):
            return
        if name in _WIDTH_METHODS and args and _is_int(args[0]):
            self.chars_ok(args[0], f"the result of '{name}'")
        elif name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            if _is_int(tabsize):
                tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
                self.chars_ok(len(owner) + tabs * tabsize, "the result of 'expandtabs'")
        elif name == "replace" and len(args) >= 2:
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            self.chars_ok(replaced_length(owner, args[0], args[1], count), "the result of 'replace'")
        elif name == "join" and args and isinstance(args[0], list | tuple):
            parts = args[0]
            total = sum(len(p) for p in parts if isinstance(p, str | bytes)) + len(owner) * max(0, len(parts) - 1)
            self.chars_ok(total, "the result of 'join'")


def replaced_length(text: Any, old: Any, new: Any, count: Any = -1) -> int:
    """The length of text.replace(old, new, count), worked out without building it."""
    if not isinstance(text, str | bytes) or not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return 0
    if type(old) is not type(text) or type(new) is not type(text):
        return 0
    occurrences = len(text) + 1 if not old else text.count(old)  # type: ignore[arg-type]
    if _is_int(count) and count >= 0:
        occurrences = min(occurrences, count)
    return len(text) + occurrences * (len(new) - len(old))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_CURRENT: ContextVar[Meter | None] = ContextVar("switchyard_template_meter", default=None)


def meter() -> Meter:
    """The meter of the render in progress (a fresh default one outside any render)."""
    current = _CURRENT.get()
    return current if current is not None else Meter(DEFAULT_BUDGET)


def start(budget: Budget) -> tuple[Meter, Token[Meter | None] | None]:
    """Begin a render under `budget` (a render nested in another shares its meter); pass the token to `stop`.
    Not a context manager: this runs for every render, and a generator-based one costs a few microseconds."""
    current = _CURRENT.get()
    if current is not None:
        return current, None
    m = Meter(budget)
    return m, _CURRENT.set(m)


def stop(token: Token[Meter | None] | None) -> None:
    """End the render `start` began."""
    if token is not None:
        _CURRENT.reset(token)


# --- filters ----------------------------------------------------------------------------------------------------


def _data_args(args: tuple[Any, ...]) -> Iterator[Any]:
    """The data a filter was given (Jinja passes an eval context or the environment first to some filters)."""
    for arg in args:
        if not isinstance(arg, EvalContext | Environment):
            yield arg


def guarded_filters(filters: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Wrappers for the filters that can build a result much larger than their input (or turn a value holding
    the same long string many times into text); each checks before calling the original."""

    def wrap(name: str, check: Callable[[Meter, list[Any], Mapping[str, Any]], None]) -> Callable[..., Any]:
        original = filters[name]

        @functools.wraps(original)  # keeps Jinja's pass_eval_context / pass_environment marker
        def guarded(*args: Any, **kwargs: Any) -> Any:
            check(meter(), list(_data_args(args)), kwargs)
            return original(*args, **kwargs)

        return guarded

    def sized(m: Meter, args: list[Any], kwargs: Mapping[str, Any]) -> None:
        if args:
            m.size(args[0])

    def joined(m: Meter, args: list[Any], kwargs: Mapping[str, Any]) -> None:
        if args:
            sep = args[1] if len(args) > 1 else kwargs.get("d", "")
            value = args[0]
            n = len(value) if isinstance(value, list | tuple) else 0
            m.chars_ok(m.size(value) + len(str(sep)) * n, "the result of 'join'")

    def replaced(m: Meter, args: list[Any], kwargs: Mapping[str, Any]) -> None:
        if len(args) >= 3:
            count = args[3] if len(args) > 3 else kwargs.get("count")
            m.chars_ok(
                replaced_length(str(args[0]), args[1], args[2], -1 if count is None else count),
                "the result of 'replace'",
            )

    def counted(m: Meter, args: list[Any], kwargs: Mapping[str, Any]) -> None:
        if len(args) >= 2 and _is_int(args[1]):
            m.items_ok(args[1], "the result of 'batch' or 'slice'")

    def summed(m: Meter, args: list[Any], kwargs: Mapping[str, Any]) -> None:
        start = args[2] if len(args) > 2 else kwargs.get("start", 0)
        if isinstance(start, str | list | tuple) and args:
            m.size(args[0])
            items = args[0]
            if isinstance(items, list | tuple) and len(items) > MAX_CONCATENATING_SUM:
                raise BudgetExceeded(f"'sum' concatenates at most {MAX_CONCATENATING_SUM} items")

    checks: dict[str, Callable[[Meter, list[Any], Mapping[str, Any]], None]] = {
        "join": joined,
        "replace": replaced,
        "string": sized,
        "tojson": sized,
        "list": sized,
        "batch": counted,
        "slice": counted,
        "sum": summed,
    }
    return {name: wrap(name, check) for name, check in checks.items() if name in filters}
