"""The ws_fanout benchmark's load generator: many listeners in one process, each timing every message it gets.

    python -m bench.fanout_listeners ws --url ws://127.0.0.1:P/v1/ws --key sy_... --listeners 500 --out DIR/ws-0
    python -m bench.fanout_listeners redis --redis-url redis://127.0.0.1:6379/7 --channel C --format bench \
        --listeners 500 --out DIR/base-0

`ws`: WebSocket connections to our `GET /v1/ws` (websockets' asyncio client, its default options, as a browser
would: permessage-deflate offered), each sending `{"action": "subscribe", "all": true}` and waiting for its
`subscribed` frame. `redis`: redis-py asyncio pub/sub subscribers, one connection each, to one channel; the
`bench` format is the baseline publisher's `{"seq", "t", "pad"}`, the `relay` format is what our relay
publishes on a tenant's channel (`{"events": [...]}`), so that one plain subscriber shows when the relay
published.

The latency of a delivery is the time the listener got the message (time.time(), after the client library
parsed it) minus the event's `created_at` (ws, relay) or the publisher's timestamp (bench): one machine, one
clock. The runner talks to this process through files next to `--out`: this process prints `READY` and
writes `OUT.ready.json` once every listener is subscribed; the runner writes `OUT.stop` holding the ids every
listener should get (`{"expected": [...], "quiet_s": ..., "deadline_s": ...}`); this process waits until
every listener has them all (or nothing arrived for quiet_s, or deadline_s passed), writes `OUT.json` (counts
and checks), `OUT.lat` (every delivery's latency in seconds, native doubles) and `OUT.lat.<type>` (the same
per event type), prints `DONE` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from array import array
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

# Handshakes in flight at once: 1,000 at a time would mostly measure the API's accept queue.
OPEN_CONCURRENCY = 50
OPEN_TIMEOUT_S = 60.0


@dataclass
class Tally:
    """One listener's record: the ids it got in arrival order, and how it ended."""

    index: int
    subscribed: bool = False
    position: int = 0  # ws: the feed position its `subscribed` frame reported (it gets events after it)
    ids: array[int] = field(default_factory=lambda: array("q"))
    frames: int = 0
    chars: int = 0
    other_frames: list[str] = field(default_factory=list)  # non-event frames after subscribing (errors...)
    closed: str | None = None  # set when the server closed it (or the connection dropped) before the end


@dataclass
class Shared:
    """What all listeners of this process add to."""

    latencies: array[float] = field(default_factory=lambda: array("d"))
    by_type: dict[str, array[float]] = field(default_factory=dict)
    origin: dict[int, float] = field(default_factory=dict)  # id -> created_at (or publish time), seconds
    first_last: dict[int, list[float]] = field(default_factory=dict)  # id -> [first, last] receive time
    last_receive: float = 0.0
    first_receive: float = 0.0
    stopping: bool = False

    def record(self, tally: Tally, received: float, seq: int, origin: float, kind: str) -> None:
        tally.ids.append(seq)
        latency = received - origin
        self.latencies.append(latency)
        per = self.by_type.get(kind)
        if per is None:
            per = self.by_type[kind] = array("d")
        per.append(latency)
        span = self.first_last.get(seq)
        if span is None:
            self.first_last[seq] = [received, received]
            self.origin[seq] = origin
        else:
            span[0] = min(span[0], received)
            span[1] = max(span[1], received)
        if not self.first_receive:
            self.first_receive = received
        self.last_receive = max(self.last_receive, received)


class Gate:
    """Bounds the handshakes in flight, and tells when every listener has been through (subscribed or not)."""

    def __init__(self, concurrency: int, total: int) -> None:
        self._sem = asyncio.Semaphore(concurrency)
        self._left = total
        self.all_through = asyncio.Event()
        if total == 0:
            self.all_through.set()

    async def __aenter__(self) -> None:
        await self._sem.acquire()

    async def __aexit__(self, *_: object) -> None:
        self._sem.release()
        self._left -= 1
        if self._left == 0:
            self.all_through.set()


_created_cache: dict[str, float] = {}


def _created(iso: str) -> float:
    """created_at as epoch seconds; each event's string is parsed once however many listeners get it."""
    value = _created_cache.get(iso)
    if value is None:
        value = _created_cache[iso] = datetime.fromisoformat(iso).timestamp()
    return value


# --- WebSocket listeners ---------------------------------------------------------------------------------------


async def _ws_listener(
    tally: Tally, url: str, key: str, shared: Shared, gate: Gate, failures: dict[str, list[str]]
) -> None:
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

    ws: ClientConnection
    async with gate:
        try:
            ws = await connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=OPEN_TIMEOUT_S)
        except InvalidStatus as exc:
            failures["refused"].append(f"{exc.response.status_code} {exc.response.body!r}"[:300])
            return
        except (OSError, TimeoutError, WebSocketException) as exc:
            failures["connect_failed"].append(repr(exc)[:300])
            return
        try:
            await ws.send('{"action": "subscribe", "all": true}')
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_S))
        except (OSError, TimeoutError, WebSocketException) as exc:
            failures["subscribe_failed"].append(repr(exc)[:300])
            await ws.close()
            return
        if frame.get("type") != "subscribed":
            failures["subscribe_failed"].append(repr(frame)[:300])
            await ws.close()
            return
        tally.position = int(frame["position"])
        tally.subscribed = True
        failures["extensions"].append(",".join(type(e).__name__ for e in ws.protocol.extensions) or "none")
    try:
        async for message in ws:
            received = time.time()
            text = message if isinstance(message, str) else message.decode()
            event = orjson.loads(text)
            seq = event.get("id")
            if not isinstance(seq, int):
                if len(tally.other_frames) < 5:
                    tally.other_frames.append(text[:300])
                continue
            tally.frames += 1
            tally.chars += len(text)
            shared.record(tally, received, seq, _created(event["created_at"]), str(event.get("type")))
    except ConnectionClosed:
        pass
    if not shared.stopping:
        rcvd = ws.protocol.close_rcvd
        tally.closed = f"{rcvd.code} {rcvd.reason}" if rcvd is not None else "dropped without a close frame"


# --- Redis pub/sub listeners -----------------------------------------------------------------------------------


def _bench_messages(data: bytes) -> list[tuple[int, float, str]]:
    message = orjson.loads(data)
    return [(int(message["seq"]), float(message["t"]), "bench")]


def _relay_messages(data: bytes) -> list[tuple[int, float, str]]:
    message = orjson.loads(data)
    return [(int(e["id"]), _created(e["created_at"]), str(e["type"])) for e in message.get("events", ())]


async def _redis_listener(
    tally: Tally,
    client: Any,
    channel: str,
    parse: Callable[[bytes], list[tuple[int, float, str]]],
    shared: Shared,
    gate: Gate,
    failures: dict[str, list[str]],
) -> None:
    import redis

    async with gate:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            # The subscribe confirmation: after it, every message published on the channel reaches this one.
            while True:
                first = await asyncio.wait_for(pubsub.get_message(timeout=OPEN_TIMEOUT_S), OPEN_TIMEOUT_S + 5)
                if first is not None and first["type"] == "subscribe":
                    break
        except (redis.RedisError, OSError, TimeoutError) as exc:
            failures["subscribe_failed"].append(repr(exc)[:300])
            return
        tally.subscribed = True
    try:
        while True:
            message = await pubsub.get_message(timeout=None)
            received = time.time()
            if message is None or message["type"] != "message":
                continue
            data: bytes = message["data"]
            tally.frames += 1
            tally.chars += len(data)
            for seq, origin, kind in parse(data):
                shared.record(tally, received, seq, origin, kind)
    except (redis.RedisError, OSError) as exc:
        if not shared.stopping:
            tally.closed = repr(exc)[:300]
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()


# --- the run ---------------------------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


async def _wait_stop(out: Path) -> dict[str, Any]:
    stop = out.with_name(out.name + ".stop")
    while True:
        if stop.exists():
            break
        await asyncio.sleep(0.1)
    # The runner writes it to a temporary name and renames it: a present file is a complete one.
    result: dict[str, Any] = json.loads(stop.read_text())
    return result


async def _run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    shared = Shared()
    failures: dict[str, list[str]] = {
        "refused": [],
        "connect_failed": [],
        "subscribe_failed": [],
        "extensions": [],
    }
    tallies = [Tally(i) for i in range(args.listeners)]
    gate = Gate(OPEN_CONCURRENCY, args.listeners)
    client: Any = None
    make: Callable[[Tally], Coroutine[Any, Any, None]]
    if args.mode == "ws":

        def make(t: Tally) -> Coroutine[Any, Any, None]:
            return _ws_listener(t, args.url, args.key, shared, gate, failures)

    else:
        import redis.asyncio

        # One connection per subscriber: the pool must hold them all (redis-py caps it by default).
        client = redis.asyncio.Redis.from_url(args.redis_url, max_connections=args.listeners + 10)
        parse = _bench_messages if args.format == "bench" else _relay_messages

        def make(t: Tally) -> Coroutine[Any, Any, None]:
            return _redis_listener(t, client, args.channel, parse, shared, gate, failures)

    t0 = time.monotonic()
    tasks = [asyncio.create_task(make(t)) for t in tallies]
    await gate.all_through.wait()
    open_s = time.monotonic() - t0
    failed = sum(len(failures[k]) for k in ("refused", "connect_failed", "subscribe_failed"))
    subscribed = args.listeners - failed
    ready = {"subscribed": subscribed, "failed": failed, "open_s": open_s, "pid": os.getpid()}
    out.with_name(out.name + ".ready.json").write_text(json.dumps(ready))
    print(f"READY {subscribed} subscribed, {failed} failed, in {open_s:.1f}s", flush=True)

    cpu0 = time.process_time()
    stop = await _wait_stop(out)
    expected_all: list[int] = stop["expected"]
    quiet_s, deadline = float(stop["quiet_s"]), time.monotonic() + float(stop["deadline_s"])
    stop_seen = time.time()
    alive = [t for t in tallies if t.subscribed]

    def wanted(t: Tally) -> int:
        return sum(1 for seq in expected_all if seq > t.position)

    want = {t.index: wanted(t) for t in alive}
    while time.monotonic() < deadline:
        if all(len(t.ids) >= want[t.index] or t.closed is not None for t in alive):
            break
        if time.time() - max(shared.last_receive, stop_seen) > quiet_s:
            break
        await asyncio.sleep(0.05)
    shared.stopping = True
    cpu_s = time.process_time() - cpu0

    expected_set = set(expected_all)
    per_listener: list[dict[str, Any]] = []
    totals = {"received": 0, "missing": 0, "duplicates": 0, "out_of_order": 0, "unexpected": 0}
    listeners_with_problems = 0
    for t in tallies:
        if not t.subscribed:
            continue  # counted in failures
        mine = {seq for seq in expected_set if seq > t.position}
        got = set(t.ids)
        ids = list(t.ids)
        counts = {
            "received": len(ids),
            "missing": len(mine - got),
            "duplicates": len(ids) - len(got),
            "out_of_order": sum(1 for a, b in zip(ids, ids[1:], strict=False) if b <= a),
            "unexpected": len(got - expected_set),
        }
        for k, v in counts.items():
            totals[k] += v
        if counts["missing"] or counts["duplicates"] or counts["out_of_order"] or counts["unexpected"] or t.closed:
            listeners_with_problems += 1
            if len(per_listener) < 20:
                per_listener.append(
                    {"index": t.index, "position": t.position, **counts, "closed": t.closed, "other": t.other_frames}
                )

    lat = sorted(shared.latencies)
    frames = sum(t.frames for t in tallies)
    summary = {
        "mode": args.mode,
        "format": getattr(args, "format", "ws"),
        "listeners": args.listeners,
        "subscribed": subscribed,
        "open_s": open_s,
        "failures": {k: v[:10] for k, v in failures.items() if k != "extensions"},
        "failure_counts": {k: len(v) for k, v in failures.items() if k != "extensions"},
        "extensions": sorted(set(failures["extensions"])),
        "expected_per_listener": max(want.values(), default=0),
        "deliveries": len(lat),
        "frames": frames,
        "mean_frame_chars": sum(t.chars for t in tallies) / frames if frames else 0.0,
        "first_receive": shared.first_receive,
        "last_receive": shared.last_receive,
        "p50_s": _percentile(lat, 0.5),
        "p99_s": _percentile(lat, 0.99),
        "by_type": {
            k: {"n": len(v), "p50_s": _percentile(sorted(v), 0.5), "p99_s": _percentile(sorted(v), 0.99)}
            for k, v in shared.by_type.items()
        },
        # Per event: when the first and the last of this process's listeners got it (epoch s), and its origin.
        "events": {str(seq): [shared.origin[seq], *span] for seq, span in shared.first_last.items()},
        "totals": totals,
        "listeners_with_problems": listeners_with_problems,
        "problem_listeners_sample": per_listener,
        "closed_by_server": sum(1 for t in tallies if t.closed is not None),
        "close_reasons": sorted({t.closed for t in tallies if t.closed is not None})[:10],
        "cpu_s_while_receiving": cpu_s,
    }
    with out.with_name(out.name + ".lat").open("wb") as f:
        shared.latencies.tofile(f)
    for kind, values in shared.by_type.items():
        with out.with_name(f"{out.name}.lat.{kind}").open("wb") as f:
            values.tofile(f)
    tmp = out.with_name(out.name + ".json.tmp")
    tmp.write_text(json.dumps(summary))
    tmp.rename(out.with_name(out.name + ".json"))
    print(f"DONE {len(lat)} deliveries", flush=True)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    if client is not None:
        with contextlib.suppress(Exception):
            await client.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_listeners", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    ws = sub.add_parser("ws")
    ws.add_argument("--url", required=True)
    ws.add_argument("--key", required=True)
    rd = sub.add_parser("redis")
    rd.add_argument("--redis-url", required=True)
    rd.add_argument("--channel", required=True)
    rd.add_argument("--format", choices=["bench", "relay"], required=True)
    for p in (ws, rd):
        p.add_argument("--listeners", type=int, required=True)
        p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_run(args))
    else:
        # The API serves on uvloop (uvicorn's choice when it is installed): the listeners run on it too.
        uvloop.run(_run(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
