"""OpenPose's body rendering from COCO-17 keypoints: the control image ControlNet's openpose model expects.

ControlNet 1.1's openpose model (``lllyasviel/control_v11p_sd15_openpose``) was trained on images
drawn by OpenPose's body renderer, so a pose control image has to look exactly like one: a black
canvas, OpenPose's 18 body keypoints (COCO-17 plus a neck at the shoulders' midpoint, in OpenPose's
order), its 17 limbs in its order and colours, each limb a filled ellipse along the bone
(``cv2.ellipse2Poly`` + ``cv2.fillConvexPoly``, 4 px half-width) at 60 % of its colour, then each
joint a filled circle (radius 4 px) at full colour on top. Keypoints under the score threshold are
left out with their limbs (the neck exists only when both shoulders do). Drawn here with OpenCV
because ``controlnet_aux`` needs torchvision, which does not import on this CPU torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

OPENPOSE_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)

# For each OpenPose keypoint, its COCO-17 index (handlers/common/drawing.py COCO_KEYPOINT_NAMES);
# the neck (None) is the midpoint of COCO's shoulders, 5 and 6.
COCO_INDEX: tuple[int | None, ...] = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
COCO_SHOULDERS = (5, 6)

# OpenPose's limbs (0-based indices into OPENPOSE_KEYPOINT_NAMES), in its drawing order: neck to
# shoulders, arms, neck to hips, legs, neck to nose, nose to eyes to ears.
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)

# OpenPose's colour table (RGB): limb i is drawn in COLOURS[i], keypoint k in COLOURS[k].
COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)

STICK_HALF_WIDTH = 4  # px: the limb ellipse's minor semi-axis
JOINT_RADIUS = 4  # px
LIMB_INTENSITY = 0.6  # limbs at 60 % of their colour (OpenPose blends them 0.6 over the canvas)


def openpose_keypoints(coco: Sequence[Sequence[float]], threshold: float) -> list[tuple[float, float] | None]:
    """COCO-17 ``[[x, y, score], ...]`` -> OpenPose's 18 ``(x, y)`` (None where under ``threshold``)."""

    def point(index: int) -> tuple[float, float] | None:
        x, y, score = coco[index][:3]
        return (float(x), float(y)) if float(score) >= threshold else None

    points: list[tuple[float, float] | None] = []
    for index in COCO_INDEX:
        if index is not None:
            points.append(point(index))
            continue
        left, right = (point(i) for i in COCO_SHOULDERS)
        points.append(None if left is None or right is None else ((left[0] + right[0]) / 2, (left[1] + right[1]) / 2))
    return points


def draw_openpose(size: tuple[int, int], people: Iterable[dict[str, Any]], threshold: float) -> np.ndarray:
    """An ``(height, width, 3)`` uint8 RGB OpenPose rendering of every person's COCO-17 ``keypoints``
    (pixels of an image of ``size`` = (width, height)) on black."""
    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    skeletons = [openpose_keypoints(person["keypoints"], threshold) for person in people]
    for points in skeletons:
        for limb, (a, b) in enumerate(LIMBS):
            if points[a] is None or points[b] is None:
                continue
            (xa, ya), (xb, yb) = points[a], points[b]  # type: ignore[misc]  # both checked above
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            centre = (int((xa + xb) / 2), int((ya + yb) / 2))
            polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK_HALF_WIDTH), int(angle), 0, 360, 1)
            colour = tuple(int(c * LIMB_INTENSITY) for c in COLOURS[limb])
            cv2.fillConvexPoly(canvas, polygon, colour)
    for points in skeletons:
        for k, point in enumerate(points):
            if point is not None:
                cv2.circle(canvas, (int(point[0]), int(point[1])), JOINT_RADIUS, COLOURS[k], thickness=-1)
    return canvas
