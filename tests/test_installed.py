"""Installed, not cloned: a wheel built from this repository, installed into a fresh virtual environment outside
it with its dependencies from the package index, runs `switchyard dev` in an empty folder. Migrations, the default
config, the shared workflows, the ONNX models and the docs' assets must all come with the package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, Process, chat, free_port, wait_task, wait_until


@dataclass
class Installed:
    venv: Path
    folder: Path
    url: str
    key: str


def _build_wheel(tmp: Path) -> Path:
    # From a copy holding only what the build reads, so nothing of the checkout (build/, *.egg-info) is touched
    # and nothing beside the package (config/, tests/) can leak in.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "switchyard", src / "switchyard", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("switchyard-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("installed")
    wheel = _build_wheel(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = tmp / "empty"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHYARD_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    port, fake_port = free_port(), free_port()
    argv = [str(venv / "bin" / "switchyard"), "dev", "--port", str(port), "--fake-port", str(fake_port)]
    proc = Process("installed-dev", argv, env, tmp, cwd=folder)
    try:

        def printed() -> re.Match[str] | None:
            assert proc.alive(), proc.log()[-4000:]
            return re.search(r"URL: (\S+).*?API key: (\S+)", proc.log(), re.S)

        match = wait_until(printed, timeout=120, what="the installed switchyard dev to print its URL and key")
        yield Installed(venv, folder, match.group(1), match.group(2))
    finally:
        proc.stop()


def outside_env() -> dict[str, str]:
    """The environment of a user of the installed package: none of our settings, no PYTHONPATH into a checkout."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHYARD_", "PYTHONPATH"))}


def test_the_installed_package_is_the_one_imported(installed: Installed) -> None:
    done = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import switchyard; print(switchyard.__file__)"],
        cwd=installed.folder,
        env=outside_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip().startswith(str(installed.venv)), done.stdout
    assert not done.stdout.strip().startswith(str(ROOT))


def test_installed_dev_serves_tasks_models_and_workflows(installed: Installed) -> None:
    with httpx.Client(
        base_url=installed.url, headers={"Authorization": f"Bearer {installed.key}"}, timeout=30
    ) as client:
        task_id = client.post(
            "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("installed")}
        ).json()["id"]
        task = wait_task(client, task_id, timeout=90)
        assert task["status"] == "succeeded", task
        assert task["result"]["content"] == "echo: installed"
        # The packaged ONNX model answers; the packaged workflows were loaded at start-up.
        predicted = client.post(
            "/v1/predict/risk-classifier",
            json={"inputs": {"features": [[0.9, 0.2, 68.4, 1.0, 2.0, 0.14, 0.05, 286.5]]}},
        )
        assert predicted.status_code == 200, predicted.text
        assert len(predicted.json()["outputs"]["probabilities"][0]) == 3
        names = {w["name"] for w in client.get("/v1/workflows").json()["data"]}
        assert {"risk_analysis", "scenario_generation"} <= names
        # The interactive docs' assets come with the installed packages, not from a CDN.
        assert "/static/docs/swagger-ui-bundle.js" in client.get("/docs").text
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            served = client.get(f"/static/docs/{asset}")
            assert served.status_code == 200, asset
            assert len(served.content) > 10_000, asset
    # Everything the service wrote is in the data directory of the folder it ran in.
    assert sorted(p.name for p in installed.folder.iterdir()) == [".switchyard"]
    assert (installed.folder / ".switchyard" / "switchyard.db").is_file()


def test_installed_cli_beside_dev_finds_the_same_database(installed: Installed) -> None:
    done = subprocess.run(
        [str(installed.venv / "bin" / "switchyard"), "keys", "create", "--tenant", "second", "--role", "member"],
        cwd=installed.folder,
        env=outside_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert httpx.get(f"{installed.url}/v1/tasks", headers={"Authorization": f"Bearer {key}"}).status_code == 200
