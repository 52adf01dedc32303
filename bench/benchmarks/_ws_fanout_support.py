"""ws_fanout's moving parts: the listener processes (bench.fanout_listeners) and the paced publishers.

Our side POSTs tasks at a fixed rate (`submit_paced`); the bare-Redis baseline publishes messages on the
relay's own schedule (`publish_paced`, `publish_schedule`); both are received by groups of listener
processes (`start_listeners`, `collect`) that time every delivery.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis

from bench.harness import CHAT_BODY, BenchError, Env, log, machine_cpu_ticks, wait_log, wait_until
from tests.processes import Process

# After the last expected event was numbered: how long a listener may go without a message before the
# missing ones count as lost, and the longest a collection may take.
WS_QUIET_S = 10.0
WS_DEADLINE_S = 300.0


def start_listeners(
    env: Env, name: str, mode_args: list[str], listeners: int, procs: int
) -> list[tuple[Process, Path]]:
    """`procs` load-generator processes sharing `listeners` between them; wait until each has subscribed all."""
    group: list[tuple[Process, Path]] = []
    for i in range(procs):
        count = listeners // procs + (1 if i < listeners % procs else 0)
        out = env.tmp / f"{name}-{i}"
        argv = [
            sys.executable,
            "-m",
            "bench.fanout_listeners",
            *mode_args,
            "--listeners",
            str(count),
            "--out",
            str(out),
        ]
        group.append((env.start(f"{name}-{i}", argv), out))
    for proc, _ in group:
        wait_log(proc, "READY", timeout=180, interval=0.1)
    return group


def ready(group: list[tuple[Process, Path]]) -> list[dict[str, Any]]:
    return [json.loads(out.with_name(out.name + ".ready.json").read_text()) for _, out in group]


def collect(group: list[tuple[Process, Path]], expected: list[int], *, keep_times: bool = False) -> dict[str, Any]:
    """Tell the listeners which ids they should all have, wait for their reports, merge them. With keep_times,
    also the time (epoch s) each event first arrived, in id order."""
    for _, out in group:
        tmp_stop = out.with_name(out.name + ".stop.tmp")
        tmp_stop.write_text(json.dumps({"expected": expected, "quiet_s": WS_QUIET_S, "deadline_s": WS_DEADLINE_S}))
        tmp_stop.rename(out.with_name(out.name + ".stop"))
    for proc, out in group:

        def reported(proc: Process = proc, out: Path = out) -> bool:
            if out.with_name(out.name + ".json").exists():
                return True
            if not proc.alive():
                raise BenchError(f"{proc.name} exited before reporting:\n{proc.log()[-3000:]}")
            return False

        wait_until(reported, timeout=WS_DEADLINE_S + 60, interval=0.1, what=f"{proc.name}'s report")
    parts = [json.loads(out.with_name(out.name + ".json").read_text()) for _, out in group]

    def read(path: Path) -> array[float]:
        values: array[float] = array("d")
        with path.open("rb") as f:
            values.frombytes(f.read())
        return values

    lat: list[float] = sorted(x for _, out in group for x in read(out.with_name(out.name + ".lat")))
    kinds = sorted({k for p in parts for k in p["by_type"]})
    by_type: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        values = sorted(x for _, out in group for x in read(out.with_name(f"{out.name}.lat.{kind}")))
        by_type[kind] = {"n": len(values), **ms_percentiles(values)}
    # Per event: the first and the last listener to get it, over all processes.
    spans: dict[str, list[float]] = {}
    for p in parts:
        for seq, (origin, first, last) in p["events"].items():
            have = spans.get(seq)
            spans[seq] = [origin, first, last] if have is None else [origin, min(have[1], first), max(have[2], last)]
    first_ms = sorted(1000 * (s[1] - s[0]) for s in spans.values())
    last_ms = sorted(1000 * (s[2] - s[0]) for s in spans.values())
    spread_ms = sorted(1000 * (s[2] - s[1]) for s in spans.values())
    first_receive = min((p["first_receive"] for p in parts if p["first_receive"]), default=0.0)
    last_receive = max((p["last_receive"] for p in parts), default=0.0)
    window = last_receive - first_receive
    totals = {k: sum(p["totals"][k] for p in parts) for k in parts[0]["totals"]}
    frames = sum(p["frames"] for p in parts)
    return {
        "listeners": sum(p["listeners"] for p in parts),
        "subscribed": sum(p["subscribed"] for p in parts),
        "processes": len(parts),
        "open_s": max(p["open_s"] for p in parts),
        "failure_counts": {k: sum(p["failure_counts"][k] for p in parts) for k in parts[0]["failure_counts"]},
        "failures_sample": [f for p in parts for v in p["failures"].values() for f in v][:10],
        "extensions": sorted({e for p in parts for e in p["extensions"]}),
        "expected_per_listener": max(p["expected_per_listener"] for p in parts),
        "deliveries": len(lat),
        "deliveries_per_s": len(lat) / window if window > 0 else None,
        "receive_window_s": window,
        "mean_frame_bytes": sum(p["mean_frame_chars"] * p["frames"] for p in parts) / frames if frames else 0.0,
        **ms_percentiles(lat),
        "by_type": by_type,
        "per_event": {
            "events": len(spans),
            "first_listener": ms_percentiles(first_ms, already_ms=True),
            "last_listener": ms_percentiles(last_ms, already_ms=True),
            "spread": ms_percentiles(spread_ms, already_ms=True),
        },
        "check": {
            **totals,
            "listeners_with_problems": sum(p["listeners_with_problems"] for p in parts),
            "closed_by_server": sum(p["closed_by_server"] for p in parts),
            "close_reasons": sorted({r for p in parts for r in p["close_reasons"]}),
            "problem_listeners_sample": [x for p in parts for x in p["problem_listeners_sample"]][:10],
        },
        "listener_cpu_s": sum(p["cpu_s_while_receiving"] for p in parts),
        **({"first_receive_by_event": [spans[k][1] for k in sorted(spans, key=int)]} if keep_times else {}),
    }


def ms_percentiles(values: list[float], *, already_ms: bool = False) -> dict[str, float | None]:
    """p50, p99 and max of sorted `values` (seconds, unless already_ms), in ms."""
    scale = 1.0 if already_ms else 1000.0

    def at(p: float) -> float | None:
        return scale * values[min(len(values) - 1, int(p * len(values)))] if values else None

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": scale * values[-1] if values else None}


async def submit_paced(url: str, key: str, rate: float, n: int) -> dict[str, Any]:
    """n POST /v1/tasks, the i-th sent at t0 + i/rate whatever the earlier ones are doing (open loop)."""
    import httpx

    statuses: dict[str, int] = {}
    latencies: list[float] = []
    lag: list[float] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits) as client:
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            start = time.perf_counter()
            lag.append(start - (t0 + i / rate))
            try:
                resp = await client.post("/v1/tasks", content=CHAT_BODY)
                status = str(resp.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(one(i) for i in range(n)))
        seconds = time.perf_counter() - t0
    latencies.sort()
    return {
        "tasks": n,
        "rate_asked": rate,
        "seconds": seconds,
        "statuses": statuses,
        "post_latency": ms_percentiles(latencies),
        "max_send_lag_ms": 1000 * max(lag) if lag else None,
    }


def publish_paced(client: redis.Redis, channel: str, offsets: list[float], size: int) -> dict[str, Any]:
    """The baseline's publisher: one message of `size` bytes per offset, the i-th at t0 + offsets[i], each
    carrying its seq and time.time() just before PUBLISH; returns how many subscribers Redis said got each."""
    n = len(offsets)
    empty = len(orjson.dumps({"seq": n, "t": time.time(), "pad": ""}))
    pad = "x" * max(0, size - empty)
    receivers: list[int] = []
    t0 = time.perf_counter()
    # Numbered from 1, as event ids are: a listener gets the ids above its position (0 here).
    for i, offset in enumerate(offsets):
        wait = t0 + offset - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        message = orjson.dumps({"seq": i + 1, "t": time.time(), "pad": pad})
        receivers.append(int(client.publish(channel, message)))
    seconds = time.perf_counter() - t0
    return {
        "messages": n,
        "seconds": seconds,
        "rate": n / seconds if seconds > 0 else 0.0,
        "payload_bytes": len(orjson.dumps({"seq": n, "t": time.time(), "pad": pad})),
        "receivers_min": min(receivers, default=0),
        "receivers_max": max(receivers, default=0),
    }


def publish_schedule(phase: dict[str, Any]) -> tuple[list[float], str]:
    """When the baseline publishes, relative to its start: when the relay published our events (as the relay
    probe saw them: bursts of a task's three events included), or evenly at our event rate if the probe missed
    any."""
    times: list[float] = phase["relay_probe"].get("first_receive_by_event", [])
    if len(times) == phase["events"] and times:
        return [t - times[0] for t in times], "the relay's publish times replayed"
    return [i / phase["event_rate"] for i in range(phase["events"])], "evenly at our event rate"


def wait_events_numbered(database_url: str, tenant_id: str, after: int, want: int, timeout: float) -> list[int]:
    """The tenant's event ids after `after`, once `want` of them are numbered and none waits for a number."""
    query = (
        "SELECT count(*) FILTER (WHERE seq > %s), count(*) FILTER (WHERE seq IS NULL) FROM events WHERE tenant_id = %s"
    )

    def numbered() -> bool:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute(query, (after, tenant_id)).fetchone()
        assert row is not None
        return bool(row[0] >= want and row[1] == 0)

    wait_until(numbered, timeout=timeout, interval=0.1, what=f"{want} numbered events")
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT seq FROM events WHERE tenant_id = %s AND seq > %s ORDER BY seq", (tenant_id, after)
        ).fetchall()
    return [int(r[0]) for r in rows]


def ws_baseline(
    env: Env, name: str, listeners: int, procs: int, offsets: list[float], schedule: str, size: int
) -> dict[str, Any]:
    """Bare Redis pub/sub of the same shape: `listeners` redis-py asyncio subscribers in `procs` processes,
    one publisher sending a message of `size` bytes at each offset; stops its processes when done."""
    channel = f"bench:ws_fanout:{secrets.token_hex(6)}:{name}"
    group = start_listeners(
        env, name, ["redis", "--redis-url", env.redis_url, "--channel", channel, "--format", "bench"], listeners, procs
    )
    try:
        ready_info = ready(group)
        ticks0 = machine_cpu_ticks()
        published = publish_paced(env.redis, channel, offsets, size)
        published["schedule"] = schedule
        res = collect(group, list(range(1, len(offsets) + 1)))
        ticks1 = machine_cpu_ticks()
        res["machine_busy_pct"] = 100.0 * (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1])
        res["publisher"] = published
        res["ready"] = ready_info
        log(
            f"  ws_fanout baseline {name}: {res['subscribed']} subscribers, {res['deliveries']} deliveries, "
            f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, missing {res['check']['missing']}, "
            f"duplicates {res['check']['duplicates']}"
        )
        return res
    finally:
        for proc, _ in group:
            proc.stop()
