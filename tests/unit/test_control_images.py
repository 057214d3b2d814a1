"""Control images from the priors: OpenPose's rendering, Canny edges, depth near = white.

The OpenPose checks hold the renderer to OpenPose's published body convention, written out as the
reference in openpose_reference.json beside this file (1-based as OpenPose lists them): its
18-keypoint order, its limb sequence and its 18-colour table. A known skeleton is drawn and pixels
are read back at every joint (full colour of that keypoint) and every limb's midpoint (60 % of that
limb's colour), so a swapped limb, a shifted colour, a missing neck or a wrong left/right mapping
from COCO fails.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handlers.common.drawing import COCO_KEYPOINT_NAMES, depth_control_image
from handlers.common.edges import canny_edges
from handlers.common.openpose import COLOURS, LIMBS, OPENPOSE_KEYPOINT_NAMES, draw_openpose, openpose_keypoints

# OpenPose's reference tables (the ControlNet annotator's: controlnet_aux's open_pose/util.py), kept
# as data beside this file rather than imported from the handler, so the handler is checked against them
OPENPOSE = json.loads(Path(__file__).with_name("openpose_reference.json").read_text())
OPENPOSE_ORDER: list[str] = OPENPOSE["keypoints"]["names"]  # the 18 body keypoints, in OpenPose's order
OPENPOSE_LIMB_SEQ: list[list[int]] = OPENPOSE["limb_seq"]["pairs"]  # 1-based, in drawing order
OPENPOSE_COLOURS: list[list[int]] = OPENPOSE["colours"]["rgb"]

# A person facing the viewer on a 200x220 canvas (their right on the image's left), every joint and
# limb midpoint far enough from the others that no drawing covers another's test pixel.
SKELETON = {
    "nose": (100, 40),
    "left_eye": (115, 28),
    "right_eye": (85, 28),
    "left_ear": (135, 32),
    "right_ear": (65, 32),
    "left_shoulder": (140, 70),
    "right_shoulder": (60, 70),
    "left_elbow": (165, 110),
    "right_elbow": (35, 110),
    "left_wrist": (180, 150),
    "right_wrist": (20, 150),
    "left_hip": (125, 140),
    "right_hip": (75, 140),
    "left_knee": (135, 175),
    "right_knee": (65, 175),
    "left_ankle": (140, 210),
    "right_ankle": (60, 210),
}
SIZE = (200, 220)


def coco_person(score=0.9, low=()):
    return {"keypoints": [[*SKELETON[name], 0.1 if name in low else score] for name in COCO_KEYPOINT_NAMES]}


def openpose_point(name):
    if name == "neck":
        (lx, ly), (rx, ry) = SKELETON["left_shoulder"], SKELETON["right_shoulder"]
        return ((lx + rx) / 2, (ly + ry) / 2)
    return SKELETON[name]


def pixel(canvas, point):
    x, y = point
    return tuple(int(v) for v in canvas[int(y), int(x)])


def test_tables_are_openposes():
    assert list(OPENPOSE_KEYPOINT_NAMES) == OPENPOSE_ORDER
    assert [[a + 1, b + 1] for a, b in LIMBS] == OPENPOSE_LIMB_SEQ
    assert [list(c) for c in COLOURS] == OPENPOSE_COLOURS


def test_neck_is_the_shoulders_midpoint_and_coco_maps_by_name():
    points = openpose_keypoints(coco_person()["keypoints"], threshold=0.3)
    assert len(points) == 18
    for name, point in zip(OPENPOSE_ORDER, points):
        assert point == pytest.approx(openpose_point(name)), name


def test_every_joint_in_its_colour_and_every_limb_at_sixty_percent_of_its_own():
    canvas = draw_openpose(SIZE, [coco_person()], threshold=0.3)
    assert canvas.shape == (SIZE[1], SIZE[0], 3) and canvas.dtype == np.uint8
    for k, name in enumerate(OPENPOSE_ORDER):
        assert pixel(canvas, openpose_point(name)) == tuple(OPENPOSE_COLOURS[k]), name
    for i, (a, b) in enumerate(OPENPOSE_LIMB_SEQ):
        (xa, ya), (xb, yb) = openpose_point(OPENPOSE_ORDER[a - 1]), openpose_point(OPENPOSE_ORDER[b - 1])
        expected = tuple(int(c * 0.6) for c in OPENPOSE_COLOURS[i])
        limb = (i, OPENPOSE_ORDER[a - 1], OPENPOSE_ORDER[b - 1])
        assert pixel(canvas, ((xa + xb) / 2, (ya + yb) / 2)) == expected, limb
    # black canvas: the corners and the space between the legs stay black
    for point in [(0, 0), (199, 0), (0, 219), (199, 219), (100, 200)]:
        assert pixel(canvas, point) == (0, 0, 0)


def test_limbs_are_ellipses_along_the_bone_with_openposes_width():
    # only the right arm's upper bone, on a diagonal: the ellipse lies along it, 4 px to each side
    person = {"keypoints": [[0, 0, 0.0]] * 17}
    person["keypoints"][6] = [50, 50, 1.0]  # right shoulder
    person["keypoints"][8] = [150, 150, 1.0]  # right elbow
    canvas = draw_openpose((200, 200), [person], threshold=0.3)
    limb = tuple(int(c * 0.6) for c in OPENPOSE_COLOURS[2])  # limb 3: right shoulder -> right elbow
    for along in (70, 100, 130):
        assert pixel(canvas, (along, along)) == limb
        assert pixel(canvas, (along + 2, along - 2)) == limb  # 2.8 px off the bone: inside the 4 px half-width
        assert pixel(canvas, (along + 5, along - 5)) == (0, 0, 0)  # 7 px off it: outside
    assert pixel(canvas, (150, 50)) == (0, 0, 0)  # the other diagonal: a wrong angle would draw here
    assert pixel(canvas, (50, 50)) == tuple(OPENPOSE_COLOURS[2])  # the joints on top, radius 4, full colour
    assert pixel(canvas, (53, 50)) == tuple(OPENPOSE_COLOURS[2])


def test_keypoints_under_the_threshold_are_left_out_with_their_limbs():
    canvas = draw_openpose(SIZE, [coco_person(low=("left_wrist", "right_shoulder"))], threshold=0.3)
    assert pixel(canvas, SKELETON["left_wrist"]) == (0, 0, 0)
    left_forearm = np.mean([SKELETON["left_elbow"], SKELETON["left_wrist"]], axis=0)
    assert pixel(canvas, left_forearm) == (0, 0, 0)
    assert pixel(canvas, SKELETON["left_elbow"]) == tuple(OPENPOSE_COLOURS[6])  # the rest of the arm stays
    # one shoulder missing: no neck, so nothing joins the head to the body
    assert pixel(canvas, openpose_point("neck")) == (0, 0, 0)
    assert pixel(canvas, np.mean([openpose_point("neck"), SKELETON["nose"]], axis=0)) == (0, 0, 0)
    assert pixel(canvas, SKELETON["right_shoulder"]) == (0, 0, 0)


def test_several_people_and_nobody():
    second = {"keypoints": [[x / 2, y / 2, 0.9] for x, y, _ in coco_person()["keypoints"]]}
    canvas = draw_openpose(SIZE, [coco_person(), second], threshold=0.3)
    assert pixel(canvas, (50, 20)) == tuple(OPENPOSE_COLOURS[0])  # the second person's nose
    assert pixel(canvas, SKELETON["nose"]) == tuple(OPENPOSE_COLOURS[0])
    assert not draw_openpose((30, 20), [], threshold=0.3).any()


def test_canny_is_white_edges_on_black_at_the_images_size():
    array = np.zeros((60, 80, 3), dtype=np.uint8)
    array[20:40, 30:60] = (200, 120, 40)  # a coloured rectangle on black
    edges = canny_edges(Image.fromarray(array))
    assert edges.mode == "RGB" and edges.size == (80, 60)
    values = np.asarray(edges)
    assert set(np.unique(values)) == {0, 255}
    assert (values[..., 0] == values[..., 1]).all() and (values[..., 1] == values[..., 2]).all()
    white = values[..., 0] == 255
    assert white[19:41, 29:31].any() and white[19:41, 59:61].any()  # its left and right borders
    assert not white[25:35, 35:55].any() and not white[:10].any()  # nothing inside it, nothing far away
    with pytest.raises(ValueError):
        canny_edges(Image.fromarray(array), low=200, high=100)


def test_depth_control_image_is_near_white():
    inverse_depth = np.array([[1.0, 2.0], [3.0, 5.0]])  # relative inverse depth: larger is nearer
    image = depth_control_image(inverse_depth)
    assert image.dtype == np.uint8 and image.tolist() == [[0, 64], [128, 255]]
    metres = np.array([[1.0, 2.0], [3.0, 5.0]])  # metric: larger is farther
    assert depth_control_image(metres, invert=True).tolist() == [[255, 191], [128, 0]]
    assert not depth_control_image(np.full((3, 3), 7.0)).any()  # a constant map: no depth to show
