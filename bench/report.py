"""What a run records and prints: the machine and the code measured, the summary table, bench/results/latest.json."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.harness import PG_ADMIN_URL, REDIS_BASE, RESULTS_DIR, load_tool
from bench.registry import Benchmark, Result, Row, standard_row
from tests.processes import ROOT


def machine() -> dict[str, Any]:
    """Cores, RAM, CPU model, Postgres and Redis versions and settings, load tool, libraries, code."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/meminfo") as f:
            info["ram_gb"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            for name in ("synchronous_commit", "fsync", "shared_buffers", "max_connections"):
                info[f"pg_{name}"] = conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
    except psycopg.Error as exc:
        info["postgres"] = f"unreachable: {exc}"
    try:
        client = redis.Redis.from_url(REDIS_BASE)
        info["redis"] = client.info("server")["redis_version"]
        client.close()
    except redis.RedisError as exc:
        info["redis"] = f"unreachable: {exc}"
    info["load_tool"] = load_tool()
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout + ""
        info["wrk"] = out.split("[")[0].strip() or "present"
    from importlib.metadata import PackageNotFoundError, version

    info["git"] = git_state()
    packages = ("celery", "kombu", "fastapi", "uvicorn", "sqlalchemy", "psycopg", "openai", "litellm")
    info["packages"] = {}
    for name in packages:
        try:
            info["packages"][name] = version(name)
        except PackageNotFoundError:
            info["packages"][name] = None
    return info


def git_state() -> dict[str, Any]:
    """The product code measured: HEAD plus a digest of uncommitted changes under switchyard/."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        diff = subprocess.run(["git", "diff", "HEAD", "--", "switchyard"], cwd=ROOT, capture_output=True, text=True)
        files = subprocess.run(
            ["git", "diff", "HEAD", "--name-only", "--", "switchyard"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return {}
    return {
        "head": rev.stdout.strip(),
        "uncommitted_product_files": files.stdout.split(),
        "uncommitted_diff_sha1": hashlib.sha1(diff.stdout.encode()).hexdigest()[:12] if diff.stdout else None,
    }


def print_table(results: dict[str, Result], benchmarks: dict[str, Benchmark]) -> None:
    """The summary table (one or more rows per benchmark), then each benchmark's details."""
    rows: list[Row] = []
    for name, res in results.items():
        if "error" in res:
            rows.append((name, "ERROR: " + res["error"].splitlines()[0][:100]))
            continue
        bench = benchmarks[name]
        rows.extend(bench.rows(name, res) if bench.rows else [standard_row(name, res)])
    width = max([len("benchmark")] + [len(r[0]) for r in rows])
    print()
    header = f"{'benchmark':<{width}} {'ours':>16} {'baseline':>24} {'ratio':>7} {'target':>8}  verdict"
    print(header)
    print("-" * len(header))
    for row in rows:
        if len(row) == 2:
            print(f"{row[0]:<{width}} {row[1]}")
        else:
            print(f"{row[0]:<{width}} {row[1]:>16} {row[2]:>24} {row[3]:>7} {row[4]:>8}  {row[5]}")
    print()
    for name, res in results.items():
        details = benchmarks[name].details
        if "error" not in res and details is not None:
            details(res)


def write_results(out: dict[str, Any]) -> Path:
    """bench/results/latest.json (gitignored); returns its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "latest.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return path
