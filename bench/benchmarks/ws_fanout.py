"""ws_fanout: 1,000 WebSocket listeners subscribed to one tenant (2 load-generator processes), chat tasks at
1/s: event delivery latency p50/p99 (receive - created_at) vs a bare Redis pub/sub fan-out of the same shape
(1,000 redis-py asyncio subscribers, and one) on the same Redis; no target. Supporting: the same at 20 tasks/s
(overload on 2 cores: deliveries/s is the capacity).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.benchmarks._ws_fanout_support import (
    collect,
    publish_schedule,
    ready,
    start_listeners,
    submit_paced,
    wait_events_numbered,
    ws_baseline,
)
from bench.harness import CHAT_BODY, BenchError, Env, Profiler, cpu_seconds, log, machine_cpu_ticks, sql_one, wait_log
from bench.registry import Benchmark, Options, Result, Row
from bench.stack import Switchyard, wait_worker
from tests.processes import Process, cli

# Redis DB of this benchmark (pub/sub channels are server-wide whatever the DB: every channel name here is
# this run's own). 6-15 are the other benchmarks' and the tests'.
WS_REDIS_DB = 7
# Listener processes, for ours and for the baselines alike; with 2 cores there is no room for more.
WS_LISTENER_PROCS = 2
WS_EVENTS_PER_TASK = 3  # task.queued, task.started, task.succeeded
WS_PROVIDER_CONCURRENCY = 64
WS_WARMUP_TASKS = 10


@dataclass(frozen=True)
class Sizes:
    """Listeners, and per phase (tasks/s, seconds of submitting); the phases run in this order, each on fresh
    listeners. `headline`: a modest steady rate for 1,000 listeners on this 2-core machine: 3 events/s, ~3,000
    deliveries/s offered, about a third of what our API delivers when saturated (~9,400/s measured; 2 tasks/s,
    ~6,000/s, already queues). `overload` (supporting): the rate first asked for, 20 tasks/s = 60 events/s =
    ~60,000 deliveries/s offered, which neither our API nor the bare Redis fan-out's Python subscribers keep up
    with on 2 cores: its latencies are mostly backlog, the figure to read there is deliveries/s (the capacity)."""

    listeners: int
    rate: float
    submit_s: float
    overload_rate: float
    overload_submit_s: float

    def phases(self) -> dict[str, tuple[float, float]]:
        """phase -> (tasks/s, seconds of submitting)."""
        return {"headline": (self.rate, self.submit_s), "overload": (self.overload_rate, self.overload_submit_s)}


FULL = Sizes(listeners=1000, rate=1.0, submit_s=20.0, overload_rate=20.0, overload_submit_s=10.0)
QUICK = Sizes(listeners=100, rate=1.0, submit_s=5.0, overload_rate=20.0, overload_submit_s=3.0)


def _ws_ours_phase(
    env: Env,
    ours: Switchyard,
    procs: dict[str, Process],
    tenant_id: str,
    phase: str,
    listeners: int,
    rate: float,
    submit_s: float,
    after: int,
    profile: bool,
) -> dict[str, Any]:
    """One phase on our stack: fresh listeners (and the relay probe), n tasks POSTed at `rate`, every listener's
    report; the listener processes are stopped at the end."""
    from switchyard.events.bus import tenant_channel

    n_tasks = round(rate * submit_s)
    groups: list[list[tuple[Process, Path]]] = []
    try:
        # One plain Redis subscriber on the tenant's channel: when the relay published each event.
        probe = start_listeners(
            env, f"{phase}-relay-probe",
            ["redis", "--redis-url", env.redis_url, "--channel", tenant_channel(tenant_id), "--format", "relay"], 1, 1,
        )  # fmt: skip
        groups.append(probe)
        ws_url = ours.url.replace("http://", "ws://") + "/v1/ws"
        t_open = time.monotonic()
        group = start_listeners(
            env, f"{phase}-ws", ["ws", "--url", ws_url, "--key", ours.key], listeners, WS_LISTENER_PROCS
        )
        groups.append(group)
        open_s = time.monotonic() - t_open
        ready_info = ready(group)
        subscribed = sum(r["subscribed"] for r in ready_info)
        log(f"  ws_fanout {phase}: {subscribed}/{listeners} WebSocket listeners subscribed in {open_s:.1f}s "
            f"({WS_LISTENER_PROCS} processes); submitting {n_tasks} chat tasks at {rate:g}/s")  # fmt: skip
        if subscribed == 0:
            raise BenchError(f"no WebSocket listener could subscribe: {ready}")
        time.sleep(1.0)  # let the handshake burst settle

        cpu0 = {k: cpu_seconds(p.pid) for k, p in procs.items()}
        ticks0, wall0 = machine_cpu_ticks(), time.monotonic()
        prof = Profiler(profile, procs["api"].pid, f"ws-fanout-api-{phase}", submit_s + 30)
        try:
            submit = asyncio.run(submit_paced(ours.url, ours.key, rate, n_tasks))
            expected = wait_events_numbered(
                env.database_url, tenant_id, after, WS_EVENTS_PER_TASK * n_tasks, timeout=120
            )
            res = collect(group, expected)
            relay = collect(probe, expected, keep_times=True)
        finally:
            prof.stop()
        ticks1, wall = machine_cpu_ticks(), time.monotonic() - wall0
    finally:
        for g in groups:
            for proc, _ in g:
                proc.stop()
    cpu = {k: cpu_seconds(p.pid) - cpu0[k] for k, p in procs.items()}
    # The listener processes exit once they have reported: their own count (from READY to the report).
    cpu["listeners"] = res["listener_cpu_s"]
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        statuses: dict[str, int] = dict(conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
    log(
        f"  ws_fanout {phase} ours: {res['deliveries']} deliveries, p50 {res['p50_ms']:.1f} ms, p99 "
        f"{res['p99_ms']:.1f} ms, {res['deliveries_per_s'] or 0:.0f}/s; missing {res['check']['missing']}, "
        f"duplicates {res['check']['duplicates']}, closed by server {res['check']['closed_by_server']}; relay "
        f"probe p50 {relay['p50_ms']:.1f} ms"
    )
    return {
        "listeners": listeners,
        "tasks": n_tasks,
        "task_rate": rate,
        "events": len(expected),
        "event_rate": len(expected) / submit["seconds"],
        "last_seq": max(expected),
        "open_s": open_s,
        "submit": submit,
        "task_statuses": statuses,
        "ours_detail": res,
        "relay_probe": relay,
        "measured_s": wall,
        "cpu_s": cpu,
        "cpu_cores": {k: v / wall for k, v in cpu.items()},
        "api_cpu_us_per_delivery": 1e6 * cpu["api"] / max(1, res["deliveries"]),
        "machine_busy_pct": 100.0 * (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1]),
    }


def _ws_compare(phase: dict[str, Any], single: dict[str, Any], fanout: dict[str, Any]) -> None:
    """Add the baselines, the ratios and the breakdown to a phase's figures."""
    res, relay, n = phase["ours_detail"], phase["relay_probe"], phase["listeners"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    phase["baseline_single"], phase["baseline_fanout"] = single, fanout
    phase["ratios"] = {
        f"vs_{n}_subscribers": {p: ratio(res[f"{p}_ms"], fanout[f"{p}_ms"]) for p in ("p50", "p99")},
        "vs_1_subscriber": {p: ratio(res[f"{p}_ms"], single[f"{p}_ms"]) for p in ("p50", "p99")},
    }
    phase["breakdown_ms"] = {
        "created_to_relay_published_p50": relay["p50_ms"],
        "created_to_relay_published_p99": relay["p99_ms"],
        "relay_published_to_listener_p50": (res["p50_ms"] or 0) - (relay["p50_ms"] or 0),
        "relay_published_to_listener_p99": (res["p99_ms"] or 0) - (relay["p99_ms"] or 0),
        "first_listener_p50": res["per_event"]["first_listener"]["p50_ms"],
        "last_listener_p50": res["per_event"]["last_listener"]["p50_ms"],
        "fanout_spread_p50": res["per_event"]["spread"]["p50_ms"],
        "fanout_spread_p99": res["per_event"]["spread"]["p99_ms"],
    }


def _redis_parser() -> str:
    """Which RESP parser redis-py uses in the baseline's subscribers: hiredis (C) when installed."""
    from importlib.util import find_spec

    return "hiredis" if find_spec("hiredis") else "redis-py's pure-Python one (hiredis is not installed)"


def run(opts: Options) -> Result:
    """Our phases on one stack, then (with our stack stopped) the baselines replaying each phase's schedule."""
    sz = opts.sizes("ws_fanout", FULL, QUICK)
    listeners, phases, profile = sz.listeners, sz.phases(), opts.profile
    env = Env("ws_fanout", WS_REDIS_DB, opts.tmp / "ws_fanout")
    try:
        # Room for every listener (the default limit is 1,000 per tenant, across API processes), and for the
        # previous phase's connections while the API is still closing them.
        env.env["SWITCHYARD_WS_MAX_CONNECTIONS_PER_TENANT"] = str(max(4 * listeners, 1000))
        ours = Switchyard(env, fake_latency_ms=0)
        assert ours.api is not None
        assert ours.fake is not None
        provider = ours.start_worker(WS_PROVIDER_CONCURRENCY)
        # The control worker runs the event relay (numbering, then publishing on Redis) and the periodic duties.
        control = env.start("worker-control", cli("worker", "--queues", "control,webhooks", "--loglevel", "INFO"))
        for proc in (provider, control):
            wait_worker(proc)
        wait_log(control, "event_relay_leading", timeout=60)
        tenant_id = str(sql_one(env.database_url, "SELECT id FROM tenants WHERE name = 'bench'"))

        # Warm the path (API, workers, relay) before anyone listens; the listeners then start after its events.
        import httpx

        with httpx.Client(headers={"Authorization": f"Bearer {ours.key}"}, timeout=30) as client:
            for _ in range(WS_WARMUP_TASKS):
                got = client.post(
                    f"{ours.url}/v1/tasks", content=CHAT_BODY, headers={"Content-Type": "application/json"}
                )
                if got.status_code != 202:
                    raise BenchError(f"POST /v1/tasks answered {got.status_code}: {got.text[:500]}")
        warm = wait_events_numbered(env.database_url, tenant_id, 0, WS_EVENTS_PER_TASK * WS_WARMUP_TASKS, 60)

        procs = {"api": ours.api, "control_worker": control, "provider_worker": provider, "fake": ours.fake}
        results: dict[str, dict[str, Any]] = {}
        after = max(warm)
        for phase, (rate, submit_s) in phases.items():
            results[phase] = _ws_ours_phase(
                env, ours, procs, tenant_id, phase, listeners, rate, submit_s, after, profile
            )
            after = results[phase]["last_seq"]
            time.sleep(2.0)  # the API closes the phase's connections and releases their slots
        api_log = ours.api.log()
        for proc in (ours.api, provider, control, ours.fake):
            proc.stop()

        # The baselines, with our stack stopped: per phase, as many messages as our events, published when the
        # relay published them (so at the same rate, in the same bursts), as large as our average frame, to one
        # subscriber and then to as many as our listeners.
        for phase, res in results.items():
            offsets, schedule = publish_schedule(res)
            size = round(res["ours_detail"]["mean_frame_bytes"])
            single = ws_baseline(env, f"{phase}-redis-1", 1, 1, offsets, schedule, size)
            fanout = ws_baseline(
                env, f"{phase}-redis-{listeners}", listeners, WS_LISTENER_PROCS, offsets, schedule, size
            )
            _ws_compare(res, single, fanout)

        head = results["headline"]
        versus = head["ratios"][f"vs_{listeners}_subscribers"]
        return {
            "ours": head["ours_detail"]["p50_ms"],
            "baseline": head["baseline_fanout"]["p50_ms"],
            "unit": "ms p50",
            "ratio": versus["p50"],
            "target": None,
            "target_kind": "none: report it",
            "p99": {
                "ours": head["ours_detail"]["p99_ms"],
                "baseline": head["baseline_fanout"]["p99_ms"],
                "ratio": versus["p99"],
            },  # fmt: skip
            "measure": "per (listener, event) delivery: receive time at the listener (time.time() after the client "
            "library parsed the frame) - the event's created_at (ours) or the publisher's time.time() before "
            "PUBLISH (baselines); one machine clock",
            "listeners": listeners,
            "listener_processes": WS_LISTENER_PROCS,
            "sizes": asdict(sz),
            "phases": results,
            "cores": os.cpu_count(),
            "redis_parser": _redis_parser(),
            "api_log_warnings": [ln for ln in api_log.splitlines() if re.search(r"(?i)warn|error|exception", ln)][:20],
        }
    finally:
        env.close()


def _ws_offered(ph: dict[str, Any]) -> float:
    """Deliveries/s a phase offered: the event rate times the listeners subscribed."""
    o = ph["ours_detail"]
    return float(o["expected_per_listener"] * o["subscribed"] * ph["event_rate"] / max(1, ph["events"]))


def rows(name: str, res: Result) -> list[Row]:
    """The table's rows for ws_fanout, per phase: p50 and p99 against as many bare subscribers as listeners,
    then (headline only) against one. No target."""
    n = res["listeners"]
    rows: list[tuple[str, ...]] = []
    # The headline first, then the supporting phases.
    for phase, ph in sorted(res["phases"].items(), key=lambda kv: kv[0] != "headline"):
        fan, one, o = ph["baseline_fanout"], ph["baseline_single"], ph["ours_detail"]
        for pct in ("p50", "p99"):
            if phase == "headline":
                label, verdict_text = (
                    f"ws_fanout {n} listeners, {ph['task_rate']:g} tasks/s, {pct}",
                    "no target: report it",
                )
            else:
                behind = (o["deliveries_per_s"] or 0) < 0.9 * _ws_offered(ph)
                label = f"  {phase}, {ph['task_rate']:g} tasks/s, {pct}"
                verdict_text = "supporting: backlog" if behind else "supporting, no target"
            rows.append((label, f"{o[f'{pct}_ms']:.1f} ms", f"{fan[f'{pct}_ms']:.2f} ms ({n} redis subs)",
                         f"{ph['ratios'][f'vs_{n}_subscribers'][pct]:.1f}x", "-", verdict_text))  # fmt: skip
        if phase == "headline":
            for pct in ("p50", "p99"):
                rows.append((f"  {pct} vs 1 bare redis subscriber, {ph['task_rate']:g}/s", f"{o[f'{pct}_ms']:.1f} ms",
                             f"{one[f'{pct}_ms']:.2f} ms (1 redis sub)", f"{ph['ratios']['vs_1_subscriber'][pct]:.1f}x",
                             "-", "supporting, no target"))  # fmt: skip
        if phase == "overload":
            dps = o["deliveries_per_s"] or 0.0
            fan_dps = fan["deliveries_per_s"] or 0.0
            capacity = " (capacity)" if dps < 0.9 * _ws_offered(ph) else ""
            rows.append((f"  {phase}: deliveries/s{capacity}", f"{dps:.0f}/s", f"{fan_dps:.0f}/s ({n} redis subs)",
                         f"{dps / fan_dps if fan_dps else 0:.2f}x", "-", "supporting, no target"))  # fmt: skip
    return rows


def details(res: Result) -> None:
    n = res["listeners"]
    print(
        f"ws_fanout: {n} WebSocket listeners (tenant-wide subscription each) in {res['listener_processes']} "
        "load-generator processes, fresh ones per phase; latency = receive time at the listener - the event's "
        "created_at; baselines: bare Redis pub/sub, redis-py asyncio subscribers in the same number of processes "
        f"(RESP parser: {res['redis_parser']})"
    )
    for phase, ph in res["phases"].items():
        o, fan, one = ph["ours_detail"], ph["baseline_fanout"], ph["baseline_single"]
        c, b, cores = o["check"], ph["breakdown_ms"], ph["cpu_cores"]
        sub = ph["submit"]
        print(
            f"  [{phase}] {ph['tasks']} chat tasks POSTed at {ph['task_rate']:g}/s (POST p50 "
            f"{sub['post_latency']['p50_ms']:.0f} ms, p99 {sub['post_latency']['p99_ms']:.0f} ms, statuses "
            f"{sub['statuses']}) -> {ph['events']} events ({ph['event_rate']:.0f}/s), {o['mean_frame_bytes']:.0f} B "
            f"per frame on average; {o['subscribed']}/{n} subscribed in {ph['open_s']:.1f}s; WebSocket extensions: "
            f"{', '.join(o['extensions'])}"
        )
        offered = _ws_offered(ph)
        print(
            f"    ours: {o['deliveries']} deliveries of {o['expected_per_listener'] * o['subscribed']} expected, "
            f"{o['deliveries_per_s'] or 0:.0f}/s delivered over {o['receive_window_s']:.1f}s ({offered:.0f}/s "
            f"offered); p50 {o['p50_ms']:.1f} ms, p99 {o['p99_ms']:.1f} ms, max {o['max_ms']:.0f} ms; by type "
            "(p50/p99): " + ", ".join(f"{k} {v['p50_ms']:.1f}/{v['p99_ms']:.1f}" for k, v in o["by_type"].items())
        )
        if o["deliveries_per_s"] and o["deliveries_per_s"] < 0.9 * offered:
            print(
                "    (delivered < offered: the API's fan-out fell behind, so these latencies are mostly backlog; "
                "deliveries/s is its capacity here)"
            )
        reasons = f" {c['close_reasons']}" if c["close_reasons"] else ""
        print(
            f"    check: missing {c['missing']}, duplicates {c['duplicates']}, out of order {c['out_of_order']}, "
            f"unexpected {c['unexpected']}; listeners with a problem {c['listeners_with_problems']}; closed by the "
            f"server {c['closed_by_server']}{reasons} (slow-consumer limit: SWITCHYARD_WS_MAX_QUEUE, default 1,000 "
            f"events behind); at connect {o['failure_counts']}"
        )
        for label, base in ((f"{n} redis subscribers", fan), ("1 redis subscriber", one)):
            pub = base["publisher"]
            print(
                f"    baseline, {label}: {base['deliveries']} deliveries ({base['subscribed']} subscribed), p50 "
                f"{base['p50_ms']:.2f} ms, p99 {base['p99_ms']:.2f} ms, max {base['max_ms']:.1f} ms; missing "
                f"{base['check']['missing']}, duplicates {base['check']['duplicates']}; {pub['messages']} messages "
                f"of {pub['payload_bytes']} B at {pub['rate']:.0f}/s ({pub['schedule']}), PUBLISH reached "
                f"{pub['receivers_min']}-{pub['receivers_max']} subscribers"
            )
        print(
            f"    ratios: p50 {ph['ratios'][f'vs_{n}_subscribers']['p50']:.1f}x, p99 "
            f"{ph['ratios'][f'vs_{n}_subscribers']['p99']:.1f}x against {n} subscribers; p50 "
            f"{ph['ratios']['vs_1_subscriber']['p50']:.1f}x, p99 {ph['ratios']['vs_1_subscriber']['p99']:.1f}x "
            "against one"
        )
        relay = f"{b['created_to_relay_published_p50']:.1f}/{b['created_to_relay_published_p99']:.1f}"
        rest = f"{b['relay_published_to_listener_p50']:.1f}/{b['relay_published_to_listener_p99']:.1f}"
        probe_types = ", ".join(
            f"{k} {v['p50_ms']:.1f}/{v['p99_ms']:.1f}" for k, v in ph["relay_probe"]["by_type"].items()
        )
        print(
            f"    where ours goes (ms, p50/p99): created_at -> relay published (one plain subscriber on "
            f"switchyard:events:<tenant>) {relay} ({probe_types}); relay published -> listener (Redis, the API's "
            f"fan-out, the sockets, the listener) {rest}"
        )
        print(
            f"      per event: first listener {b['first_listener_p50']:.1f}, last listener {b['last_listener_p50']:.1f}"
            f", spread first->last {b['fanout_spread_p50']:.1f} p50 / {b['fanout_spread_p99']:.1f} p99 (bare "
            f"redis, {n} subscribers: spread {fan['per_event']['spread']['p50_ms']:.1f} p50)"
        )
        print(
            f"    CPU cores while measured ({ph['measured_s']:.0f}s): API {cores['api']:.2f}, listeners "
            f"{cores['listeners']:.2f}, control worker {cores['control_worker']:.2f}, provider worker "
            f"{cores['provider_worker']:.2f}, fake {cores['fake']:.2f} (machine {ph['machine_busy_pct']:.0f}% busy);"
            f" API CPU {ph['api_cpu_us_per_delivery']:.0f} us per delivery, so "
            f"{ph['api_cpu_us_per_delivery'] * o['subscribed'] / 1000:.0f} ms of API CPU per event fanned out to all "
            f"{o['subscribed']}: a task's three events are published within tens of ms of each other (the fake "
            "answers at once), so the second and the third wait for the first's fan-out (see by type)"
        )
    print(
        "  the path: the writer's commit (API for task.queued, provider worker for started/succeeded) -> the relay"
        " numbers the rows in its own transaction (one more Postgres commit, fsync) and PUBLISHes -> Redis -> the "
        f"API's hub -> one queue per listener -> {n} sends (permessage-deflate per socket, one write each) in one "
        "Python process"
    )
    print(
        f"  machine: {res['cores']} cores shared by everything: Postgres, Redis, the API, both workers, the fake, "
        f"the {res['listener_processes']} listener processes and this runner; a listener's receive time includes "
        "its own queueing on those cores (so does a baseline listener's)"
    )
    if res["api_log_warnings"]:
        print(
            f"  API log: {len(res['api_log_warnings'])} warning/error lines, first: {res['api_log_warnings'][0][:200]}"
        )


BENCHMARK = Benchmark(
    name="ws_fanout",
    summary="1,000 WebSocket listeners, delivery latency p50/p99 vs bare Redis pub/sub (no target)",
    run=run,
    rows=rows,
    details=details,
)
