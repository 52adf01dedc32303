"""The providers/models file: loaded once, validated whole, refused with messages that name file and key."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from switchyard.core.errors import ConfigError
from switchyard.core.guardrail_spec import Guardrails
from switchyard.core.policy import Tier
from switchyard.defaults import DEFAULTS_DIR

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
    # What batch lines pay instead (providers sell batch work cheaper); unset, the same prices.
    batch: Price | None = None


class ProviderConfig(_Strict):
    """A named provider account. `platform` picks the SDK's client for a cloud that hosts the models:
    `azure` (openai kind: `base_url` is the resource endpoint, `api_version` is needed), `bedrock` and
    `vertex` (anthropic kind: `region`, and for Vertex `project_id`)."""

    kind: ProviderKind
    platform: Literal["azure", "bedrock", "vertex"] | None = None
    api_key: str | None = None
    base_url: str | None = None
    api_version: str | None = None
    region: str | None = None
    project_id: str | None = None
    # Bedrock: explicit credentials (else the AWS default chain); Vertex: a token (else Google's default).
    aws_access_key: str | None = None
    aws_secret_key: str | None = None
    aws_session_token: str | None = None
    access_token: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    # Connections to the account per worker process. Large by default: the worker's max_in_flight is the bound
    # meant to hold (a call waiting here for a connection still holds an in-flight slot).
    max_connections: int = Field(default=10_000, ge=1)
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
    # The prompt tokens the model accepts; a prompt estimated larger is routed elsewhere (default: the
    # catalog's figure for well-known models, else no limit).
    max_input_tokens: int | None = Field(default=None, ge=1)
    # predict models with `versions`: the version this deployment serves (several deployments may serve one
    # version, e.g. a local file and a remote server holding the same model, to fail over between).
    version: str | None = Field(default=None, min_length=1, max_length=64)
    # onnx only: the model file's absolute path, found when the config is loaded. `model` is then the file's
    # name, which is what attempts, `/v1/providers` and metrics show: a server's paths are not a client's business.
    _file: str | None = PrivateAttr(default=None)

    @property
    def name(self) -> str:
        """Stable label used in attempts and metrics."""
        return f"{self.provider}/{self.model}"

    @property
    def target(self) -> str:
        """What the provider's adapter is given: the model's name at the provider, or an onnx model's file."""
        return self._file or self.model


class BreakerConfig(_Strict):
    """A deployment's circuit breaker: it opens when at least `min_requests` calls ended in the last
    `window_s` and `failure_rate` of them failed; after `cooldown_s` one probe call is let through
    (half-open), whose success closes it and whose failure opens it again."""

    window_s: float = Field(default=30.0, gt=0)
    min_requests: int = Field(default=5, ge=1)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    cooldown_s: float = Field(default=30.0, gt=0)


class RoutingConfig(_Strict):
    breaker: BreakerConfig = BreakerConfig()


class ImagePreprocessing(_Strict):
    """How an image becomes a predict model's input tensor: decoded, converted to `mode`, resized to `size`
    (width, height), each value times `scale`, minus `mean` and divided by `std` (one value, or one per
    channel), laid out NCHW or NHWC with the batch first. `input` names the model input it fills (unset:
    the model's only input)."""

    input: str | None = None
    size: tuple[int, int] = Field(default=(224, 224))
    mode: Literal["L", "RGB"] = "RGB"
    scale: float = Field(default=1 / 255, gt=0)
    mean: list[float] = Field(default_factory=lambda: [0.0], min_length=1, max_length=3)
    std: list[float] = Field(default_factory=lambda: [1.0], min_length=1, max_length=3)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"

    @model_validator(mode="after")
    def _check(self) -> ImagePreprocessing:
        channels = 1 if self.mode == "L" else 3
        problems = [
            f"{key}: {len(values)} values for a {channels}-channel mode {self.mode} (give 1 or {channels})"
            for key, values in (("mean", self.mean), ("std", self.std))
            if len(values) not in (1, channels)
        ]
        if any(s <= 0 for s in self.std):
            problems.append("std: every value must be > 0")
        if not all(1 <= d <= 4096 for d in self.size):
            problems.append("size: width and height must be within 1..4096")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ModelConfig(_Strict):
    """A logical model that requests name. When every deployment failed or is unavailable, `fallbacks`
    are tried in order; a prompt too long for the model (or a provider's context-length error) goes to
    `context_window_fallbacks`, a content-policy refusal to `content_policy_fallbacks`."""

    type: TaskType
    strategy: Strategy = "ordered"
    deployments: list[Deployment] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    context_window_fallbacks: list[str] = Field(default_factory=list)
    content_policy_fallbacks: list[str] = Field(default_factory=list)
    breaker: BreakerConfig | None = None
    # Guardrails of calls to this model; they replace the top-level ones kind by kind (pii, moderation).
    guardrails: Guardrails | None = None
    # predict only. `labels`: the names of the classes of `scores_output` (unset: the first 2-D output as
    # wide as the labels), so results carry the `top_k` labels with their scores. `image`: the model takes
    # images (see ImagePreprocessing). `versions`: the model's versions and their starting traffic weights;
    # each deployment names its version (weights change at run time: PUT /v1/models/{name}/versions).
    labels: list[str] | None = Field(default=None, min_length=1)
    scores_output: str | None = None
    top_k: int = Field(default=5, ge=1, le=100)
    image: ImagePreprocessing | None = None
    versions: dict[str, float] | None = Field(default=None, min_length=1)

    def version_of(self, deployment: Deployment) -> str | None:
        """The version a deployment serves (None for a model without versions)."""
        return deployment.version if self.versions else None


class AppConfig(_Strict):
    """The whole file."""

    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    routing: RoutingConfig = RoutingConfig()
    # Named budgets (and limits) that keys and tenants may be given by name: `tier: standard`.
    tiers: dict[str, Tier] = Field(default_factory=dict)
    # Guardrails of every model (a model's own `guardrails:` replace them kind by kind).
    guardrails: Guardrails | None = None

    def breaker_for(self, model: str) -> BreakerConfig:
        own = self.models[model].breaker if model in self.models else None
        return own or self.routing.breaker

    @model_validator(mode="after")
    def _check_references(self) -> AppConfig:
        problems: list[str] = []
        for name, account in self.providers.items():
            problems.extend(f"providers.{name}.{p}" for p in _platform_problems(account))
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
            problems.extend(f"models.{name}.{p}" for p in _ml_problems(model))
            for key in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
                for i, fallback in enumerate(getattr(model, key)):
                    where = f"models.{name}.{key}[{i}]"
                    other = self.models.get(fallback)
                    if other is None:
                        problems.append(f"{where}: unknown model '{fallback}'")
                    elif other.type != model.type:
                        problems.append(f"{where}: '{fallback}' is a {other.type} model, not {model.type}")
                    elif fallback == name:
                        problems.append(f"{where}: a model cannot fall back to itself")
        guarded = [("guardrails", self.guardrails)] + [
            (f"models.{name}.guardrails", model.guardrails) for name, model in self.models.items()
        ]
        for where, guardrails in guarded:
            moderation = guardrails.moderation if guardrails is not None else None
            if moderation is not None:
                other = self.models.get(moderation.model)
                if other is None:
                    problems.append(f"{where}.moderation.model: unknown model '{moderation.model}'")
                elif other.type != "moderate":
                    problems.append(
                        f"{where}.moderation.model: '{moderation.model}' is a {other.type} model, not moderate"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _ml_problems(model: ModelConfig) -> list[str]:
    """What is wrong with a model's ML settings (labels, images, versions)."""
    problems: list[str] = []
    if model.type != "predict":
        for key in ("labels", "scores_output", "image", "versions"):
            if getattr(model, key) is not None:
                problems.append(f"{key}: only predict models take {key}")
        return problems
    if model.versions is None:
        problems.extend(
            f"deployments[{i}].version: the model has no `versions`"
            for i, dep in enumerate(model.deployments)
            if dep.version is not None
        )
        return problems
    for version, weight in model.versions.items():
        if weight < 0:
            problems.append(f"versions.{version}: a weight must be >= 0")
        if not any(d.version == version for d in model.deployments):
            problems.append(f"versions.{version}: no deployment serves this version")
    if sum(model.versions.values()) <= 0:
        problems.append("versions: at least one weight must be > 0")
    for i, dep in enumerate(model.deployments):
        if dep.version not in model.versions:
            problems.append(
                f"deployments[{i}].version: must be one of the model's versions ({', '.join(model.versions)})"
            )
    return problems


def _platform_problems(account: ProviderConfig) -> list[str]:
    """What a provider account lacks for its kind and platform."""
    if account.kind in NEEDS_BASE_URL and not account.base_url:
        return [f"base_url: a {account.kind} provider needs the server's base_url"]
    platforms = {"openai": {"azure"}, "anthropic": {"bedrock", "vertex"}}.get(account.kind, set())
    if account.platform is not None and account.platform not in platforms:
        return [f"platform: a {account.kind} provider cannot run on {account.platform}"]
    if account.platform == "azure" and not (account.base_url and account.api_version):
        return ["base_url: an Azure OpenAI provider needs base_url (the resource endpoint) and api_version"]
    if account.platform == "bedrock" and not account.region:
        return ["region: a Bedrock provider needs its AWS region"]
    if account.platform == "vertex" and not (account.region and account.project_id):
        return ["region: a Vertex provider needs region and project_id"]
    return []


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
    return resolve_catalog(_resolve_model_files(config, path))


def _resolve_model_files(config: AppConfig, path: Path) -> AppConfig:
    """Local model files (onnx deployments) are found relative to the working directory, else to the config
    file's folder, else to its parent (a project root for `config/x.yaml`), else among the models packaged with
    Switchyard (`models/risk_classifier.onnx` always names the shipped one); missing ones are refused. The
    deployment's `model` becomes the file's name, its path is kept aside (`Deployment.target`)."""
    problems: list[str] = []
    models = dict(config.models)
    # (provider, file name) -> the file it names: two files of one name would be one deployment to the router.
    named: dict[tuple[str, str], Path] = {}
    for name, model in config.models.items():
        deployments = list(model.deployments)
        for i, dep in enumerate(model.deployments):
            if config.providers[dep.provider].kind != "onnx":
                continue
            where = f"{path}: models.{name}.deployments[{i}].model"
            candidates = [
                Path(dep.model),
                path.parent / dep.model,
                path.parent.parent / dep.model,
                DEFAULTS_DIR / dep.model,
            ]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                problems.append(f"{where}: model file not found: {dep.model}")
                continue
            file = found.resolve()
            other = named.setdefault((dep.provider, file.name), file)
            if other != file:
                problems.append(
                    f"{where}: {file} has the name of {other}, which provider {dep.provider} serves already "
                    "(deployments are known by their file's name): rename one, or serve it from another provider"
                )
                continue
            located = dep.model_copy(update={"model": file.name})
            located._file = str(file)
            deployments[i] = located
        models[name] = model.model_copy(update={"deployments": deployments})
    if problems:
        raise ConfigError("\n".join(problems))
    return config.model_copy(update={"models": models})


# --- the catalog of well-known models ------------------------------------------------------------------------

CATALOG = Path(__file__).resolve().parent.parent / "providers" / "catalog.yaml"
_SUFFIXES = (
    re.compile(r"-v\d+(:\d+)?$"),  # Bedrock: anthropic.claude-3-5-haiku-20241022-v1:0
    re.compile(r"@.*$"),  # Vertex: claude-3-5-haiku@20241022
    re.compile(r"-\d{8}$|-\d{4}-\d{2}-\d{2}$"),  # dated snapshots
    re.compile(r"-latest$"),
)


@lru_cache(maxsize=1)
def catalog() -> tuple[str, dict[str, dict[str, float]]]:
    """(as_of, {model: {price fields and max_input_tokens}}) from the shipped catalog."""
    raw = yaml.safe_load(CATALOG.read_text())
    return str(raw["as_of"]), {str(k): dict(v) for k, v in raw["models"].items()}


def catalog_entry(provider_model: str) -> dict[str, float] | None:
    """The catalog's figures for a provider's model name (router prefixes, versions and dates dropped)."""
    _, models = catalog()
    name = provider_model.lower().rsplit("/", 1)[-1]
    name = re.sub(r"^([a-z]{2}\.)?anthropic\.", "", name)
    for pattern in (None, *_SUFFIXES):
        if pattern is not None:
            name = pattern.sub("", name)
        if name in models:
            return models[name]
    return None


def resolve_catalog(config: AppConfig) -> AppConfig:
    """Deployments without a `price` (or `max_input_tokens`) take the catalog's, when it knows the model."""
    models = dict(config.models)
    for name, model in config.models.items():
        deployments = []
        for dep in model.deployments:
            entry = catalog_entry(dep.model) if config.providers[dep.provider].kind in ("openai", "anthropic") else None
            update: dict[str, Any] = {}
            if entry is not None and "price" not in dep.model_fields_set:
                update["price"] = Price(**{k: v for k, v in entry.items() if k != "max_input_tokens"})
            if entry is not None and dep.max_input_tokens is None and "max_input_tokens" in entry:
                update["max_input_tokens"] = int(entry["max_input_tokens"])
            deployments.append(dep.model_copy(update=update) if update else dep)
        models[name] = model.model_copy(update={"deployments": deployments})
    return config.model_copy(update={"models": models})
