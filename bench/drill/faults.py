"""The faults the drill injects at random moments: SIGKILL of a worker, a Redis restart that loses its data, a
Postgres crash and restart, SIGKILL of an API process while requests are in flight."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.drill.cluster import API_COUNT, WORKER_COUNT, Cluster

# kind → weight, once every kind has had its turn
WEIGHTS = {"kill_worker": 5, "kill_api": 2, "restart_redis": 2, "restart_postgres": 2}


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # wall clock, when it was injected
    recovered: float = 0.0  # wall clock, when the process(es) were back
    error: str | None = None


class Injector:
    """Injects `count` faults, one every `gap_s` (± half), each kind at least once; waits for each recovery."""

    def __init__(self, cluster: Cluster, *, count: int, gap_s: float, seed: int) -> None:
        self.cluster = cluster
        self.count = count
        self.gap_s = gap_s
        self.rng = random.Random(seed)
        self.faults: list[Fault] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drill-faults", daemon=True)
        # Replacements start in threads of their own, so that the next fault may come while one is starting.
        self._restarts: list[threading.Thread] = []

    def start(self) -> None:
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive() and not any(t.is_alive() for t in self._restarts)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(300)
        for thread in self._restarts:
            thread.join(300)

    def last_fault_at(self) -> float:
        return max((f.recovered or f.at for f in self.faults), default=0.0)

    def _plan(self) -> list[str]:
        first = list(WEIGHTS)
        self.rng.shuffle(first)
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        rest = self.rng.choices(kinds, weights, k=max(0, self.count - len(first)))
        return (first + rest)[: self.count]

    def _loop(self) -> None:
        for kind in self._plan():
            if self._stop.wait(self.rng.uniform(0.5 * self.gap_s, 1.5 * self.gap_s)):
                return
            fault = Fault(kind, "", time.time())
            self.faults.append(fault)
            try:
                getattr(self, "_" + kind)(fault)
            except Exception as exc:  # record it and go on: the checks will say what it cost
                fault.error = f"{type(exc).__name__}: {exc}"
                fault.recovered = time.time()

    def _up(self, prefix: str, count: int, *, need: int) -> list[int]:
        """The indexes of `prefix` processes that are up, once at least `need` of them are (waits for that)."""
        deadline = time.monotonic() + 180
        while True:
            up = [i for i in range(count) if f"{prefix}{i}" not in self._pending()]
            if len(up) >= need or time.monotonic() > deadline or self._stop.wait(0.5):
                return up or list(range(count))

    def _pending(self) -> set[str]:
        """Processes whose replacement is not up yet."""
        return {t.name.removeprefix("drill-restart-") for t in self._restarts if t.is_alive()}

    def _later(self, fault: Fault, down_s: float, restart: Callable[[], None]) -> None:
        """Run `restart` after `down_s` in a thread; the fault has recovered when it returns."""

        def run() -> None:
            time.sleep(down_s)
            try:
                restart()
            except Exception as exc:
                fault.error = f"{type(exc).__name__}: {exc}"
            fault.recovered = time.time()

        thread = threading.Thread(target=run, name=f"drill-restart-{fault.target}", daemon=True)
        thread.start()
        self._restarts.append(thread)

    def _kill_worker(self, fault: Fault) -> None:
        # A worker is killed once it is up: one still starting (its replacement pending) is left alone.
        i = self.rng.choice(self._up("worker", WORKER_COUNT, need=1))
        fault.target = f"worker{i}"
        self.cluster.kill_worker(i)
        # A replacement comes some time later, as an orchestrator's restart would; the others carry on meanwhile.
        self._later(fault, self.rng.uniform(0.5, 3.0), lambda: self.cluster.start_worker(i))

    def _kill_api(self, fault: Fault) -> None:
        # One API stays up: the other's clients are the ones cut off mid-request.
        i = self.rng.choice(self._up("api", API_COUNT, need=API_COUNT))
        fault.target = f"api{i}"
        self.cluster.kill_api(i)
        self._later(fault, self.rng.uniform(0.5, 2.0), lambda: self.cluster.start_api(i))

    def _restart_redis(self, fault: Fault) -> None:
        fault.target = "redis"
        assert self.cluster.redis is not None
        self.cluster.redis.crash_restart(down_s=self.rng.uniform(0.2, 2.0))
        fault.recovered = time.time()

    def _restart_postgres(self, fault: Fault) -> None:
        fault.target = "postgres"
        assert self.cluster.postgres is not None
        self.cluster.postgres.crash_restart()
        fault.recovered = time.time()
