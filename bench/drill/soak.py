"""The leak soak (`python -m bench.drill --soak 600`): the drill's deployment under steady moderate load and no
faults; every few seconds it samples, for every process, RSS, open files and connections to Postgres, and the
database's connections (pg_stat_activity) and Redis's used_memory; then reports each one's slope per minute
after the warm-up (least squares), with the first and last values.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from bench.drill.cluster import Cluster
from bench.drill.load import Load
from tests.processes import processes_where

SAMPLE_S = 5.0


def _group_pids(pgid: int) -> list[int]:
    """Every process in a process group (a worker's or an API's children too)."""
    return processes_where(2, pgid)


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fd_targets(pid: int) -> list[str]:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    targets = []
    for name in names:
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue
    return targets


def _sockets_to(port: int) -> set[str]:
    """Inodes of the TCP sockets whose remote end is 127.0.0.1:`port` (client sides of connections to it)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if int(cols[2].rsplit(":", 1)[1], 16) == port and cols[3] == "01":  # ESTABLISHED
                        inodes.add(cols[9])
        except OSError:
            continue
    return inodes


def _key_census(url: str) -> dict[str, int]:
    """Keys by prefix (up to the second ':'), to say what Redis memory is made of."""
    client = redis.Redis.from_url(url)
    try:
        census: Counter[str] = Counter()
        for key in client.scan_iter(count=1000):
            census[":".join(key.decode(errors="replace").split(":")[:2])] += 1
        return dict(census)
    finally:
        client.close()


def linear_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value) points, per unit of t."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


@dataclass
class SoakResult:
    seconds: float
    warmup_s: float
    objects: int
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # "process metric" → (t, value)
    redis_keys: dict[str, int] = field(default_factory=dict)  # key prefix → keys, at the end

    def slopes(self) -> dict[str, tuple[float, float, float]]:
        """Per series: (slope per minute after the warm-up, first value after it, last value)."""
        out = {}
        for key, points in sorted(self.series.items()):
            after = [(t / 60, v) for t, v in points if t >= self.warmup_s]
            if len(after) >= 2:
                out[key] = (linear_slope(after), after[0][1], after[-1][1])
        return out

    def summary(self) -> str:
        lines = [
            f"soak: {self.seconds:.0f}s of steady load, {self.objects} objects; slopes per minute after "
            f"{self.warmup_s:.0f}s of warm-up (first → last value)"
        ]
        for key, (slope, first, last) in self.slopes().items():
            lines.append(f"  {key:<34} {slope:+10.2f}/min   ({first:.0f} → {last:.0f})")
        if self.redis_keys:
            top = sorted(self.redis_keys.items(), key=lambda kv: -kv[1])[:8]
            lines.append("  redis keys at the end, by prefix: " + ", ".join(f"{k} {n}" for k, n in top))
        return "\n".join(lines)


def run_soak(seconds: float, *, warmup_s: float = 60.0, threads: int = 4, pace_s: float = 0.25) -> SoakResult:
    """Steady load for `seconds` (`threads` clients, each pausing ~`pace_s` between requests), sampling as it goes."""
    tmp = Path(tempfile.mkdtemp(prefix="switchyard-soak-"))
    print(f"[{time.strftime('%H:%M:%S')}] starting the deployment", flush=True)
    cluster = Cluster(tmp, receiver_fail=0.0, receiver_hang=0.0)
    try:
        assert cluster.postgres is not None
        assert cluster.redis is not None
        load = Load(cluster.api_urls, cluster.key, cluster.receiver.url, threads=threads, seed=3, pace_s=pace_s)
        cluster.receiver.secrets.update(load.prepare())
        result = SoakResult(seconds, warmup_s, 0)
        series: dict[str, list[tuple[float, float]]] = defaultdict(list)
        print(f"[{time.strftime('%H:%M:%S')}] load for {seconds:.0f}s, sampling every {SAMPLE_S:.0f}s", flush=True)
        load.start()
        t0 = time.monotonic()
        pg = psycopg.connect(cluster.postgres.admin_url, autocommit=True)
        try:
            while (t := time.monotonic() - t0) < seconds:
                pg_inodes = _sockets_to(cluster.postgres.port)
                for name, pgid in cluster.live_pids().items():
                    pids = _group_pids(pgid)
                    targets = [target for pid in pids for target in _fd_targets(pid)]
                    series[f"{name} rss_kb"].append((t, sum(_rss_kb(pid) for pid in pids)))
                    series[f"{name} open_files"].append((t, len(targets)))
                    db = sum(1 for target in targets if target.startswith("socket:[") and target[8:-1] in pg_inodes)
                    series[f"{name} db_connections"].append((t, db))
                row = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'switchyard'").fetchone()
                series["postgres connections"].append((t, row[0] if row else 0))
                series["redis used_memory_kb"].append((t, cluster.redis.used_memory() / 1024))
                time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - t0 - t)))
        finally:
            pg.close()
            load.stop()
        result.objects = load.objects()
        result.series = dict(series)
        result.redis_keys = _key_census(cluster.redis.url)
        return result
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
