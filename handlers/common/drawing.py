"""Pictures for people: a depth colormap (plain numpy) and COCO-17 skeletons (PIL ImageDraw).

No matplotlib and no OpenCV: the colormap is Google's Turbo (Mikhailov, 2019), computed from the
5th-degree polynomial fit published alongside it into a 256-entry lookup table once at import (a close
approximation of the reference table). Used by the ``depth`` and ``pose`` handlers; depends only on
numpy and Pillow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# --- colormap ------------------------------------------------------------------------------------

_TURBO_COEFFS = np.array(
    [  # rows: r, g, b; columns: x^0 .. x^5
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def _turbo_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    powers = np.stack([x**k for k in range(6)])  # (6, 256)
    rgb = (_TURBO_COEFFS @ powers).T  # (256, 3)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _gray_lut() -> np.ndarray:
    return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)


COLORMAPS: dict[str, np.ndarray] = {"turbo": _turbo_lut(), "gray": _gray_lut()}


def normalize(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """``values`` scaled linearly from [vmin, vmax] (default: their own range) to [0, 1], clipped.

    A constant map (vmax == vmin) becomes all zeros rather than a division by zero. NaNs become 0.
    """
    values = np.asarray(values, dtype=np.float32)
    vmin = float(np.nanmin(values)) if vmin is None else float(vmin)
    vmax = float(np.nanmax(values)) if vmax is None else float(vmax)
    span = vmax - vmin
    if not np.isfinite(span) or span <= 0:
        return np.zeros(values.shape, dtype=np.float32)
    out = (values - vmin) / span
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def colorize(
    values: np.ndarray, vmin: float | None = None, vmax: float | None = None, cmap: str = "turbo", invert: bool = False
) -> np.ndarray:
    """A 2-D array -> an ``(H, W, 3)`` uint8 RGB picture through the lookup table ``cmap``.

    ``invert`` flips the scale (for metric depth, where larger is farther: near stays warm).
    """
    if values.ndim != 2:
        raise ValueError(f"colorize expects a 2-D array, got shape {values.shape}")
    unit = normalize(values, vmin, vmax)
    if invert:
        unit = 1.0 - unit
    index = np.round(unit * 255.0).astype(np.uint8)
    return COLORMAPS[cmap][index]


def depth_control_image(values: np.ndarray, invert: bool = False) -> np.ndarray:
    """A depth map as ControlNet's depth model takes it: 8-bit grayscale, its own range stretched to
    [0, 255], near = white. ``invert`` for metric depth (larger is farther); relative inverse depth
    (Depth Anything, DPT) is already near = large."""
    unit = normalize(values)
    if invert:
        unit = 1.0 - unit
    return np.round(unit * 255.0).astype(np.uint8)


def to_uint16(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Linear quantisation of [vmin, vmax] onto [0, 65535] (a 16-bit PNG keeps the values, not a picture).

    Decode with ``vmin + png / 65535 * (vmax - vmin)``.
    """
    return np.round(normalize(values, vmin, vmax) * 65535.0).astype(np.uint16)


# --- skeletons -----------------------------------------------------------------------------------

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

# COCO's person skeleton, 0-based keypoint indices
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13),
    (13, 11),
    (16, 14),
    (14, 12),
    (11, 12),
    (5, 11),
    (6, 12),
    (5, 6),
    (5, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (1, 2),
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
)

_LEFT, _RIGHT, _CENTRE = (255, 140, 0), (0, 170, 255), (60, 220, 60)


def _side(name: str) -> tuple[int, int, int]:
    return _LEFT if name.startswith("left") else _RIGHT if name.startswith("right") else _CENTRE


def _limb_colour(a: int, b: int, names: Sequence[str]) -> tuple[int, int, int]:
    left_a, left_b = names[a].startswith("left"), names[b].startswith("left")
    right_a, right_b = names[a].startswith("right"), names[b].startswith("right")
    if left_a and left_b:
        return _LEFT
    if right_a and right_b:
        return _RIGHT
    return _CENTRE


def draw_pose(
    image: Image.Image,
    people: Iterable[dict[str, Any]],
    *,
    threshold: float = 0.3,
    scale: float = 1.0,
    skeleton: Sequence[tuple[int, int]] = COCO_SKELETON,
    names: Sequence[str] = COCO_KEYPOINT_NAMES,
    draw_boxes: bool = True,
) -> Image.Image:
    """A copy of ``image`` with each person's box, limbs and joints drawn.

    ``people`` are dicts with ``keypoints`` ``[[x, y, score], ...]`` (and optionally ``box``
    ``[x1, y1, x2, y2]``) in the pixels of the image they were predicted on; ``scale`` maps those to
    ``image`` (an overlay downscaled for transport). Joints and limbs whose scores are below
    ``threshold`` are left out, so a low-confidence guess is not drawn as fact.
    """
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    side = max(canvas.size)
    width = max(1, round(side / 250))
    radius = max(2, round(side / 160))
    for person in people:
        keypoints = [(float(x) * scale, float(y) * scale, float(s)) for x, y, s in person["keypoints"]]
        if draw_boxes and person.get("box") is not None:
            x1, y1, x2, y2 = (float(v) * scale for v in person["box"])
            draw.rectangle((x1, y1, x2, y2), outline=(255, 255, 255), width=max(1, width // 2))
        for a, b in skeleton:
            if a >= len(keypoints) or b >= len(keypoints):
                continue
            xa, ya, sa = keypoints[a]
            xb, yb, sb = keypoints[b]
            if sa >= threshold and sb >= threshold:
                draw.line((xa, ya, xb, yb), fill=_limb_colour(a, b, names), width=width)
        for i, (x, y, s) in enumerate(keypoints):
            if s >= threshold:
                colour = _side(names[i]) if i < len(names) else _CENTRE
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(0, 0, 0))
    return canvas


def fit_within(image: Image.Image, max_side: int | None) -> tuple[Image.Image, float]:
    """``image`` downscaled (never up) so its longest side is at most ``max_side``; (image, scale)."""
    if not max_side or max(image.size) <= max_side:
        return image, 1.0
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR), scale
