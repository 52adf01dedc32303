"""Image inputs and the newer model kinds through the real stack: uploads (multipart, raw body, base64 in a
task) decoded, preprocessed and run on the shipped shape classifier; refusals of bad or oversized images;
several images as one batch; the forecaster and the clustering model against their scikit-learn references;
the shipped image workflow in `switchyard dev`."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from switchyard.defaults import DEFAULT_CONFIG, DEFAULTS_DIR, MODELS_DIR
from tests.support import Process, Stack, cli, free_port, wait_status, wait_task, wait_until

SHAPES_REF = json.loads((MODELS_DIR / "shape_classifier.reference.json").read_text())
FORECAST_REF = json.loads((MODELS_DIR / "demand_forecaster.reference.json").read_text())
SEGMENTS_REF = json.loads((MODELS_DIR / "customer_segments.reference.json").read_text())
PNGS = [base64.b64decode(b) for b in SHAPES_REF["images_png_base64"]]
MAX_PIXELS = 250_000

EXTRA_MODELS = f"""
  shapes:
    type: predict
    labels: [circle, square, triangle]
    top_k: 2
    image: {{input: image, size: [28, 28], mode: L, scale: 0.00392156862745098, mean: [0.5], std: [0.5]}}
    deployments:
      - {{provider: onnx, model: "{MODELS_DIR}/shape_classifier.onnx", price: {{per_1k_predictions: 1.0}}}}
  forecaster:
    type: predict
    deployments:
      - {{provider: onnx, model: "{MODELS_DIR}/demand_forecaster.onnx"}}
  segments:
    type: predict
    deployments:
      - {{provider: onnx, model: "{MODELS_DIR}/customer_segments.onnx"}}
"""


# --- the shipped workflow in `switchyard dev`: first, while no stack of this module runs (dev waits 60 s) ------


@pytest.fixture
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("dev-images")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["SWITCHYARD_CONFIG"] = str(DEFAULT_CONFIG)
    env["SWITCHYARD_DATA_DIR"] = str(tmp / ".switchyard")
    port, fake_port = free_port(), free_port()
    proc = Process("dev", cli("dev", "--port", str(port), "--fake-port", str(fake_port)), env, tmp)
    try:

        def printed() -> re.Match[str] | None:
            assert proc.alive(), proc.log()[-4000:]
            return re.search(r"URL: (\S+).*?API key: (\S+)", proc.log(), re.S)

        match = wait_until(printed, timeout=90, what="switchyard dev to print its URL and key")
        yield match.group(1), match.group(2)
    finally:
        proc.stop()


def test_shape_workflow_in_dev(dev: tuple[str, str]) -> None:
    url, key = dev
    i = 12  # a triangle
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        # The embedded worker is ready once it has run the periodic duties a first time (as in test_embedded).
        wait_until(
            lambda: client.get("/readyz").json()["checks"].get("duties") == "ok",
            timeout=90,
            what="the embedded worker to be ready",
        )
        upload = client.post("/v1/predict/shape-classifier", files={"file": ("t.png", PNGS[i], "image/png")})
        assert upload.status_code == 200, upload.text
        assert upload.json()["top_k"][0][0]["label"] == "triangle"
        run = client.post(
            "/v1/workflows/shape_inspection/runs", json={"input": {"image": SHAPES_REF["images_png_base64"][i]}}
        )
        assert run.status_code in (200, 201, 202), run.text
        done: dict[str, Any] = wait_status(client, f"/v1/runs/{run.json()['id']}", timeout=90)
        assert done["status"] == "succeeded", done
        assert done["output"]["shape"] == "triangle"
        assert float(done["output"]["score"]) > 0.5
        assert "triangle" in done["output"]["description"]


# --- on a stack of real processes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"SWITCHYARD_MAX_IMAGE_PIXELS": str(MAX_PIXELS), "SWITCHYARD_MAX_IMAGES_PER_REQUEST": "8"}
    s = Stack(tmp_path_factory.mktemp("ml-images"), redis_db=6, extra_models=EXTRA_MODELS, env=env)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(stack.new_key("ml-images")) as c:
        yield c


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_uploaded_image_gets_the_shipped_models_label(client: httpx.Client) -> None:
    for i in (0, 7, 12):  # a circle, a square, a triangle (the reference is 6 + 5 + 5 by class)
        response = client.post("/v1/predict/shapes", files={"file": ("shape.png", PNGS[i], "image/png")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["outputs"]["label"] == [SHAPES_REF["outputs"]["label"][i]]
        np.testing.assert_allclose(
            body["outputs"]["probabilities"], [SHAPES_REF["outputs"]["probabilities"][i]], atol=1e-4
        )
        assert body["top_k"][0][0]["label"] == SHAPES_REF["true_labels"][i]
        assert len(body["top_k"][0]) == 2
        assert body["top_k"][0][0]["score"] >= body["top_k"][0][1]["score"]
        assert body["batch_size"] == 1


def test_raw_png_and_jpeg_bodies(client: httpx.Client) -> None:
    raw = client.post("/v1/predict/shapes", content=PNGS[0], headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["top_k"][0][0]["label"] == SHAPES_REF["true_labels"][0]
    # A JPEG in colour and four times larger: converted to grey and resized as the config says.
    big = Image.open(io.BytesIO(PNGS[0])).convert("RGB").resize((112, 112), Image.Resampling.BILINEAR)
    jpeg = client.post("/v1/predict/shapes", content=png(big, "JPEG"), headers={"Content-Type": "image/jpeg"})
    assert jpeg.status_code == 200, jpeg.text
    assert jpeg.json()["top_k"][0][0]["label"] == SHAPES_REF["true_labels"][0]


def test_several_images_are_one_task_and_one_batch(client: httpx.Client, stack: Stack) -> None:
    files = [("file", (f"{i}.png", PNGS[i], "image/png")) for i in (1, 8, 13)]
    response = client.post("/v1/predict/shapes", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outputs"]["label"] == [SHAPES_REF["outputs"]["label"][i] for i in (1, 8, 13)]
    assert [row[0]["label"] for row in body["top_k"]] == [SHAPES_REF["true_labels"][i] for i in (1, 8, 13)]
    assert body["batch_size"] == 3  # one session run for the three
    task = client.get(f"/v1/tasks/{body['task_id']}").json()
    assert task["usage"]["predictions"] == 3
    assert task["cost_usd"] == pytest.approx(3 / 1000 * 1.0)
    # The task holds the preprocessed tensor, not the upload: [3, 1, 28, 28].
    stored = stack.sql("SELECT input FROM tasks WHERE id = %s", body["task_id"])[0][0]
    assert np.asarray(stored["inputs"]["image"]).shape == (3, 1, 28, 28)


def test_base64_images_in_a_task(client: httpx.Client) -> None:
    images = [base64.b64encode(PNGS[i]).decode() for i in (2, 9)]
    created = client.post("/v1/tasks", json={"type": "predict", "model": "shapes", "input": {"images": images}})
    assert created.status_code == 202, created.text
    task = wait_task(client, created.json()["id"])
    assert task["status"] == "succeeded", task
    assert [row[0]["label"] for row in task["result"]["top_k"]] == [SHAPES_REF["true_labels"][i] for i in (2, 9)]
    # The synchronous endpoint takes them in JSON as well.
    sync = client.post("/v1/predict/shapes", json={"images": images})
    assert sync.status_code == 200, sync.text
    assert [row[0]["label"] for row in sync.json()["top_k"]] == [SHAPES_REF["true_labels"][i] for i in (2, 9)]
    bad = client.post("/v1/tasks", json={"type": "predict", "model": "shapes", "input": {"images": ["%%%"]}})
    assert bad.status_code == 422
    assert bad.json()["error"]["param"] == "input.images[0]"


@pytest.mark.parametrize(
    ("content", "status", "needle"),
    [
        (b"this is not an image at all", 422, "not an image"),
        (PNGS[0][: len(PNGS[0]) // 2], 422, "corrupt or truncated"),
        (b"", 422, "empty"),
        (png(Image.new("L", (600, 600), 0)), 413, "360000 pixels"),
    ],
    ids=["text", "truncated-png", "empty", "oversized"],
)
def test_bad_images_are_4xx_naming_the_field(client: httpx.Client, content: bytes, status: int, needle: str) -> None:
    response = client.post("/v1/predict/shapes", files={"file": ("x.png", content, "image/png")})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == "file", error
    assert needle in error["message"], error
    raw = client.post("/v1/predict/shapes", content=content or b"\x00", headers={"Content-Type": "image/png"})
    assert 400 <= raw.status_code < 500
    assert raw.json()["error"]["param"] == "body"


def test_image_batch_errors_name_the_file_and_limits_count(client: httpx.Client) -> None:
    files = [("file", ("a.png", PNGS[0], "image/png")), ("file", ("b.png", b"junk", "image/png"))]
    response = client.post("/v1/predict/shapes", files=files)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "file[1]"
    many = [("file", (f"{i}.png", PNGS[0], "image/png")) for i in range(9)]
    response = client.post("/v1/predict/shapes", files=many)
    assert response.status_code == 422, response.text
    assert "at most 8 images" in response.json()["error"]["message"]


def test_image_to_a_model_without_images_is_refused(client: httpx.Client) -> None:
    response = client.post("/v1/predict/forecaster", content=PNGS[0], headers={"Content-Type": "image/png"})
    assert response.status_code == 415, response.text
    assert response.json()["error"]["param"] == "body"


def test_forecaster_matches_its_reference(client: httpx.Client) -> None:
    response = client.post("/v1/predict/forecaster", json={"inputs": {"features": FORECAST_REF["inputs"]}})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        response.json()["outputs"]["forecast"], FORECAST_REF["outputs"]["forecast"], rtol=1e-4, atol=1e-3
    )


def test_clustering_matches_its_reference(client: httpx.Client) -> None:
    response = client.post("/v1/predict/segments", json={"inputs": {"features": SEGMENTS_REF["inputs"]}})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert outputs["segment"] == SEGMENTS_REF["outputs"]["segment"]
    np.testing.assert_allclose(outputs["distances"], SEGMENTS_REF["outputs"]["distances"], rtol=1e-4, atol=1e-4)
    # The segment is the nearest centre.
    assert outputs["segment"] == [int(np.argmin(row)) for row in outputs["distances"]]


def test_models_endpoint_shows_image_preprocessing(client: httpx.Client) -> None:
    model = client.get("/v1/models/shapes").json()
    assert model["labels"] == ["circle", "square", "triangle"]
    assert model["image"]["size"] == [28, 28]
    assert model["signature"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": [None, 1, 28, 28]}]


def test_shipped_shape_workflow_on_the_stack(client: httpx.Client) -> None:
    # The packaged definition, registered under another name on this stack (whose config names the model `shapes`).
    text = (DEFAULTS_DIR / "workflows" / "shape_inspection.yaml").read_text()
    text = text.replace("model: shape-classifier", "model: shapes").replace("name: shape_inspection", "name: shapes_wf")
    registered = client.post("/v1/workflows", content=text, headers={"Content-Type": "application/yaml"})
    assert registered.status_code == 201, registered.text
    run = client.post("/v1/workflows/shapes_wf/runs", json={"input": {"image": SHAPES_REF["images_png_base64"][7]}})
    assert run.status_code in (200, 201, 202), run.text
    done = wait_status(client, f"/v1/runs/{run.json()['id']}", timeout=60)
    assert done["status"] == "succeeded", done
    assert done["output"]["shape"] == SHAPES_REF["true_labels"][7] == "square"
    assert "square" in done["output"]["description"]
    # A picture that is not one fails its run with the reason.
    bad = client.post("/v1/workflows/shapes_wf/runs", json={"input": {"image": base64.b64encode(b"no").decode()}})
    failed = wait_status(client, f"/v1/runs/{bad.json()['id']}", timeout=60)
    assert failed["status"] == "failed", failed
    assert "not an image" in json.dumps(failed), failed
