"""Running the real thing locally, shared by the tests and the benchmarks: ports, polling, databases, processes.

Everything here talks to 127.0.0.1 only, every wait is bounded, and every process is started in its own
process group so that it (and whatever it forked) can be stopped even when a run fails half-way.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]


# Ports handed out by this process. The kernel may give a closed port again at the next bind to port 0: two
# servers of one stack were once given the same port, and the second one's requests reached the first.
_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, and never handed out before by this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = 30,
    interval: float = 0.1,
    what: str = "",
    error: type[Exception] = AssertionError,
) -> Any:
    """Poll until `predicate` returns something truthy; raise `error` naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


# --- Postgres --------------------------------------------------------------------------------------------------


def create_database(admin_url: str, prefix: str) -> tuple[str, str]:
    """A fresh, empty Postgres database named `{prefix}_<random>` next to `admin_url`'s; returns (name, url)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"{admin_url.rsplit('/', 1)[0]}/{name}"


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- processes -------------------------------------------------------------------------------------------------


class Process:
    """A child process with its output in a log file, in its own process group."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_dir: Path,
        *,
        stop_timeout: float = 15,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.stop_timeout = stop_timeout
        self.log_path = log_dir / f"{name}-{secrets.token_hex(3)}.log"
        self._log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the group, SIGKILL it after `timeout` (default: `stop_timeout`), then SIGKILL any leftover."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        # Children of a stopped leader may linger in the group; make sure none does.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first, then ppid, pgrp, ...), or None when
    the process is gone (Linux). The name is in parentheses and may hold spaces: split after its last one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def processes_where(field: int, value: int) -> list[int]:
    """The live (not zombie) processes whose stat field `field` (an index into `stat_fields`) is `value`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(entry)) is not None:
            if fields[0] != "Z" and int(fields[field]) == value:
                found.append(int(entry))
    return found


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    return processes_where(1, pid)


def nice_of(pid: int) -> int:
    """The nice value of a process."""
    fields = stat_fields(pid)
    assert fields is not None, f"no process {pid}"
    return int(fields[16])


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def cli(*args: str) -> list[str]:
    """argv for the `switchyard` command line of this checkout, run by this interpreter."""
    return [sys.executable, "-m", "switchyard", *args]


def wait_http(
    url: str, proc: Process, timeout: float = 60, *, error: type[Exception] = AssertionError, log_tail: int = 4000
) -> None:
    """Poll `url` until it answers below 500; raise `error` with the log's tail if `proc` exits first."""

    def up() -> bool:
        if not proc.alive():
            raise error(f"{proc.name} exited early:\n{proc.log()[-log_tail:]}")
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=timeout, interval=0.1, what=f"{proc.name} at {url}", error=error)
