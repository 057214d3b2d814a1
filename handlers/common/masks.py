"""Binary masks -> what a response carries: PNG, COCO RLE, polygon, box, area; and the mask
maths of automatic mask generation (boxes of a mask batch, stability scores). Box IoU and NMS are
in boxes.py.

Conventions (the same for every handler and the pipeline):
- a mask is a ``bool`` array of shape (height, width) at the input image's size;
- a box is ``[x1, y1, x2, y2]`` in pixels with exclusive ends, the same convention as a request's
  ``roi``: a mask covering columns 3..7 has x1=3, x2=8, so ``crop(image, box)`` is exactly its
  extent and ``[0, 0, width, height]`` is the whole image; an empty mask has box ``[0, 0, 0, 0]``;
- a polygon is ``[[x, y], ...]``: pixel indices (inside ``0..width-1`` x ``0..height-1``) of the
  outline of the mask's largest region, simplified (Douglas-Peucker) to at most a given number of
  vertices; an empty mask has the polygon ``[]``;
- RLE is COCO's compressed RLE, ``{"size": [height, width], "counts": str}``, as pycocotools
  writes it (``pycocotools.mask.decode({"size": ..., "counts": counts.encode()})`` inverts it);
- PNG is a 1-bit greyscale PNG, base64: ``np.array(decode_png(s))`` is the bool mask again.

:func:`encoded_size_bound` is a strict upper bound on the JSON bytes one encoded mask can take, so
a handler can prove its worst-case response fits TorchServe's ``max_response_size``.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

# -- one mask ------------------------------------------------------------------------------------


def mask_to_png(mask: np.ndarray) -> str:
    """bool (h, w) -> base64 1-bit PNG (at most ~h*w/8 bytes before base64, whatever the mask)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def png_to_mask(text: str) -> np.ndarray:
    """Inverse of :func:`mask_to_png` (also accepts an 8-bit 0/255 PNG)."""
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    return np.array(image.convert("L")) > 127


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """bool (h, w) -> COCO compressed RLE with ``counts`` as a str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle` (counts as str or bytes)."""
    counts = rle["counts"]
    encoded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(encoded).astype(bool)


def mask_to_box(mask: np.ndarray) -> list[int]:
    """[x1, y1, x2, y2] with exclusive ends; [0, 0, 0, 0] for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return [0, 0, 0, 0]
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def mask_area(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


def mask_to_polygon(mask: np.ndarray, *, epsilon: float = 1.0, max_points: int = 1000) -> list[list[int]]:
    """Outline of the mask's largest region, simplified to <= ``max_points`` vertices; [] if empty."""
    height, width = mask.shape
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return []
    largest = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    return _simplify(largest, epsilon, max_points, width, height)


def _simplify(contour: np.ndarray, epsilon: float, max_points: int, width: int, height: int) -> list[list[int]]:
    max_points = max(int(max_points), 3)
    points = contour
    tolerance = max(float(epsilon), 0.0)
    if tolerance > 0:
        points = cv2.approxPolyDP(contour, tolerance, True)
    if len(points) > max_points:
        # a vertex cap keeps the response size bounded however ragged the mask is: the smallest
        # tolerance (to a few percent) that fits, so the outline keeps as much detail as it may
        low, high = max(tolerance, 0.5), max(tolerance, 0.5) * 2
        fitted = cv2.approxPolyDP(contour, high, True)
        while len(fitted) > max_points:
            low, high = high, high * 2
            fitted = cv2.approxPolyDP(contour, high, True)
        for _ in range(6):
            middle = (low + high) / 2
            candidate = cv2.approxPolyDP(contour, middle, True)
            if len(candidate) > max_points:
                low = middle
            else:
                high, fitted = middle, candidate
        points = fitted
    xy = points.reshape(-1, 2)
    xy = np.stack([np.clip(xy[:, 0], 0, width - 1), np.clip(xy[:, 1], 0, height - 1)], axis=1)
    return xy.astype(int).tolist()


def encode_mask(mask: np.ndarray, *, epsilon: float = 1.0, max_points: int = 1000) -> dict[str, Any]:
    """Everything a response says about one mask: ``mask`` (b64 PNG), ``rle``, ``polygon``, ``box``, ``area``."""
    mask = np.asarray(mask, dtype=bool)
    return {
        "mask": mask_to_png(mask),
        "rle": mask_to_rle(mask),
        "polygon": mask_to_polygon(mask, epsilon=epsilon, max_points=max_points),
        "box": mask_to_box(mask),
        "area": mask_area(mask),
    }


def encoded_size_bound(width: int, height: int, max_points: int = 1000) -> int:
    """Strict upper bound on the JSON bytes of one :func:`encode_mask` result in a response
    (its PNG, RLE, polygon, box, area and a float score, with separators), for any mask.

    - PNG: 1-bit rows of ceil(w/8) bytes plus a filter byte each; deflate never grows data by more
      than 5 bytes per 16 KiB block plus headers (zlib's deflateBound), PNG adds < 1 KiB of chunk
      headers; base64 adds a third.
    - RLE: COCO counts are delta-coded in 5-bit characters; a run of length c costs at most
      2*chars(c) - 1 <= c characters over the two places it is counted, so a mask of h*w pixels
      needs at most h*w + 16 characters (the worst is a checkerboard: one character per pixel).
    - polygon: ``max_points`` vertices of ``[x,y],``.
    """
    raw = height * (1 + math.ceil(width / 8))
    png = raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 19 + 1024
    png_b64 = 4 * math.ceil(png / 3) + 3
    digits = len(str(max(width, height)))
    rle = height * width + 16 + len('{"size":[,],"counts":""},') + 2 * digits
    polygon = 2 + max(int(max_points), 3) * (2 * digits + 4)
    box = 4 * (digits + 1) + 3
    area = len(str(width * height)) + 1
    score = 26  # a float's repr and a comma
    return png_b64 + rle + polygon + box + area + score


# -- many masks (torch) ------------------------------------------------------------------------


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """bool (n, h, w) -> (n, 4) float boxes [x1, y1, x2, y2] with exclusive ends; zeros when empty."""
    if masks.numel() == 0:
        return torch.zeros((masks.shape[0], 4), device=masks.device)
    _, height, width = masks.shape
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    row_idx = torch.arange(height, device=masks.device)
    col_idx = torch.arange(width, device=masks.device)
    y1 = torch.where(rows, row_idx, height).amin(dim=1)
    y2 = torch.where(rows, row_idx + 1, 0).amax(dim=1)
    x1 = torch.where(cols, col_idx, width).amin(dim=1)
    x2 = torch.where(cols, col_idx + 1, 0).amax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return boxes * rows.any(dim=1, keepdim=True)


def stability_scores(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """SAM's stability score: IoU of the masks thresholded at ``threshold +- offset`` (0 if both empty)."""
    inner = (logits > threshold + offset).flatten(-2).sum(-1, dtype=torch.int64)
    outer = (logits > threshold - offset).flatten(-2).sum(-1, dtype=torch.int64)
    return torch.where(
        outer > 0, inner.float() / outer.clamp(min=1).float(), torch.zeros_like(inner, dtype=torch.float)
    )
