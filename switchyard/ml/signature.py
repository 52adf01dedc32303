"""A model's inputs and outputs (names, dtypes, shapes), read from the model itself, and the check of a
request's inputs against them — so a wrong name, shape or dtype is a 422 naming the input, not a failed task."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import onnx

from switchyard.core.errors import InvalidRequest

# ONNX tensor element types we accept, as numpy dtypes.
_ONNX_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.STRING: "str",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | None, ...]  # None: any size (the batch dimension, usually)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": [t.as_dict() for t in self.inputs], "outputs": [t.as_dict() for t in self.outputs]}


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(value.name, _ONNX_DTYPES.get(tensor.elem_type, "unknown"), dims)


@lru_cache(maxsize=64)
def read_onnx_signature(path: str) -> Signature:
    """The signature declared by an ONNX file (graph inputs that are not initializers)."""
    model = onnx.load(path, load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in initializers)
    return Signature(inputs, tuple(_spec(v) for v in model.graph.output))


def check_inputs(signature: Signature, inputs: dict[str, Any], *, param: str = "input.inputs") -> dict[str, np.ndarray]:
    """Arrays of the declared dtypes and shapes, or InvalidRequest naming the offending input."""
    declared = {t.name: t for t in signature.inputs}
    for name in inputs:
        if name not in declared:
            raise InvalidRequest(
                f"unknown input '{name}'; the model takes: {', '.join(declared)}", param=f"{param}.{name}"
            )
    arrays: dict[str, np.ndarray] = {}
    rows: int | None = None
    for spec in signature.inputs:
        where = f"{param}.{spec.name}"
        if spec.name not in inputs:
            raise InvalidRequest(f"input '{spec.name}' is required ({_describe(spec)})", param=where)
        array = _as_array(inputs[spec.name], spec, where)
        if array.ndim != len(spec.shape) or any(
            want is not None and got != want for got, want in zip(array.shape, spec.shape, strict=True)
        ):
            raise InvalidRequest(
                f"input '{spec.name}' has shape {list(array.shape)}; the model expects {_describe(spec)}", param=where
            )
        if array.ndim and (rows is not None and array.shape[0] != rows):
            raise InvalidRequest(f"input '{spec.name}' has {array.shape[0]} rows where others have {rows}", param=where)
        rows = array.shape[0] if array.ndim else rows
        if array.ndim and array.shape[0] == 0:
            raise InvalidRequest(f"input '{spec.name}' has no rows", param=where)
        arrays[spec.name] = array
    return arrays


def _as_array(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """Convert without silent damage: no strings for numbers, no fractions for integers, no ragged lists."""
    try:
        raw = np.asarray(value)
    except ValueError:
        raw = np.asarray([], dtype=object)  # ragged: refused below
    if spec.dtype == "str":
        return raw.astype(object)
    kind = raw.dtype.kind
    if kind not in "biuf" or (raw.size == 0 and raw.ndim == 0):
        raise InvalidRequest(f"input '{spec.name}' must be a regular array of numbers, {_describe(spec)}", param=where)
    if np.dtype(spec.dtype).kind in "iu" and kind == "f" and not np.all(np.mod(raw, 1) == 0):
        raise InvalidRequest(f"input '{spec.name}' must hold integers, {_describe(spec)}", param=where)
    return raw.astype(spec.dtype)


def _describe(spec: TensorSpec) -> str:
    dims = ", ".join("N" if d is None else str(d) for d in spec.shape)
    return f"{spec.dtype} [{dims}]"
