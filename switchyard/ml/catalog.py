"""Signatures of the configured predict models, known to the API so it can check inputs and list them, and
the checks of a request's pinned version."""

from __future__ import annotations

from collections.abc import Mapping

from switchyard.core.config import AppConfig, ModelConfig
from switchyard.core.errors import InvalidRequest
from switchyard.ml.signature import Signature, read_onnx_signature
from switchyard.providers.router import candidates


def model_signatures(config: AppConfig) -> dict[str, Signature]:
    """A predict model's signature comes from its first local ONNX deployment. A model served only by remote
    servers has none here; its inputs are then checked by the server. A model with versions also has one
    per version, under `name@version` (the plain name holds its first deployment's)."""
    signatures: dict[str, Signature] = {}
    for name, model in config.models.items():
        if model.type != "predict":
            continue
        for dep in model.deployments:
            if config.providers[dep.provider].kind != "onnx":
                continue
            signatures.setdefault(name, read_onnx_signature(dep.target))
            if model.versions and dep.version is not None:
                signatures.setdefault(f"{name}@{dep.version}", read_onnx_signature(dep.target))
    return signatures


def signature_for(signatures: Mapping[str, Signature], name: str, version: str | None) -> Signature | None:
    """The signature a request's inputs are checked against: its pinned version's, else the model's."""
    if version is not None and f"{name}@{version}" in signatures:
        return signatures[f"{name}@{version}"]
    return signatures.get(name)


def check_version(name: str, model: ModelConfig, version: str, pinned_provider: str | None) -> None:
    """A pinned version must be one of the model's, served by the pinned provider if there is one."""
    if not model.versions:
        raise InvalidRequest(f"model '{name}' has no versions", param="options.version")
    if version not in model.versions:
        raise InvalidRequest(
            f"model '{name}' has no version '{version}' (it has: {', '.join(model.versions)})", param="options.version"
        )
    if not candidates(model, pinned_provider, version):
        raise InvalidRequest(
            f"version '{version}' of '{name}' has no deployment on provider '{pinned_provider}'",
            param="options.version",
        )
