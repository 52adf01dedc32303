"""Run the benchmarks of DESIGN.md "Performance targets", each against a baseline measured in the same run.

    .venv/bin/python -m bench.run [--only NAME[,NAME...]]... [--quick] [--profile] [--set NAME.SIZE=VALUE]...
    .venv/bin/python -m bench.run --list

Prints a table of ratios (never asserts on timings) and writes bench/results/latest.json. The benchmarks are
the modules of bench/benchmarks/ (`--list` shows them with their targets); each has its own fresh Postgres
database and Redis DB (flushed before and after) and stops every process it started, also on failure.
`--quick` uses small sizes (a smoke test, not figures); `--set in_flight.n=2000` changes one size of one
benchmark. `--profile` also samples the API and the worker with py-spy (that costs CPU on a small machine: do
not read the ratios of a profiled run as results).

Postgres and Redis: SWITCHYARD_BENCH_PG (admin URL) and SWITCHYARD_BENCH_REDIS (server URL, no DB number).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import benchmarks
from bench.harness import BenchError, log, machine_busy_pct
from bench.registry import Benchmark, Options, Result
from bench.report import git_state, machine, print_table, write_results
from tests.processes import ROOT


def _interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], dict[str, str]]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME[,NAME...]",
        help="run only these (repeatable, or comma-separated): " + ", ".join(benchmarks.NAMES),
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs, for a smoke test")
    parser.add_argument("--profile", action="store_true", help="py-spy the API and the worker (skews ratios)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME.SIZE=VALUE",
        help="override one size of one benchmark, e.g. in_flight.n=2000 (see each module's Sizes)",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    names = [x.strip() for item in (args.only or [",".join(benchmarks.NAMES)]) for x in item.split(",") if x.strip()]
    unknown = [x for x in names if x not in benchmarks.NAMES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(benchmarks.NAMES)}")
    overrides: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key or key.split(".", 1)[0] not in benchmarks.NAMES:
            parser.error(f"--set {item}: expected NAME.SIZE=VALUE with NAME one of {', '.join(benchmarks.NAMES)}")
        overrides[key.strip()] = value.strip()
    return args, list(dict.fromkeys(names)), overrides


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks one after the other; 1 if any failed to run."""
    args, names, overrides = _parse(argv)
    if args.list:
        for name in benchmarks.NAMES:
            try:
                print(f"{name:16} {benchmarks.get(name).summary}")
            except ImportError as exc:
                print(f"{name:16} (cannot import: {exc})")
        return 0

    # A SIGTERM must still run the finally blocks that stop processes and drop databases.
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.monotonic()
    # Another engineer may change the product while this runs: record what was measured, before and after.
    code_before = git_state()
    dirty = code_before.get("uncommitted_product_files")
    log(f"measuring switchyard at {code_before.get('head')}" + (f" + uncommitted changes to {dirty}" if dirty else ""))
    results: dict[str, Result] = {}
    loaded: dict[str, Benchmark] = {}
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp_name:
        opts = Options(tmp=Path(tmp_name), quick=args.quick, profile=args.profile, overrides=overrides)
        for name in names:
            busy = machine_busy_pct()
            log(f"{name}: starting (machine {busy:.0f}% busy before it)")
            if busy > 15:
                log("  warning: something else is using the CPU; the ratios of this run are skewed")
            t0 = time.monotonic()
            try:
                loaded[name] = benchmarks.get(name)
                results[name] = loaded[name].run(opts)
            except (BenchError, ImportError) as exc:
                results[name] = {"error": str(exc) or repr(exc)}
                log(f"{name}: FAILED: {exc!r}")
            results[name]["machine_busy_before_pct"] = round(busy, 1)
            log(f"{name}: done in {time.monotonic() - t0:.0f}s")
    print_table(results, loaded)
    info = machine()
    if info.get("git") != code_before:
        log("  warning: the product code changed during the run; re-run for figures of one version")
    out = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "profiled": args.profile,
        "overrides": overrides,
        "duration_s": round(time.monotonic() - started, 1),
        "code_at_start": code_before,
        "code_changed_during_run": info.get("git") != code_before,
        "machine": info,
        "results": results,
    }
    path = write_results(out)
    print(f"\nwrote {path.relative_to(ROOT)} ({out['duration_s']:.0f}s)")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
