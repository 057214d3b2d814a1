"""Canny edge maps: the control image ControlNet's canny model expects (white edges on black).

One helper for everyone who makes one (the client's ``canny`` command, the interpreter): OpenCV's
Canny on the RGB image, the way ControlNet 1.1's canny model was trained, with its thresholds.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

# ControlNet's canny annotator defaults (hysteresis thresholds on the gradient magnitude)
CANNY_LOW_THRESHOLD = 100
CANNY_HIGH_THRESHOLD = 200


def canny_edges(image: Image.Image, low: int = CANNY_LOW_THRESHOLD, high: int = CANNY_HIGH_THRESHOLD) -> Image.Image:
    """``image``'s Canny edges as an RGB image of the same size: edges 255 on every channel, the rest 0."""
    if not 0 <= low <= high:
        raise ValueError(f"canny thresholds must satisfy 0 <= low <= high, got low={low}, high={high}")
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))
