"""Build the three small classical ML models Switchyard serves, from synthetic data, as ONNX files.

Run from anywhere with the project's virtual environment::

    .venv/bin/python scripts/build_models.py

It writes, for each model ``<name>``:

* ``models/<name>.onnx`` -- the model converted with skl2onnx (target opsets: ai.onnx 17, ai.onnx.ml 3;
  skl2onnx stamps the lowest versions the graph actually needs, which may be lower);
* ``models/<name>.reference.json`` -- 16 fixed held-out input rows, scikit-learn's outputs on them, the
  held-out metrics and the measured ONNX-vs-scikit-learn discrepancy, so tests can check the ONNX model
  with onnxruntime alone (no scikit-learn, no retraining).

Everything is deterministic: the data come from ``numpy.random.default_rng`` with fixed seeds, every
estimator gets a fixed ``random_state``, and the two things skl2onnx leaves to chance (the graph name, a
random UUID, and the order of the opset imports, which follows PYTHONHASHSEED) are pinned, so two runs with
the same library versions write byte-identical files. Other versions of scikit-learn / skl2onnx / onnx may
produce different (but equivalent) bytes.

The data are SYNTHETIC. They are drawn from hand-written generative rules (documented below and in
``docs/models.md``) that only loosely imitate real portfolios, transactions and companies. The models are
fit for exercising the serving path (queueing, routing, batching, signatures), not for real decisions.

Needs scikit-learn, skl2onnx, onnx, onnxruntime and numpy (built with scikit-learn 1.9, skl2onnx 1.20,
onnx 1.23, onnxruntime 1.32, numpy 2.4).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, IsolationForest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "switchyard" / "defaults" / "models"

# Opsets supported by onnxruntime 1.32 (and by much older releases): keep them modest so the files load anywhere.
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
# Fraction of each synthetic data set held out for the metrics and the reference rows.
TEST_SIZE = 0.25
# Number of reference rows stored per model.
N_REFERENCE = 16

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


def _f32(x: NDArray[Any]) -> F32:
    return np.ascontiguousarray(x, dtype=np.float32)


def _json_f32(rows: F32) -> list[list[float]]:
    """Float32 rows as JSON-friendly floats, written in the shortest form that round-trips the float32 value.

    ``float(str(np.float32(v)))`` is e.g. ``0.123`` rather than ``0.12300000339746475``; reading it back and
    casting to float32 gives exactly the same bits, so tests feed the model the very inputs scikit-learn saw.
    """
    return [[float(str(v)) for v in row] for row in rows]


# ---------------------------------------------------------------------------------------------------------------------
# 1. risk_classifier -- 3-class risk rating of a company / portfolio position
# ---------------------------------------------------------------------------------------------------------------------

RISK_FEATURES = [
    "leverage",  # debt-to-equity ratio, 0..6
    "volatility",  # annualised equity return volatility, 0.05..1.0 (0.25 = 25 %)
    "esg_score",  # ESG rating, 0..100, higher is better
    "liquidity_ratio",  # current ratio (current assets / current liabilities), 0.2..5
    "sector_risk",  # sector risk bucket, integer 1 (e.g. utilities) .. 5 (e.g. mining, airlines)
    "country_risk",  # sovereign / country risk index, 0 (safest) .. 1 (distressed)
    "revenue_growth",  # year-on-year revenue growth as a fraction, -0.5..0.8
    "carbon_intensity",  # scope 1+2 emissions in tCO2e per USD 1M of revenue, 1..3000
]
RISK_CLASSES = ["low", "medium", "high"]  # label 0, 1, 2


def make_risk_data(n: int = 8000, seed: int = 20240601) -> tuple[F32, I64]:
    """Synthetic company features and a risk class (0 low, 1 medium, 2 high).

    The features are correlated the way one would expect (riskier sectors are more levered, more volatile,
    more carbon-intensive and have lower ESG scores; higher leverage means less liquidity). A latent risk
    score is a weighted sum of the z-scored features, plus two non-linear "distress" effects (leverage above
    2 and leverage above 2 with a current ratio below 1) and Gaussian noise; its tertiles give the three
    balanced classes. The noise makes the classes overlap, so a perfect score is impossible.
    """
    rng = np.random.default_rng(seed)
    sector = rng.integers(1, 6, n).astype(np.float64)
    country = rng.beta(2.0, 5.0, n)
    leverage = np.clip(rng.lognormal(np.log(0.8) + 0.1 * (sector - 3), 0.5, n), 0.0, 6.0)
    volatility = np.clip(
        0.12 + 0.04 * sector + 0.15 * country + 0.05 * leverage + rng.normal(0.0, 0.05, n),
        0.05,
        1.0,
    )
    esg = np.clip(rng.normal(62.0 - 3.0 * (sector - 3) - 15.0 * country, 12.0, n), 0.0, 100.0)
    liquidity = np.clip(rng.lognormal(np.log(1.5) - 0.15 * leverage, 0.35, n), 0.2, 5.0)
    growth = np.clip(rng.normal(0.05, 0.12, n), -0.5, 0.8)
    carbon = np.clip(rng.lognormal(np.log(60.0) + 0.5 * (sector - 1), 0.8, n), 1.0, 3000.0)

    # Round to the precision a data vendor would report.
    x = np.column_stack(
        [
            np.round(leverage, 3),
            np.round(volatility, 4),
            np.round(esg, 1),
            np.round(liquidity, 3),
            sector,
            np.round(country, 3),
            np.round(growth, 4),
            np.round(carbon, 1),
        ]
    )

    def z(v: F64) -> F64:
        """Standardise a column (mean 0, sd 1) so the weights below are comparable."""
        standardised: F64 = (v - v.mean()) / v.std()
        return standardised

    lev, vol, esg_r, liq, sec, cty, gro, car = x.T
    latent = (
        0.9 * z(lev)
        + 1.0 * z(vol)
        - 0.6 * z(esg_r)
        - 0.7 * z(np.log(liq))
        + 0.4 * z(sec)
        + 0.8 * z(cty)
        - 0.5 * z(gro)
        + 0.3 * z(np.log(car))
        + 0.4 * np.maximum(0.0, lev - 2.0)
        + 0.8 * ((lev > 2.0) & (liq < 1.0))
        + rng.normal(0.0, 0.5, n)
    )
    cuts = np.quantile(latent, [1 / 3, 2 / 3])
    y = np.digitize(latent, cuts).astype(np.int64)
    return _f32(x), y


# ---------------------------------------------------------------------------------------------------------------------
# 2. anomaly_detector -- unsupervised outlier detection on payment transactions
# ---------------------------------------------------------------------------------------------------------------------

ANOMALY_FEATURES = [
    "amount_log10",  # log10 of the transaction amount in USD, 0..7 (2.0 = USD 100)
    "hour_of_day",  # local time of the transaction in hours, 0..24 (fractional)
    "days_since_last_txn",  # days since the account's previous transaction, 0..120
    "counterparty_risk",  # risk score of the counterparty, 0 (trusted) .. 1 (known bad)
    "txn_count_24h",  # number of transactions by the same account in the last 24 hours, 0..60
    "geo_distance_log10_km",  # log10(1 + km between transaction location and the account's usual location), 0..4.3
]
ANOMALY_RATE = 0.02


def make_anomaly_data(n: int = 10000, seed: int = 20240602) -> tuple[F32, I64]:
    """Synthetic transactions and the ground truth (1 normal, -1 injected anomaly), in the IsolationForest convention.

    Normal transactions: amounts around USD 160 (log-normal), mostly in business hours, a few days apart,
    low counterparty risk, a handful of transactions a day, close to home. A fraction ``ANOMALY_RATE`` of the
    rows are then made anomalous by overwriting between 1 and 3 of six "fraud signals", chosen at random:
    a very large amount, a night-time hour, a long-dormant account, a risky counterparty, a burst of
    transactions, a far-away location. The ground truth is never shown to the model (unsupervised); it is
    used only for the held-out metrics.
    """
    rng = np.random.default_rng(seed)
    amount = np.clip(rng.normal(2.2, 0.55, n), 0.0, 7.0)
    hour = np.mod(rng.normal(13.5, 3.5, n), 24.0)
    days = np.clip(rng.exponential(2.0, n), 0.0, 120.0)
    cp_risk = rng.beta(2.0, 12.0, n)
    count = np.clip(rng.poisson(4.0, n), 0, 60).astype(np.float64)
    geo = np.clip(rng.normal(0.8, 0.45, n), 0.0, 4.3)
    x = np.column_stack([amount, hour, days, cp_risk, count, geo])

    truth = np.ones(n, dtype=np.int64)
    anomalous = rng.choice(n, size=int(round(n * ANOMALY_RATE)), replace=False)
    truth[anomalous] = -1
    signals: list[Callable[[], float]] = [
        lambda: float(np.clip(rng.normal(4.7, 0.5), 0.0, 7.0)),  # very large amount (~USD 50k)
        lambda: float(rng.uniform(0.0, 5.0)),  # between midnight and 5 am
        lambda: float(np.clip(20.0 + rng.exponential(30.0), 0.0, 120.0)),  # dormant account woken up
        lambda: float(rng.beta(6.0, 3.0)),  # risky counterparty
        lambda: float(np.clip(rng.poisson(25.0), 0, 60)),  # burst of transactions
        lambda: float(np.clip(rng.normal(3.3, 0.4), 0.0, 4.3)),  # thousands of km from home
    ]
    for i in anomalous:
        k = int(rng.integers(1, 4))
        for col in rng.choice(len(signals), size=k, replace=False):
            x[i, col] = signals[col]()

    x = np.column_stack(
        [
            np.round(x[:, 0], 4),
            np.round(x[:, 1], 2),
            np.round(x[:, 2], 2),
            np.round(x[:, 3], 3),
            x[:, 4],
            np.round(x[:, 5], 3),
        ]
    )
    return _f32(x), truth


# ---------------------------------------------------------------------------------------------------------------------
# 3. revenue_regressor -- next fiscal year's revenue of a company
# ---------------------------------------------------------------------------------------------------------------------

REVENUE_FEATURES = [
    "current_revenue_musd",  # this fiscal year's revenue in USD millions, 2..3000
    "market_growth",  # expected growth of the company's market as a fraction, -0.2..0.3
    "marketing_ratio",  # marketing spend as a fraction of revenue, 0..0.6
    "churn_rate",  # annual customer churn as a fraction, 0..0.7
    "rd_intensity",  # R&D spend as a fraction of revenue, 0..0.5
]


def make_revenue_data(n: int = 6000, seed: int = 20240603) -> tuple[F32, F64]:
    """Synthetic company drivers and next year's revenue in USD millions.

    Next revenue = current revenue x (1 + g), where the growth rate g rises with market growth, marketing
    spend (with diminishing returns above 30 % of revenue) and R&D, falls with churn, and carries
    multiplicative Gaussian noise (sd 4 points of growth) for everything the five drivers do not capture.
    """
    rng = np.random.default_rng(seed)
    revenue = np.clip(rng.lognormal(np.log(120.0), 0.9, n), 2.0, 3000.0)
    market = np.clip(rng.normal(0.04, 0.06, n), -0.2, 0.3)
    marketing = np.clip(rng.beta(2.0, 12.0, n), 0.0, 0.6)
    churn = np.clip(rng.beta(2.0, 10.0, n), 0.0, 0.7)
    rd = np.clip(rng.beta(1.5, 12.0, n), 0.0, 0.5)
    x = np.column_stack(
        [np.round(revenue, 2), np.round(market, 4), np.round(marketing, 4), np.round(churn, 4), np.round(rd, 4)]
    )
    rev, mkt, mkg, chu, rnd = x.T
    g = (
        0.02
        + 0.9 * mkt
        + 0.5 * (mkg - 0.12)
        - 0.3 * np.maximum(0.0, mkg - 0.3)
        - 0.6 * (chu - 0.17)
        + 0.25 * rnd
        + rng.normal(0.0, 0.04, n)
    )
    y = rev * (1.0 + g)
    return _f32(x), y


# ---------------------------------------------------------------------------------------------------------------------
# Conversion, checking, writing
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Built:
    """One trained model, its ONNX form and what goes into its reference file."""

    name: str
    onnx_model: onnx.ModelProto
    reference: dict[str, Any] = field(default_factory=dict)
    input_name: str = "features"


def to_onnx(
    name: str,
    model: Any,
    n_features: int,
    final_types: list[tuple[str, Any]],
    description: str,
    metadata: dict[str, str],
    options: dict[int, dict[str, Any]] | None = None,
) -> onnx.ModelProto:
    """Convert with skl2onnx, name the outputs, pin everything that would otherwise vary between runs."""
    onx: onnx.ModelProto = convert_sklearn(
        model,
        name=name,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        final_types=final_types,
        target_opset=TARGET_OPSET,
        options=options,
    )
    # Pin what would otherwise vary between runs, so the file is byte-identical every time: skl2onnx names the
    # graph with a random UUID, and lists the opset imports in set order, which depends on PYTHONHASHSEED.
    onx.graph.name = name
    opset_imports = sorted(onx.opset_import, key=lambda o: o.domain)
    del onx.opset_import[:]
    onx.opset_import.extend(opset_imports)
    onx.doc_string = description
    onx.model_version = 1
    del onx.metadata_props[:]
    for key, value in sorted(metadata.items()):
        onx.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(onx)
    opsets = {o.domain: o.version for o in onx.opset_import}
    assert all(opsets.get(d, 0) <= v for d, v in TARGET_OPSET.items()), opsets
    return onx


def run_onnx(onx: onnx.ModelProto, x: F32) -> list[NDArray[Any]]:
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, {"features": x}))


def metadata_for(features: list[str], **extra: str) -> dict[str, str]:
    return {"feature_names": json.dumps(features), "source": "scripts/build_models.py", "synthetic": "true", **extra}


def build_risk_classifier() -> Built:
    x, y = make_risk_data()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE, random_state=0, stratify=y)
    # 60 boosting rounds x 3 classes = 180 depth-3 trees: accurate enough, and small once converted (~100 KB).
    model = GradientBoostingClassifier(n_estimators=60, max_depth=3, learning_rate=0.15, random_state=0)
    model.fit(x_tr, y_tr)
    proba = model.predict_proba(x_te)
    pred = model.predict(x_te)
    metrics = {
        "n_train": int(len(y_tr)),
        "n_test": int(len(y_te)),
        "accuracy": float(accuracy_score(y_te, pred)),
        "macro_f1": float(f1_score(y_te, pred, average="macro")),
        "log_loss": float(log_loss(y_te, proba)),
        "recall_per_class": [float(r) for r in recall_score(y_te, pred, average=None)],
        "confusion_matrix_rows_true_cols_pred": confusion_matrix(y_te, pred).tolist(),
    }

    onx = to_onnx(
        "risk_classifier",
        model,
        len(RISK_FEATURES),
        [("label", Int64TensorType([None])), ("probabilities", FloatTensorType([None, 3]))],
        "3-class risk rating (0 low, 1 medium, 2 high) from 8 company features; trained on SYNTHETIC data.",
        metadata_for(RISK_FEATURES, class_labels=json.dumps(RISK_CLASSES)),
        # Plain tensors instead of a sequence of maps (ZipMap) for the probabilities.
        options={id(model): {"zipmap": False}},
    )
    label, prob = run_onnx(onx, x_te)
    onnx_check = {
        "label_agreement": float(np.mean(label == pred)),
        "max_abs_diff_probabilities": float(np.max(np.abs(prob - proba))),
    }

    # Reference rows: held-out rows covering every predicted class (6 + 5 + 5).
    idx = np.concatenate([np.flatnonzero(pred == c)[:k] for c, k in zip(range(3), (6, 5, 5), strict=True)])
    ref_x = x_te[idx]
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
    return Built("risk_classifier", onx, reference | {"feature_names": RISK_FEATURES})


def build_anomaly_detector() -> Built:
    x, truth = make_anomaly_data()
    x_tr, x_te, _, t_te = train_test_split(x, truth, test_size=TEST_SIZE, random_state=0, stratify=truth)
    # Unsupervised: the ground truth is not used for fitting. 40 trees of 128 samples (depth <= 7) keep the
    # converted file under 300 KB; skl2onnx emits a sizeable sub-graph per tree, so more trees grow it quickly.
    model = IsolationForest(n_estimators=40, max_samples=128, contamination=ANOMALY_RATE, random_state=0)
    model.fit(x_tr)
    pred = model.predict(x_te)
    scores = model.decision_function(x_te)
    is_anomaly = t_te == -1
    metrics = {
        "n_train": int(len(x_tr)),
        "n_test": int(len(x_te)),
        "true_anomaly_rate_test": float(np.mean(is_anomaly)),
        "flagged_rate_test": float(np.mean(pred == -1)),
        "precision_anomaly": float(precision_score(is_anomaly, pred == -1)),
        "recall_anomaly": float(recall_score(is_anomaly, pred == -1)),
        "f1_anomaly": float(f1_score(is_anomaly, pred == -1)),
        # Lower score = more anomalous, so rank by -score.
        "roc_auc": float(roc_auc_score(is_anomaly, -scores)),
    }

    onx = to_onnx(
        "anomaly_detector",
        model,
        len(ANOMALY_FEATURES),
        [("label", Int64TensorType([None, 1])), ("scores", FloatTensorType([None, 1]))],
        "IsolationForest over 6 transaction features: label 1 normal / -1 anomaly, score = decision_function "
        "(negative = anomalous); trained on SYNTHETIC data.",
        metadata_for(ANOMALY_FEATURES, label_values=json.dumps({"1": "normal", "-1": "anomaly"})),
    )
    label, score = run_onnx(onx, x_te)
    onnx_check = {
        "label_agreement": float(np.mean(label[:, 0] == pred)),
        "max_abs_diff_scores": float(np.max(np.abs(score[:, 0] - scores))),
    }

    # Reference rows: 12 held-out rows the model calls normal and 4 it calls anomalous.
    idx = np.concatenate([np.flatnonzero(pred == 1)[:12], np.flatnonzero(pred == -1)[:4]])
    ref_x = x_te[idx]
    reference = {
        "inputs": _json_f32(ref_x),
        "outputs": {
            # Same [N, 1] layout as the ONNX outputs.
            "label": [[int(v)] for v in model.predict(ref_x)],
            "scores": [[float(v)] for v in model.decision_function(ref_x)],
        },
        "metrics": metrics,
        "onnx_vs_sklearn_on_test_split": onnx_check,
    }
    return Built("anomaly_detector", onx, reference | {"feature_names": ANOMALY_FEATURES})


def build_revenue_regressor() -> Built:
    x, y = make_revenue_data()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE, random_state=0)
    model = GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.1, random_state=0)
    model.fit(x_tr, y_tr)
    pred = model.predict(x_te)
    metrics = {
        "n_train": int(len(y_tr)),
        "n_test": int(len(y_te)),
        "r2": float(r2_score(y_te, pred)),
        "mae_musd": float(mean_absolute_error(y_te, pred)),
        "rmse_musd": float(root_mean_squared_error(y_te, pred)),
        "mape": float(mean_absolute_percentage_error(y_te, pred)),
        # Baseline: "next year = this year" (no model), for context.
        "mape_naive_flat": float(mean_absolute_percentage_error(y_te, x_te[:, 0].astype(np.float64))),
    }

    onx = to_onnx(
        "revenue_regressor",
        model,
        len(REVENUE_FEATURES),
        # skl2onnx would call this output "variable"; "prediction" says what it is.
        [("prediction", FloatTensorType([None, 1]))],
        "Next fiscal year's revenue in USD millions from 5 company drivers; trained on SYNTHETIC data.",
        metadata_for(REVENUE_FEATURES, unit="USD millions"),
    )
    (value,) = run_onnx(onx, x_te)
    onnx_check = {
        "max_abs_diff_prediction": float(np.max(np.abs(value[:, 0] - pred))),
        "max_rel_diff_prediction": float(np.max(np.abs(value[:, 0] - pred) / np.abs(pred))),
    }

    ref_x = x_te[:N_REFERENCE]
    reference = {
        "inputs": _json_f32(ref_x),
        "outputs": {"prediction": [[float(v)] for v in model.predict(ref_x)]},
        "metrics": metrics,
        "onnx_vs_sklearn_on_test_split": onnx_check,
    }
    return Built("revenue_regressor", onx, reference | {"feature_names": REVENUE_FEATURES})


def _dumps(obj: Any, indent: int = 0) -> str:
    """JSON with one line per row: lists of scalars stay on one line, containers are indented."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, list | dict) for v in obj):
        return "[\n" + ",\n".join(inner + _dumps(v, indent + 2) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def write(built: Built) -> tuple[Path, Path]:
    onnx_path = MODELS_DIR / f"{built.name}.onnx"
    ref_path = MODELS_DIR / f"{built.name}.reference.json"
    onnx_path.write_bytes(built.onnx_model.SerializeToString())
    rows = built.reference.get("inputs", built.reference.get("images_png_base64"))
    assert rows is not None
    assert len(rows) == N_REFERENCE
    ref = {"model": built.name, "input": built.input_name, **built.reference}
    ref_path.write_text(_dumps(ref) + "\n")
    return onnx_path, ref_path


def main() -> None:
    # The image model preprocesses with Switchyard's own code (switchyard.ml.images), so it needs the checkout.
    sys.path.insert(0, str(ROOT))
    import build_more_models

    MODELS_DIR.mkdir(exist_ok=True)
    builders = (build_risk_classifier, build_anomaly_detector, build_revenue_regressor, *build_more_models.BUILDERS)
    only = set(sys.argv[1:])  # e.g. `build_models.py shape_classifier`: rebuild those only
    for builder in builders:
        if only and builder.__name__.removeprefix("build_") not in only:
            continue
        built = builder()
        onnx_path, _ = write(built)
        size_kb = onnx_path.stat().st_size / 1024
        print(f"{onnx_path.relative_to(ROOT)}  {size_kb:.1f} KB")  # noqa: T201
        print(f"  metrics: {json.dumps(built.reference['metrics'])}")  # noqa: T201
        print(f"  onnx vs sklearn: {json.dumps(built.reference['onnx_vs_sklearn_on_test_split'])}")  # noqa: T201


if __name__ == "__main__":
    main()
