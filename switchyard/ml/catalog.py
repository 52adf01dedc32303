"""Signatures of the configured predict models, known to the API so it can check inputs and list them."""

from __future__ import annotations

from switchyard.core.config import AppConfig
from switchyard.ml.signature import Signature, read_onnx_signature


def model_signatures(config: AppConfig) -> dict[str, Signature]:
    """A predict model's signature comes from its first local ONNX deployment. A model served only by remote
    servers has none here; its inputs are then checked by the server."""
    signatures: dict[str, Signature] = {}
    for name, model in config.models.items():
        if model.type != "predict":
            continue
        for dep in model.deployments:
            if config.providers[dep.provider].kind == "onnx":
                signatures[name] = read_onnx_signature(dep.target)
                break
    return signatures
