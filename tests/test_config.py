"""The providers/models file is validated at start-up; a bad one stops the process with a precise message."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from switchyard.core.config import load_config
from switchyard.core.errors import ConfigError
from switchyard.defaults import DEFAULT_CONFIG, MODELS_DIR
from switchyard.providers.registry import ProviderSet
from tests.support import ROOT, cli

GOOD = """
providers:
  p: {kind: openai, base_url: "http://127.0.0.1:1/v1", api_key: "${TEST_SY_KEY:-none}"}
models:
  m: {type: chat, deployments: [{provider: p, model: x}]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switchyard.yaml"
    path.write_text(text)
    return path


def test_good_file_loads_with_env_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.providers["p"].api_key == "none"
    assert config.models["m"].deployments[0].name == "p/x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("provider: p,", "provider: q,"), "models.m.deployments[0].provider: unknown provider 'q'"),
        (GOOD.replace("type: chat", "type: dance"), "models.m.type: Input should be"),
        (GOOD.replace("kind: openai", "kind: openai, colour: red"), "providers.p.colour: unknown key"),
        (
            GOOD.replace("${TEST_SY_KEY:-none}", "${TEST_SY_UNSET_VAR}"),
            "providers.p.api_key: environment variable TEST_SY_UNSET_VAR is not set",
        ),
        (GOOD.replace("model: x}]}", "model: x}], fallbacks: [nope]}"), "models.m.fallbacks[0]: unknown model 'nope'"),
        (GOOD.replace("kind: openai", "kind: anthropic").replace("type: chat", "type: embed"), "cannot serve embed"),
        ("providers: [1, 2", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
    ],
)
def test_bad_file_names_file_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")


def test_worker_and_api_refuse_to_start_on_a_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("provider: p,", "provider: ghost,"))
    env = {"SWITCHYARD_CONFIG": str(path), "PATH": "/usr/bin:/bin"}
    for command in (cli("api", "--port", "1"), cli("worker", "--queues", "provider")):
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stdout + done.stderr
        assert str(path) in done.stderr
        assert "unknown provider 'ghost'" in done.stderr


def test_shipped_config_files_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_FAKE_URL", "http://127.0.0.1:8911")
    for path in [DEFAULT_CONFIG, *sorted((ROOT / "config").glob("*.yaml"))]:
        # Every provider's client can be made from it (the SDK's Azure, Bedrock and Vertex clients too).
        ProviderSet(load_config(path)).close()


ONNX = """
providers:
  onnx: {{kind: onnx}}
models:
  a: {{type: predict, deployments: [{{provider: onnx, model: "{a}"}}]}}
  b: {{type: predict, deployments: [{{provider: onnx, model: "{b}"}}]}}
"""


def test_onnx_deployment_is_named_by_its_file_and_keeps_the_path_aside(tmp_path: Path) -> None:
    shipped = MODELS_DIR / "risk_classifier.onnx"
    config = load_config(write(tmp_path, ONNX.format(a=shipped, b="models/risk_classifier.onnx")))
    a, b = config.models["a"].deployments[0], config.models["b"].deployments[0]
    assert a.model == "risk_classifier.onnx"
    assert a.name == "onnx/risk_classifier.onnx"
    assert a.target == str(shipped.resolve())
    # The same file under two spellings is one deployment (one breaker, one session).
    assert b.name == a.name
    assert b.target == a.target


def test_two_onnx_files_of_one_name_on_one_provider_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "risk_classifier.onnx"
    other.parent.mkdir()
    other.write_bytes((MODELS_DIR / "risk_classifier.onnx").read_bytes())
    path = write(tmp_path, ONNX.format(a=MODELS_DIR / "risk_classifier.onnx", b=other))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: models.b.deployments[0].model:" in str(info.value)
    assert "serves already" in str(info.value)
