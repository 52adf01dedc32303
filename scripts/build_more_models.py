"""The models `build_models.py` builds beyond the first three: an image classifier of synthetic shapes, a
time-series forecaster, a customer-segment clustering model and a second version of the risk classifier.

Imported by ``scripts/build_models.py`` (run that); the conventions (fixed seeds, pinned graph names and
opset order, reference files) are the same. The data are SYNTHETIC, drawn from the rules written here.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import onnx
from build_models import (
    F32,
    N_REFERENCE,
    RISK_CLASSES,
    RISK_FEATURES,
    TEST_SIZE,
    Built,
    _f32,
    _json_f32,
    make_risk_data,
    metadata_for,
    run_onnx,
    to_onnx,
)
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.cluster import KMeans
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import Ridge
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, mean_absolute_error, silhouette_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from switchyard.core.config import ImagePreprocessing
from switchyard.ml.images import decode, preprocess

# ---------------------------------------------------------------------------------------------------------------------
# shape_classifier -- circle / square / triangle in a 28x28 grey image
# ---------------------------------------------------------------------------------------------------------------------

SHAPES = ["circle", "square", "triangle"]
SHAPE_SIZE = 28
# The preprocessing declared for the model in switchyard/defaults/switchyard.yaml: the same here.
SHAPE_PREPROCESSING = ImagePreprocessing(
    input="image", size=(SHAPE_SIZE, SHAPE_SIZE), mode="L", scale=1 / 255, mean=[0.5], std=[0.5], layout="NCHW"
)


def draw_shape(kind: int, rng: np.random.Generator, size: int = SHAPE_SIZE) -> Image.Image:
    """A light shape on a dark, noisy background: random size, position, brightness, and rotation for squares
    and triangles (up to 20 degrees), so position and size alone do not tell the classes apart."""
    background = int(rng.integers(0, 70))
    image = Image.new("L", (size, size), background)
    draw = ImageDraw.Draw(image)
    fill = int(rng.integers(150, 256))
    r = float(rng.uniform(size * 0.2, size * 0.38))
    cx, cy = (float(rng.uniform(r + 1, size - r - 1)) for _ in range(2))
    if kind == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        turn = float(rng.uniform(-np.pi / 9, np.pi / 9))
        corners = 4 if kind == 1 else 3
        start = np.pi / 4 if kind == 1 else -np.pi / 2
        points = [
            (
                cx + r * np.cos(start + turn + 2 * np.pi * k / corners),
                cy + r * np.sin(start + turn + 2 * np.pi * k / corners),
            )
            for k in range(corners)
        ]
        draw.polygon(points, fill=fill)
    noise = rng.normal(0.0, 12.0, (size, size))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def make_shape_data(n: int = 4500, seed: int = 20240604) -> tuple[F32, NDArray[np.int64], list[bytes]]:
    """Preprocessed images (as the API preprocesses them: through PNG, decode, `preprocess`), labels, PNGs."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(SHAPES)
    rng.shuffle(labels)
    pngs = [png(draw_shape(int(k), rng)) for k in labels]
    x = np.stack([preprocess(decode(p, max_pixels=10**6, param="file"), SHAPE_PREPROCESSING) for p in pngs])
    return _f32(x), labels, pngs


def with_image_input(onx: onnx.ModelProto, name: str, channels: int, size: int) -> onnx.ModelProto:
    """Put a Flatten in front of a model that takes flat rows, so that it takes [N, C, H, W] images."""
    flat = onx.graph.input[0].name
    del onx.graph.input[:]
    onx.graph.input.append(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [None, channels, size, size])
    )
    onx.graph.node.insert(0, onnx.helper.make_node("Flatten", [name], [flat], axis=1, name="flatten_image"))
    onnx.checker.check_model(onx)
    return onx


def build_shape_classifier() -> Built:
    x, y, pngs = make_shape_data()
    idx = np.arange(len(y))
    i_tr, i_te = train_test_split(idx, test_size=TEST_SIZE, random_state=0, stratify=y)
    flat = x.reshape(len(x), -1)
    # One hidden layer of 32: ~100 KB of weights; early stopping keeps it from memorising the noise.
    model = MLPClassifier(hidden_layer_sizes=(32,), alpha=1e-3, max_iter=300, early_stopping=True, random_state=0)
    model.fit(flat[i_tr], y[i_tr])
    pred = model.predict(flat[i_te])
    metrics = {
        "n_train": int(len(i_tr)),
        "n_test": int(len(i_te)),
        "accuracy": float(accuracy_score(y[i_te], pred)),
        "macro_f1": float(f1_score(y[i_te], pred, average="macro")),
        "confusion_matrix_rows_true_cols_pred": confusion_matrix(y[i_te], pred).tolist(),
    }
    onx = to_onnx(
        "shape_classifier",
        model,
        flat.shape[1],
        [("label", Int64TensorType([None])), ("probabilities", FloatTensorType([None, len(SHAPES)]))],
        "circle / square / triangle in a 28x28 grey image (NCHW, (pixel/255 - 0.5) / 0.5); SYNTHETIC images.",
        {
            "source": "scripts/build_models.py",
            "synthetic": "true",
            "class_labels": json.dumps(SHAPES),
            "preprocessing": SHAPE_PREPROCESSING.model_dump_json(),
        },
        options={id(model): {"zipmap": False}},
    )
    onx = with_image_input(onx, "image", 1, SHAPE_SIZE)
    session_label, session_prob = run_onnx_input(onx, "image", x[i_te])
    proba = model.predict_proba(flat[i_te])
    onnx_check = {
        "label_agreement": float(np.mean(session_label == pred)),
        "max_abs_diff_probabilities": float(np.max(np.abs(session_prob - proba))),
    }
    # Reference images: held-out ones the model gets right, 6 + 5 + 5 over the classes, as PNG (base64).
    right = i_te[pred == y[i_te]]
    ref = np.concatenate([right[y[right] == c][:k] for c, k in zip(range(3), (6, 5, 5), strict=True)])
    reference = {
        "images_png_base64": [base64.b64encode(pngs[i]).decode() for i in ref],
        "true_labels": [SHAPES[int(y[i])] for i in ref],
        "outputs": {
            "label": [int(v) for v in model.predict(flat[ref])],
            "probabilities": model.predict_proba(flat[ref]).tolist(),
        },
        "class_labels": SHAPES,
        "preprocessing": SHAPE_PREPROCESSING.model_dump(mode="json"),
        "metrics": metrics,
        "onnx_vs_sklearn_on_test_split": onnx_check,
    }
    return Built("shape_classifier", onx, reference, input_name="image")


def run_onnx_input(onx: onnx.ModelProto, name: str, x: F32) -> list[NDArray[Any]]:
    import onnxruntime as ort

    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, {name: x}))


# ---------------------------------------------------------------------------------------------------------------------
# demand_forecaster -- the next 3 values of a weekly series from its last 24
# ---------------------------------------------------------------------------------------------------------------------

LAGS = 24
HORIZON = 3


def make_series(n_series: int = 300, length: int = 120, seed: int = 20240605) -> NDArray[np.float64]:
    """Weekly demand of products: a level, a linear trend, a yearly-ish season of 13 weeks, AR(1) noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(50, 500, (n_series, 1))
    trend = rng.normal(0.0, 0.004, (n_series, 1)) * level
    season = (
        rng.uniform(0.05, 0.3, (n_series, 1)) * level * np.sin(2 * np.pi * t / 13 + rng.uniform(0, 6.3, (n_series, 1)))
    )
    noise = np.zeros((n_series, length))
    for i in range(1, length):
        noise[:, i] = 0.6 * noise[:, i - 1] + rng.normal(0.0, 0.04, n_series) * level[:, 0]
    return np.round(level + trend * t + season + noise, 2)


def windows(series: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    xs, ys = [], []
    for s in series:
        for start in range(0, len(s) - LAGS - HORIZON + 1, 3):
            xs.append(s[start : start + LAGS])
            ys.append(s[start + LAGS : start + LAGS + HORIZON])
    return np.asarray(xs), np.asarray(ys)


def build_demand_forecaster() -> Built:
    series = make_series()
    # Split by series, so held-out windows come from products the model never saw.
    s_tr, s_te = train_test_split(series, test_size=TEST_SIZE, random_state=0)
    x_tr, y_tr = windows(s_tr)
    x_te, y_te = windows(s_te)
    x_tr32, x_te32 = _f32(x_tr), _f32(x_te)
    model = Ridge(alpha=1.0)
    model.fit(x_tr32, y_tr)
    pred = model.predict(x_te32)
    metrics = {
        "n_train_windows": int(len(x_tr)),
        "n_test_windows": int(len(x_te)),
        "mae": float(mean_absolute_error(y_te, pred)),
        "mae_per_step": [float(v) for v in np.mean(np.abs(y_te - pred), axis=0)],
        # Baseline: "every next value = the last one", for context.
        "mae_naive_last_value": float(mean_absolute_error(y_te, np.repeat(x_te[:, -1:], HORIZON, axis=1))),
    }
    onx = to_onnx(
        "demand_forecaster",
        model,
        LAGS,
        [("forecast", FloatTensorType([None, HORIZON]))],
        f"The next {HORIZON} weekly values of a demand series from its last {LAGS} (oldest first); SYNTHETIC data.",
        metadata_for([f"lag_{LAGS - i}" for i in range(LAGS)], horizon=str(HORIZON)),
    )
    (value,) = run_onnx(onx, x_te32)
    onnx_check = {"max_abs_diff_forecast": float(np.max(np.abs(value - pred)))}
    ref_x = x_te32[:N_REFERENCE]
    reference = {
        "inputs": _json_f32(ref_x),
        "outputs": {"forecast": model.predict(ref_x).tolist()},
        "metrics": metrics,
        "onnx_vs_sklearn_on_test_split": onnx_check,
    }
    return Built("demand_forecaster", onx, reference)


# ---------------------------------------------------------------------------------------------------------------------
# customer_segments -- KMeans over 4 customer features
# ---------------------------------------------------------------------------------------------------------------------

SEGMENT_FEATURES = [
    "recency_days",  # days since the last purchase, 0..365
    "orders_per_year",  # 0..60
    "avg_order_usd_log10",  # log10 of the mean order value in USD, 0.5..3.5
    "tenure_years",  # years as a customer, 0..15
]
N_SEGMENTS = 4


def make_customers(n: int = 6000, seed: int = 20240606) -> F32:
    """Four made-up kinds of customers (loyal, big spenders, occasional, lapsed), mixed, with noise."""
    rng = np.random.default_rng(seed)
    centres = np.array([[15, 30, 1.6, 6], [40, 8, 2.8, 4], [90, 4, 1.5, 1.5], [280, 1, 1.7, 3]], dtype=np.float64)
    spread = np.array([10, 6, 0.2, 2], dtype=np.float64)
    kind = rng.integers(0, len(centres), n)
    x = centres[kind] + rng.normal(0.0, 1.0, (n, 4)) * spread
    lows, highs = np.array([0, 0, 0.5, 0]), np.array([365, 60, 3.5, 15])
    x = np.clip(x, lows, highs)
    return _f32(np.column_stack([np.round(x[:, 0]), np.round(x[:, 1]), np.round(x[:, 2], 3), np.round(x[:, 3], 1)]))


def build_customer_segments() -> Built:
    x = make_customers()
    x_tr, x_te = train_test_split(x, test_size=TEST_SIZE, random_state=0)
    model = make_pipeline(StandardScaler(), KMeans(n_clusters=N_SEGMENTS, n_init=10, random_state=0))
    model.fit(x_tr)
    pred = model.predict(x_te)
    metrics = {
        "n_train": int(len(x_tr)),
        "n_test": int(len(x_te)),
        "silhouette_test": float(silhouette_score(model[0].transform(x_te), pred)),
        "segment_sizes_test": np.bincount(pred, minlength=N_SEGMENTS).tolist(),
        "centres_original_units": model[0].inverse_transform(model[1].cluster_centers_).round(3).tolist(),
    }
    onx = to_onnx(
        "customer_segments",
        model,
        len(SEGMENT_FEATURES),
        [("segment", Int64TensorType([None])), ("distances", FloatTensorType([None, N_SEGMENTS]))],
        "KMeans customer segment (0..3) over 4 standardised features; distances to each centre; SYNTHETIC data.",
        metadata_for(SEGMENT_FEATURES, n_segments=str(N_SEGMENTS)),
    )
    segment, distances = run_onnx(onx, x_te)
    onnx_check = {
        "segment_agreement": float(np.mean(segment == pred)),
        "max_abs_diff_distances": float(np.max(np.abs(distances - model.transform(x_te)))),
    }
    ref_x = x_te[:N_REFERENCE]
    reference = {
        "inputs": _json_f32(ref_x),
        "outputs": {
            "segment": [int(v) for v in model.predict(ref_x)],
            "distances": model.transform(ref_x).tolist(),
        },
        "metrics": metrics,
        "onnx_vs_sklearn_on_test_split": onnx_check,
    }
    return Built("customer_segments", onx, reference | {"feature_names": SEGMENT_FEATURES})


# ---------------------------------------------------------------------------------------------------------------------
# risk_classifier_v2 -- version 2 of risk_classifier: same inputs and outputs, other hyperparameters
# ---------------------------------------------------------------------------------------------------------------------


def build_risk_classifier_v2() -> Built:
    x, y = make_risk_data()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE, random_state=0, stratify=y)
    # Fewer, deeper trees than version 1: a model one would roll out carefully, next to the first.
    model = GradientBoostingClassifier(n_estimators=30, max_depth=4, learning_rate=0.2, random_state=1)
    model.fit(x_tr, y_tr)
    pred = model.predict(x_te)
    metrics = {
        "n_train": int(len(y_tr)),
        "n_test": int(len(y_te)),
        "accuracy": float(accuracy_score(y_te, pred)),
        "macro_f1": float(f1_score(y_te, pred, average="macro")),
    }
    onx = to_onnx(
        "risk_classifier_v2",
        model,
        len(RISK_FEATURES),
        [("label", Int64TensorType([None])), ("probabilities", FloatTensorType([None, 3]))],
        "Version 2 of the 3-class risk rating (0 low, 1 medium, 2 high); trained on SYNTHETIC data.",
        metadata_for(RISK_FEATURES, class_labels=json.dumps(RISK_CLASSES)),
        options={id(model): {"zipmap": False}},
    )
    onx.model_version = 2
    label, prob = run_onnx(onx, x_te)
    onnx_check = {
        "label_agreement": float(np.mean(label == pred)),
        "max_abs_diff_probabilities": float(np.max(np.abs(prob - model.predict_proba(x_te)))),
    }
    ref_x = x_te[:N_REFERENCE]
    reference = {
        "inputs": _json_f32(ref_x),
        "outputs": {
            "label": [int(v) for v in model.predict(ref_x)],
            "probabilities": model.predict_proba(ref_x).tolist(),
        },
        "class_labels": RISK_CLASSES,
        "metrics": metrics,
        "onnx_vs_sklearn_on_test_split": onnx_check,
    }
    return Built("risk_classifier_v2", onx, reference | {"feature_names": RISK_FEATURES})


BUILDERS = (build_shape_classifier, build_demand_forecaster, build_customer_segments, build_risk_classifier_v2)
