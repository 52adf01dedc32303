"""The chaos drill: mixed load on two APIs and three workers while faults are injected, then every promise checked.

`run_drill(...)` is what `python -m bench.drill` and tests/test_drill.py call; it returns a `DrillResult` whose
`ok` says whether nothing was lost, duplicated or left unexplained.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.drill.checks import Report, check, last_settled_at, wait_settled
from bench.drill.cluster import Cluster
from bench.drill.faults import Fault, Injector
from bench.drill.load import Accepted, Load


@dataclass
class DrillResult:
    faults: list[Fault]
    accepted: Accepted
    report: Report
    still_moving: dict[str, int]
    load_s: float
    recovery_s: float  # from the last fault's end to the last object settled
    after_load_s: float  # from the load's end to the last object settled
    logs: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.report.problems and not any(self.still_moving.values())

    def summary(self) -> str:
        """What was injected, the counts, what broke, the recovery time: the drill's printed result."""
        lines = [f"faults injected: {len(self.faults)}"]
        by_kind = Counter(f.kind for f in self.faults)
        lines.append("  " + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())))
        for f in self.faults:
            note = f" ({f.error})" if f.error else ""
            lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(f.at))} {f.kind} {f.target}"
                         f" back after {f.recovered - f.at:.1f}s{note}")  # fmt: skip
        a = self.accepted
        lines.append(
            f"load: {self.load_s:.0f}s, {a.objects} objects accepted ({len(a.tasks)} task ids, {len(a.runs)} runs, "
            f"{len(a.batches)} batches); sent {sum(a.sent.values())} requests"
        )
        lines.append("  sent: " + ", ".join(f"{k} {n}" for k, n in sorted(a.sent.items())))
        if a.refused:
            lines.append("  not accepted: " + ", ".join(f"{k} {n}" for k, n in sorted(a.refused.items())))
        lines.append("checked:")
        for key, n in sorted(self.report.counts.items()):
            lines.append(f"  {key}: {n}")
        if self.report.failures:
            lines.append("failed for a named reason:")
            for key, n in sorted(self.report.failures.items()):
                lines.append(f"  {key}: {n}")
        others = len(self.report.problems) - self.report.lost - self.report.duplicated
        lines.append(f"lost: {self.report.lost}, duplicated: {self.report.duplicated}, other problems: {others}")
        if any(self.still_moving.values()):
            lines.append(f"still moving at the deadline: {self.still_moving}")
        for problem in self.report.problems[:40]:
            lines.append(f"  ! {problem}")
        lines.append(
            f"recovery: {self.recovery_s:.1f}s from the last fault to the last object settled "
            f"({self.after_load_s:.1f}s after the load stopped)"
        )
        lines.append("RESULT: " + ("OK" if self.ok else "PROBLEMS FOUND"))
        return "\n".join(lines)


def run_drill(
    *,
    objects: int,
    faults: int,
    threads: int = 6,
    gap_s: float = 6.0,
    settle_s: float = 180.0,
    seed: int = 1,
    tmp: Path | None = None,
    log: bool = True,
) -> DrillResult:
    """Send at least `objects` objects while injecting `faults` faults, then check everything."""

    def say(msg: str) -> None:
        if log:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    tmp = tmp or Path(tempfile.mkdtemp(prefix="switchyard-drill-"))
    say("starting postgres, redis, the fake provider, 2 APIs and 3 workers")
    cluster = Cluster(tmp)
    try:
        load = Load(cluster.api_urls, cluster.key, cluster.receiver.url, threads=threads, seed=seed)
        cluster.receiver.secrets.update(load.prepare())
        injector = Injector(cluster, count=faults, gap_s=gap_s, seed=seed)
        say(f"load: {threads} client threads until {objects} objects; {faults} faults, one every ~{gap_s:.0f}s")
        t0 = time.monotonic()
        load.start()
        injector.start()
        next_note = time.monotonic() + 15
        while load.objects() < objects or not injector.done():
            time.sleep(0.2)
            if time.monotonic() > next_note:
                say(f"  {load.objects()} objects, {len(injector.faults)} faults")
                next_note += 15
        load.stop()
        injector.stop()
        load_s = time.monotonic() - t0
        load_end = time.time()
        say(f"load done ({load.objects()} objects); waiting for everything to settle")
        still = wait_settled(cluster.postgres.url if cluster.postgres else "", settle_s)
        assert cluster.postgres is not None
        settled = last_settled_at(cluster.postgres.url)
        # Deliveries in flight may still be answered: give the receiver's log a moment to hold the last ones.
        time.sleep(1.0)
        report = check(cluster.postgres.url, load.accepted, cluster.receiver.snapshot(), cluster.fake_tags())
        recovery = max(0.0, settled - injector.last_fault_at())
        after_load = max(0.0, settled - load_end)
        logs = [p.log_path for p in cluster.processes]
        result = DrillResult(injector.faults, load.accepted, report, still, load_s, recovery, after_load, logs)
    finally:
        cluster.close()
    server_errors = any(" 5" in k and k.endswith(("500", "502", "504")) for k in result.accepted.refused)
    if result.ok and not server_errors:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        say(f"the processes' logs are kept in {tmp}")
    return result
