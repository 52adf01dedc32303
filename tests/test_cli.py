"""The command line beside a running `switchyard dev`: the same database and config with no setting at all, and
failures told in one line, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import Process, chat, cli, free_port, wait_task, wait_until


def _clean_env() -> dict[str, str]:
    """The environment of a newcomer's shell: no SWITCHYARD_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), cwd=cwd, env=env or _clean_env(), capture_output=True, text=True, timeout=120, check=False
    )


@dataclass
class Dev:
    folder: Path
    url: str
    key: str
    proc: Process


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    folder = tmp_path_factory.mktemp("project")
    logs = tmp_path_factory.mktemp("dev-logs")
    port, fake_port = free_port(), free_port()
    proc = Process(
        "dev", cli("dev", "--port", str(port), "--fake-port", str(fake_port)), _clean_env(), logs, cwd=folder
    )
    try:

        def printed() -> re.Match[str] | None:
            assert proc.alive(), proc.log()[-4000:]
            return re.search(r"URL: (\S+).*?API key: (\S+)", proc.log(), re.S)

        match = wait_until(printed, timeout=90, what="switchyard dev to print its URL and key")
        yield Dev(folder, match.group(1), match.group(2), proc)
    finally:
        proc.stop()


def test_keys_create_beside_dev_makes_a_key_the_api_accepts(dev: Dev) -> None:
    done = _run(dev.folder, "keys", "create", "--tenant", "other", "--role", "viewer")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("sy_")
    # It went into dev's database (.switchyard/switchyard.db), not a stray file beside it.
    assert not (dev.folder / "switchyard.db").exists()
    with httpx.Client(base_url=dev.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as viewer:
        assert viewer.get("/v1/tasks").json() == {"data": [], "next": None}
        denied = viewer.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("x")})
        assert denied.status_code == 403, denied.text


def test_migrate_beside_dev_finds_its_database(dev: Dev) -> None:
    done = _run(dev.folder, "migrate")
    assert done.returncode == 0, done.stderr
    assert str(dev.folder / ".switchyard" / "switchyard.db") in done.stdout


def test_dev_log_is_quiet_and_truthful_at_info(dev: Dev) -> None:
    with httpx.Client(base_url=dev.url, headers={"Authorization": f"Bearer {dev.key}"}, timeout=30) as client:
        # Start-up's lines (the worker's banner, leadership) are all written once the duties have run.
        wait_until(
            lambda: client.get("/readyz").json()["checks"].get("duties") == "ok",
            timeout=60,
            what="the worker to start and lead the periodic duties",
        )
        before = len(dev.proc.log().splitlines())
        ids = [
            client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat(f"q{i}")}).json()[
                "id"
            ]
            for i in range(20)
        ]
        for task_id in ids:
            assert wait_task(client, task_id, timeout=60)["status"] == "succeeded"
    log = dev.proc.log()
    added = log.splitlines()[before:]
    # Nothing per task or per provider call at INFO.
    assert len(added) < 5, "\n".join(added)
    assert "No hostname was supplied" not in log
    # structlog's lines carry their own level: an info line is never labelled WARNING.
    assert not re.search(r"WARNING.*\[info", log), log[-3000:]
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("keys", "create", "--tenant", "t"), {}, "no database at"),
        (("worker",), {}, "no database at"),
        (("keys", "create", "--tenant", "t"), {"SWITCHYARD_MAX_BODY_BYTES": "3"}, "SWITCHYARD_MAX_BODY_BYTES"),
        (
            ("keys", "create", "--tenant", "t"),
            {"SWITCHYARD_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
            "database error",
        ),
        (("migrate",), {"SWITCHYARD_DATABASE_URL": "mysql://x"}, "SWITCHYARD_DATABASE_URL"),
    ],
)
def test_cli_failures_are_one_line(tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str) -> None:
    done = _run(tmp_path, *args, env={**_clean_env(), **env})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    # Nothing left behind in the folder it ran in.
    assert list(tmp_path.iterdir()) == []


def test_cli_names_a_database_without_tables(tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere.db"
    empty.touch()
    done = _run(
        tmp_path,
        "keys",
        "create",
        "--tenant",
        "t",
        env={**_clean_env(), "SWITCHYARD_DATABASE_URL": f"sqlite:///{empty}"},
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"switchyard: error: the database (sqlite:///{empty}) has no Switchyard tables: run `switchyard migrate` "
        "first (no such table: tenants)"
    ]
