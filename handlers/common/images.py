"""Image codecs: base64/raw PNG or JPEG in, base64 PNG out, with size limits checked before decoding."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from handlers.settings import ImageLimits

from .compat import uint16_image
from .errors import InputError, LimitError

_ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "BMP"}


def decode_image(value: Any, limits: ImageLimits, field: str = "image") -> Image.Image:
    """Raw bytes or a base64 string (a ``data:`` URL prefix is allowed) -> RGB image.

    The declared size is checked against ``limits`` from the header, before any pixel is decoded,
    so a decompression bomb (a tiny file declaring a huge image) costs nothing.
    """
    if isinstance(value, str):
        raw = _b64decode(value, field)
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    elif value is None:
        raise InputError(field, "is required")
    else:
        raise InputError(field, "must be a base64-encoded PNG or JPEG string")
    if not raw:
        raise InputError(field, "is empty")
    try:
        image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        # Pillow refuses, at open, a header declaring over 2 x Image.MAX_IMAGE_PIXELS (~179 Mpx): far
        # over any limit here, so it is the same 413 as the size checks below (not an exception
        # that fails the whole batch)
        raise LimitError(
            field,
            f"declares a decompression-bomb size; the limit is {limits.max_image_side} pixels a side "
            f"and {limits.max_image_pixels} pixels",
            code=413,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(field, "is not a PNG or JPEG image") from None
    if image.format not in _ALLOWED_FORMATS:
        raise InputError(field, f"format {image.format} is not supported; send PNG or JPEG")
    width, height = image.size
    if width < 1 or height < 1:
        raise InputError(field, f"has zero size ({width}x{height})")
    if max(width, height) > limits.max_image_side:
        raise LimitError(
            field, f"is {width}x{height}; the longest side may be at most {limits.max_image_side}", code=413
        )
    if width * height > limits.max_image_pixels:
        raise LimitError(
            field, f"is {width}x{height} = {width * height} pixels; the limit is {limits.max_image_pixels}", code=413
        )
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(field, f"could not be decoded ({exc})") from None
    return image.convert("RGB")


def _b64decode(text: str, field: str) -> bytes:
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "is not valid base64") from None


def encode_png(image: Image.Image | np.ndarray) -> str:
    """An image (PIL, or a uint8/uint16/bool array) -> base64 PNG string."""
    if isinstance(image, np.ndarray):
        image = array_to_image(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def array_to_image(array: np.ndarray) -> Image.Image:
    if array.dtype == bool:
        return Image.fromarray(array.astype(np.uint8) * 255, mode="L")
    if array.dtype == np.uint16:
        return uint16_image(array)
    return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))


def decode_png(text: str) -> Image.Image:
    """Inverse of :func:`encode_png` (for clients and tests)."""
    return Image.open(io.BytesIO(base64.b64decode(text)))


def crop(image: Image.Image, box: list[float]) -> Image.Image:
    """Crop to a pixel box, rounding outward so a thin box keeps at least one pixel."""
    x1, y1, x2, y2 = box
    left, top = int(np.floor(x1)), int(np.floor(y1))
    right, bottom = max(int(np.ceil(x2)), left + 1), max(int(np.ceil(y2)), top + 1)
    return image.crop((left, top, right, bottom))
