"""What ships inside the package, so that an installed Switchyard runs with nothing beside it: the default
providers/models file, the shared workflow definitions and the small ONNX models the default file names."""

from __future__ import annotations

from pathlib import Path

DEFAULTS_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = DEFAULTS_DIR / "switchyard.yaml"
DEFAULT_WORKFLOWS = DEFAULTS_DIR / "workflows"
MODELS_DIR = DEFAULTS_DIR / "models"
