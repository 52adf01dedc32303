"""What a benchmark is to the runner: a name, a function that measures, and how its result is printed.

A benchmark is one module in `bench/benchmarks/` that defines `BENCHMARK = Benchmark(...)`, listed once in
`bench.benchmarks.NAMES`. Its sizes (N, rounds, seconds...) are a frozen dataclass with a full and a quick
instance; `Options.sizes` picks one and applies `--set NAME.FIELD=VALUE` from the command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.harness import BenchError

# One line of the summary table: (label, ours, baseline, ratio, target, verdict), or (label, text).
Row = tuple[str, ...]
Result = dict[str, Any]
S = TypeVar("S")


@dataclass(frozen=True)
class Options:
    """How the runner asks a benchmark to run: where to put its files, quick or full, profiled or not."""

    tmp: Path
    quick: bool = False
    profile: bool = False
    # "in_flight.n" -> "600", from --set; applied by `sizes`.
    overrides: Mapping[str, str] = field(default_factory=dict)

    def sizes(self, name: str, full: S, quick: S) -> S:
        """The benchmark's sizes: `quick` with --quick, else `full`, with this benchmark's --set values applied."""
        chosen = quick if self.quick else full
        mine = {k.split(".", 1)[1]: v for k, v in self.overrides.items() if k.split(".", 1)[0] == name}
        if not mine:
            return chosen
        assert dataclasses.is_dataclass(chosen)
        assert not isinstance(chosen, type)
        known = {f.name for f in dataclasses.fields(chosen)}
        unknown = sorted(set(mine) - known)
        if unknown:
            raise BenchError(f"--set: {name} has no size {', '.join(unknown)}; it has {', '.join(sorted(known))}")
        # Each value takes the type of the size it replaces (int, float or str).
        try:
            changes = {k: type(getattr(chosen, k))(v) for k, v in mine.items()}
        except ValueError as exc:
            raise BenchError(f"--set {name}: {exc}") from exc
        return dataclasses.replace(chosen, **changes)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: `run` measures ours and its baseline(s) and returns the result (at least ours, baseline,
    unit, ratio, target, target_kind), `rows` turns it into summary-table lines, `details` prints what else a
    reader needs under the table."""

    name: str
    summary: str
    run: Callable[[Options], Result]
    rows: Callable[[str, Result], list[Row]] | None = None
    details: Callable[[Result], None] | None = None


def verdict(res: Result) -> str:
    """met / NOT met against the result's own target."""
    if res.get("target") is None:
        return "no target: report it"
    ok = res["ratio"] >= res["target"] if res["target_kind"] == ">=" else res["ratio"] <= res["target"]
    return "met" if ok else "NOT met"


def standard_row(label: str, res: Result, *, baseline_note: str = "", decimals: int = 0) -> Row:
    """The usual line: ours and baseline in the result's unit, the ratio, the target, the verdict."""
    unit = res["unit"]
    target = f"{res['target_kind']}{res['target']:g}x" if res.get("target") is not None else "-"
    return (
        label,
        f"{res['ours']:.{decimals}f} {unit}",
        f"{res['baseline']:.{decimals}f} {unit}{baseline_note}",
        f"{res['ratio']:.2f}x",
        target,
        verdict(res),
    )
