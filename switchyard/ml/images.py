"""Image inputs of predict models: safe decoding (Pillow) and the preprocessing a model declares in the config.

The API does this work, not the worker: a file that is not an image, or one too large, is refused with a 4xx
before any task exists, and the task row holds the model-ready tensor (a few KB for small models) rather than
the upload, so a worker runs it like any other predict task (micro-batching, routing, retries, failover to a
remote model server that takes the same tensor).

Decompression bombs: the pixel count is read from the header and checked against `max_pixels` before any
pixel is decoded, and Pillow's own `Image.MAX_IMAGE_PIXELS` guard is set to the same limit.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from switchyard.core.config import ImagePreprocessing, ModelConfig
from switchyard.core.errors import InvalidRequest, PayloadTooLarge
from switchyard.ml.signature import Signature

# Formats taken: what the clients send (PNG, JPEG) and two common lossless/web ones.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
# Media types a raw body (POST /v1/predict/{model} without multipart) may have.
IMAGE_MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/bmp"})

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def set_pixel_limit(max_pixels: int) -> None:
    """Pillow's own decompression-bomb guard (process-wide): above twice this, `open` refuses the file."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def decode(data: bytes, *, max_pixels: int, param: str) -> Image.Image:
    """The first frame of an image file, fully loaded; InvalidRequest (422) for bytes that are not an image of
    an accepted format, PayloadTooLarge (413) for one of more than `max_pixels` pixels. Both name `param`."""
    if not data:
        raise InvalidRequest("the image is empty", param=param)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise _too_large(param, None, max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidRequest(f"not an image (accepted: {', '.join(FORMATS)})", param=param) from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(param, (width, height), max_pixels)
    try:
        image.load()  # header-only until here: this decodes, and finds truncated or corrupt data
    except Image.DecompressionBombError:
        raise _too_large(param, (width, height), max_pixels) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(f"the image is corrupt or truncated ({exc})", param=param) from None
    return image


def _too_large(param: str, size: tuple[int, int] | None, max_pixels: int) -> PayloadTooLarge:
    got = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else "too many pixels"
    return PayloadTooLarge(f"the image is {got}; at most {max_pixels} pixels are taken", param=param)


def preprocess(image: Image.Image, spec: ImagePreprocessing) -> np.ndarray:
    """One image as the model's float32 tensor, without the batch dimension ([C, H, W] or [H, W, C])."""
    if image.mode != spec.mode:
        # Transparent pixels over black would change the picture: composite them on white first.
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert(spec.mode)
    width, height = spec.size
    if image.size != (width, height):
        image = image.resize((width, height), _RESAMPLE[spec.resample])
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # H, W, 1
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    values = (pixels * np.float32(spec.scale) - mean) / std
    if spec.layout == "NCHW":
        values = values.transpose(2, 0, 1)
    return np.ascontiguousarray(values, dtype=np.float32)


def tensor(blobs: Sequence[bytes], spec: ImagePreprocessing, *, max_pixels: int, param: str) -> np.ndarray:
    """Several images as one batch tensor; errors name `param[i]` when there are several."""
    rows = []
    for i, blob in enumerate(blobs):
        where = param if len(blobs) == 1 else f"{param}[{i}]"
        rows.append(preprocess(decode(blob, max_pixels=max_pixels, param=where), spec))
    return np.stack(rows)


def from_base64(values: Sequence[str], *, param: str) -> list[bytes]:
    """Base64 strings (a `data:image/...;base64,` prefix allowed) as bytes; InvalidRequest naming the bad one."""
    blobs = []
    for i, value in enumerate(values):
        text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
        try:
            blobs.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidRequest("not valid base64", param=f"{param}[{i}]") from None
    return blobs


def image_inputs(
    name: str,
    model: ModelConfig,
    signature: Signature | None,
    blobs: Sequence[bytes],
    max_pixels: int,
    *,
    param: str = "input.images",
) -> dict[str, Any]:
    """A predict task's input made of images: `{"inputs": {input: batch tensor as lists}}` (blocking work)."""
    spec = model.image
    if spec is None:
        raise InvalidRequest(f"model '{name}' does not take images (it has no `image` preprocessing)", param=param)
    if spec.input is not None:
        input_name = spec.input
    elif signature is not None and len(signature.inputs) == 1:
        input_name = signature.inputs[0].name
    else:
        input_name = "image"
    batch = tensor(blobs, spec, max_pixels=max_pixels, param=param)
    # Six decimals (far below what a pixel's 1/255 step moves a value) keep the task row about half the size
    # of float32 values written out in full (~9 characters a value instead of ~19).
    return {"inputs": {input_name: np.round(batch.astype(np.float64), 6).tolist()}}
