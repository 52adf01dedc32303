"""The providers/models file: loaded once, validated whole, refused with messages that name file and key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from switchyard.core.errors import ConfigError

TaskType = Literal["chat", "embed", "moderate", "predict"]
Strategy = Literal["weighted", "round_robin", "least_latency", "least_busy", "lowest_cost", "ordered"]
ProviderKind = Literal["openai", "anthropic", "onnx", "kserve", "tfserving"]

# Which task types each provider kind can serve; a model whose deployment cannot serve its type is refused.
KIND_SERVES: dict[str, frozenset[str]] = {
    "openai": frozenset({"chat", "embed", "moderate"}),
    "anthropic": frozenset({"chat"}),
    "onnx": frozenset({"predict"}),
    "kserve": frozenset({"predict"}),
    "tfserving": frozenset({"predict"}),
}
# Kinds that call a server and so need its address.
NEEDS_BASE_URL = frozenset({"kserve", "tfserving"})

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """Token prices are USD per million tokens; ML models are priced per thousand predictions (rows) and/or
    per second of model compute."""

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)
    per_1k_predictions: float = Field(default=0.0, ge=0)
    per_compute_second: float = Field(default=0.0, ge=0)


class ProviderConfig(_Strict):
    """A named provider account."""

    kind: ProviderKind
    api_key: str | None = None
    base_url: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    # onnx only: dynamic micro-batching (1 turns it off) and ONNX Runtime's intra-op threads
    # (default: the cores divided among the worker's processes).
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    intra_op_threads: int | None = Field(default=None, ge=1)
    # Independent SDK clients (connection pools) per worker process; see providers/shards.py.
    client_shards: int = Field(default=8, ge=1, le=64)


class Deployment(_Strict):
    """One concrete (provider, model) that can serve a logical model."""

    provider: str
    model: str
    weight: float = Field(default=1.0, gt=0)
    price: Price = Price()
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)

    @property
    def name(self) -> str:
        """Stable label used in attempts and metrics."""
        return f"{self.provider}/{self.model}"


class ModelConfig(_Strict):
    """A logical model that requests name."""

    type: TaskType
    strategy: Strategy = "ordered"
    deployments: list[Deployment] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)


class AppConfig(_Strict):
    """The whole file."""

    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_references(self) -> AppConfig:
        problems: list[str] = []
        for name, account in self.providers.items():
            if account.kind in NEEDS_BASE_URL and not account.base_url:
                problems.append(f"providers.{name}.base_url: a {account.kind} provider needs the server's base_url")
        for name, model in self.models.items():
            for i, dep in enumerate(model.deployments):
                where = f"models.{name}.deployments[{i}].provider"
                provider = self.providers.get(dep.provider)
                if provider is None:
                    problems.append(f"{where}: unknown provider '{dep.provider}'")
                elif model.type not in KIND_SERVES[provider.kind]:
                    problems.append(
                        f"{where}: provider '{dep.provider}' (kind {provider.kind}) cannot serve {model.type}"
                    )
            for i, fallback in enumerate(model.fallbacks):
                where = f"models.{name}.fallbacks[{i}]"
                other = self.models.get(fallback)
                if other is None:
                    problems.append(f"{where}: unknown model '{fallback}'")
                elif other.type != model.type:
                    problems.append(f"{where}: '{fallback}' is a {other.type} model, not {model.type}")
                elif fallback == name:
                    problems.append(f"{where}: a model cannot fall back to itself")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _substitute_env(node: Any, path: str, problems: list[str]) -> Any:
    """Replace `${NAME}` and `${NAME:-default}` in string values; an unset variable without default is a problem."""
    if isinstance(node, dict):
        return {k: _substitute_env(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = os.environ.get(name)
            if value is None:
                if default is None:
                    problems.append(f"{path}: environment variable {name} is not set")
                    return ""
                return default
            return value

        return _ENV_REF.sub(replace, node)
    return node


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_config(path: Path) -> AppConfig:
    """Read and validate the file; raise ConfigError naming the file, the key and the problem."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (set SWITCHYARD_CONFIG)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'providers' and 'models'")
    problems: list[str] = []
    raw = _substitute_env(raw, "", problems)
    if problems:
        raise ConfigError("\n".join(f"{path}: {p}" for p in problems))
    try:
        config = AppConfig.model_validate(raw)
    except ValidationError as exc:
        lines: list[str] = []
        for err in exc.errors():
            loc = _loc(tuple(err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.extend(f"{path}: {m}" if not loc else f"{path}: {loc}: {m}" for m in msg.split("; "))
        raise ConfigError("\n".join(lines)) from None
    return _resolve_model_files(config, path)


def _resolve_model_files(config: AppConfig, path: Path) -> AppConfig:
    """Local model files (onnx deployments) are found relative to the working directory, else to the config
    file's folder, else to its parent (the project root for `config/switchyard.yaml`); missing ones are refused."""
    problems: list[str] = []
    models = dict(config.models)
    for name, model in config.models.items():
        deployments = list(model.deployments)
        for i, dep in enumerate(model.deployments):
            if config.providers[dep.provider].kind != "onnx":
                continue
            candidates = [Path(dep.model), path.parent / dep.model, path.parent.parent / dep.model]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                problems.append(f"{path}: models.{name}.deployments[{i}].model: model file not found: {dep.model}")
                continue
            deployments[i] = dep.model_copy(update={"model": str(found.resolve())})
        models[name] = model.model_copy(update={"deployments": deployments})
    if problems:
        raise ConfigError("\n".join(problems))
    return config.model_copy(update={"models": models})
