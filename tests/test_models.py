"""The ONNX models in models/ load in onnxruntime, have the documented signatures (docs/models.md) and reproduce
the scikit-learn outputs recorded in models/<name>.reference.json by scripts/build_models.py.

Only onnxruntime and numpy are needed here: scikit-learn's answers come from the reference files, not from a retrain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from switchyard.defaults import MODELS_DIR

MAX_BYTES = 300 * 1024
RTOL = ATOL = 1e-4
N_REFERENCE = 16


@dataclass(frozen=True)
class Tensor:
    name: str
    type: str  # as onnxruntime reports it, e.g. "tensor(float)"
    shape: tuple[int | None, ...]  # None = dynamic batch dimension
    exact: bool = False  # compared exactly (labels) rather than within RTOL/ATOL


@dataclass(frozen=True)
class Spec:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


# The signatures documented in docs/models.md.
SPECS: dict[str, Spec] = {
    "risk_classifier": Spec(
        inputs=(Tensor("features", "tensor(float)", (None, 8)),),
        outputs=(
            Tensor("label", "tensor(int64)", (None,), exact=True),
            Tensor("probabilities", "tensor(float)", (None, 3)),
        ),
    ),
    "anomaly_detector": Spec(
        inputs=(Tensor("features", "tensor(float)", (None, 6)),),
        outputs=(
            Tensor("label", "tensor(int64)", (None, 1), exact=True),
            Tensor("scores", "tensor(float)", (None, 1)),
        ),
    ),
    "revenue_regressor": Spec(
        inputs=(Tensor("features", "tensor(float)", (None, 5)),),
        outputs=(Tensor("prediction", "tensor(float)", (None, 1)),),
    ),
}
NAMES = sorted(SPECS)


@cache
def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(MODELS_DIR / f"{name}.onnx"), providers=["CPUExecutionProvider"])


@cache
def reference(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MODELS_DIR / f"{name}.reference.json").read_text())
    return data


def reference_inputs(name: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.asarray(reference(name)["inputs"], dtype=np.float32)


def run(name: str, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
    sess = session(name)
    out_names = [o.name for o in sess.get_outputs()]
    return dict(zip(out_names, sess.run(out_names, {"features": x}), strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_file_is_small(name: str) -> None:
    assert (MODELS_DIR / f"{name}.onnx").stat().st_size < MAX_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_as_documented(name: str) -> None:
    sess, spec = session(name), SPECS[name]
    got_in = [(i.name, i.type, tuple(i.shape)) for i in sess.get_inputs()]
    got_out = [(o.name, o.type, tuple(o.shape)) for o in sess.get_outputs()]
    assert got_in == [(t.name, t.type, t.shape) for t in spec.inputs]
    assert got_out == [(t.name, t.type, t.shape) for t in spec.outputs]


@pytest.mark.parametrize("name", NAMES)
def test_metadata_names_the_features(name: str) -> None:
    meta = session(name).get_modelmeta()
    features = json.loads(meta.custom_metadata_map["feature_names"])
    assert features == reference(name)["feature_names"]
    assert len(features) == SPECS[name].inputs[0].shape[1]
    assert meta.custom_metadata_map["synthetic"] == "true"
    assert meta.graph_name == name


@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_scikit_learn_reference(name: str) -> None:
    ref = reference(name)
    x = reference_inputs(name)
    assert x.shape == (N_REFERENCE, SPECS[name].inputs[0].shape[1])
    got = run(name, x)
    for t in SPECS[name].outputs:
        expected = np.asarray(ref["outputs"][t.name])
        actual = got[t.name]
        assert actual.shape == expected.shape, t.name
        if t.exact:
            np.testing.assert_array_equal(actual, expected.astype(np.int64), err_msg=t.name)
        else:
            np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=t.name)


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_independent_of_the_batch(name: str) -> None:
    """Batching requests together (as the queue may) must not change any row's answer."""
    x = reference_inputs(name)
    batch = run(name, x)
    for i in range(len(x)):
        single = run(name, x[i : i + 1])
        for key, value in single.items():
            np.testing.assert_allclose(value[0], batch[key][i], rtol=1e-6, atol=1e-6, err_msg=key)
    empty = run(name, np.zeros((0, x.shape[1]), dtype=np.float32))
    assert all(len(v) == 0 for v in empty.values())


@pytest.mark.parametrize("name", NAMES)
def test_rejects_wrong_width_and_dtype(name: str) -> None:
    x = reference_inputs(name)
    with pytest.raises(InvalidArgument):
        run(name, x[:, :-1])
    with pytest.raises(InvalidArgument):
        run(name, x.astype(np.float64))


def test_risk_classifier_probabilities_and_label_agree() -> None:
    out = run("risk_classifier", reference_inputs("risk_classifier"))
    probabilities, label = out["probabilities"], out["label"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    np.testing.assert_array_equal(label, probabilities.argmax(axis=1))
    assert set(label.tolist()) == {0, 1, 2}  # the reference rows cover low, medium and high
    assert reference("risk_classifier")["class_labels"] == ["low", "medium", "high"]


def test_anomaly_label_is_the_sign_of_the_score() -> None:
    out = run("anomaly_detector", reference_inputs("anomaly_detector"))
    np.testing.assert_array_equal(out["label"], np.where(out["scores"] < 0, -1, 1))
    assert set(out["label"].ravel().tolist()) == {1, -1}  # the reference rows include both


def test_revenue_prediction_is_plausible() -> None:
    x = reference_inputs("revenue_regressor")
    prediction = run("revenue_regressor", x)["prediction"][:, 0]
    # Next year's revenue stays within a factor of two of this year's on the synthetic population.
    assert ((prediction > 0.5 * x[:, 0]) & (prediction < 2.0 * x[:, 0])).all()
