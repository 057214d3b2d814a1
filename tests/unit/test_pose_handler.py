import os

import numpy as np
import pytest
from harness import WEIGHTS, load_handler, png_b64, png_bytes, run_batch, sample_image
from PIL import Image
from skimage import data as skimage_data

from handlers.common import decode_png
from handlers.common.drawing import COCO_KEYPOINT_NAMES, COCO_SKELETON, draw_pose
from handlers.common.openpose import draw_openpose
from handlers.pose_estimator import PoseEstimator

# Tiny random weights score everything near 0.01: threshold 0 and no size floor let the detector
# path find "people"; threshold 1 guarantees it finds none.
DETECTS = dict(detector_threshold=0.0, min_box_side=0)


@pytest.fixture(scope="module")
def pose():
    return load_handler(PoseEstimator, "pose", **DETECTS)


@pytest.fixture(scope="module")
def nobody():
    return load_handler(PoseEstimator, "pose", detector_threshold=1.0)


@pytest.fixture(scope="module")
def astronaut():
    """A real photograph (one person) bundled in the scikit-image wheel: no download."""
    return Image.fromarray(skimage_data.astronaut())


def check_people(body, size, count=None):
    width, height = size
    assert body["keypoint_names"] == list(COCO_KEYPOINT_NAMES) and len(COCO_KEYPOINT_NAMES) == 17
    assert (body["width"], body["height"]) == size
    if count is not None:
        assert len(body["people"]) == count
    assert body["people"]
    for person in body["people"]:
        x1, y1, x2, y2 = person["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert len(person["keypoints"]) == 17
        for x, y, score in person["keypoints"]:
            assert 0 <= x <= width - 1 and 0 <= y <= height - 1
            assert np.isfinite(score)
    overlay = decode_png(body["overlay"])
    assert overlay.mode == "RGB" and overlay.size == size


def test_roi_boxes_are_used_as_given(pose):
    boxes = [[0, 0, 32, 40], [20.5, 4, 60, 47]]
    before = pose.detector_forwards, pose.pose_forwards
    [(status, body)] = run_batch(pose, [{"image": png_b64(sample_image(64, 48)), "roi": boxes}])
    assert status == 200, body
    assert body["request_id"] == "req-0"
    assert body["boxes_from"] == "roi" and "fallback_reason" not in body
    check_people(body, (64, 48), count=2)
    assert [p["box"] for p in body["people"]] == boxes
    assert all("score" not in p for p in body["people"])
    assert (pose.detector_forwards, pose.pose_forwards) == (before[0], before[1] + 1)  # no detector needed


def test_detector_finds_people_without_roi(pose):
    before = pose.detector_forwards
    [(status, body)] = run_batch(pose, [png_bytes(sample_image(120, 90, seed=2))])  # raw body
    assert status == 200, body
    assert body["boxes_from"] == "detector"
    assert pose.detector_forwards == before + 1
    check_people(body, (120, 90))
    assert 1 <= len(body["people"]) <= pose.settings.limits.max_people == 10
    scores = [p["score"] for p in body["people"]]
    assert scores == sorted(scores, reverse=True)


def test_max_people_limit_bounds_detections():
    few = load_handler(
        PoseEstimator,
        "pose",
        **DETECTS,
        limits={"max_image_side": 2048, "max_image_pixels": 4194304, "max_rois": 2, "max_people": 3},
    )
    [(status, body)] = run_batch(few, [{"image": png_b64(sample_image(200, 150))}])
    assert status == 200, body
    assert body["boxes_from"] == "detector" and 1 <= len(body["people"]) <= 3
    [(status, error)] = run_batch(few, [{"image": png_b64(sample_image()), "roi": [[0, 0, 5, 5]] * 3}])
    assert status == 400 and error["type"] == "LimitExceeded"
    assert error["message"] == "roi: has 3 boxes; the limit is 2"


def test_whole_image_fallback_when_detector_finds_nobody(nobody):
    [(status, body)] = run_batch(nobody, [{"image": png_b64(sample_image(64, 48))}])
    assert status == 200, body
    assert body["boxes_from"] == "whole_image"
    assert "found no person" in body["fallback_reason"]
    check_people(body, (64, 48), count=1)
    assert body["people"][0]["box"] == [0.0, 0.0, 64.0, 48.0]


def test_whole_image_fallback_when_detector_is_off():
    off = load_handler(PoseEstimator, "pose", use_detector=False)
    [(status, body)] = run_batch(off, [{"image": png_b64(sample_image(50, 60))}])
    assert status == 200, body
    assert body["boxes_from"] == "whole_image" and "turned off" in body["fallback_reason"]
    assert off.detector_forwards == 0
    check_people(body, (50, 60), count=1)


def test_whole_image_fallback_when_detector_weights_are_missing(tmp_path):
    os.symlink(WEIGHTS / "tiny" / "pose" / "vitpose", tmp_path / "vitpose")  # no detector/ beside it
    blind = load_handler(PoseEstimator, "pose", weights_dir=str(tmp_path))
    assert blind.detector is None
    [(status, body)] = run_batch(blind, [{"image": png_b64(sample_image(40, 40))}])
    assert status == 200, body
    assert body["boxes_from"] == "whole_image" and "detector" in body["fallback_reason"]
    check_people(body, (40, 40), count=1)


def test_whole_image_fallback_when_detector_fails(monkeypatch):
    broken = load_handler(PoseEstimator, "pose", **DETECTS)

    def explode(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(broken.detector, "forward", explode)
    [(status, body)] = run_batch(broken, [{"image": png_b64(sample_image(40, 30))}])
    assert status == 200, body
    assert body["boxes_from"] == "whole_image" and "detector failed" in body["fallback_reason"]


def test_batch_of_mixed_requests_is_one_detector_and_one_pose_forward(pose):
    bodies = [
        {"image": png_b64(sample_image(64, 48, seed=1))},
        {"image": png_b64(sample_image(100, 30, seed=2)), "roi": [[10, 0, 90, 30]]},
        {"image": png_b64(sample_image(64, 48)), "roi": [[10, 10, 5, 20]]},  # bad: x2 < x1
        png_bytes(sample_image(31, 77, seed=3)),
        {"roi": [[0, 0, 1, 1]]},  # bad: no image
        {"image": png_b64(sample_image(300, 200, seed=4)), "roi": [[0, 0, 300, 200], [100, 50, 200, 190]]},
    ]
    sizes = [(64, 48), (100, 30), None, (31, 77), None, (300, 200)]
    before = pose.detector_forwards, pose.pose_forwards
    results = run_batch(pose, bodies)
    assert (pose.detector_forwards, pose.pose_forwards) == (before[0] + 1, before[1] + 1)
    assert [status for status, _ in results] == [200, 200, 400, 200, 400, 200]
    assert results[2][1]["message"] == "roi[0]: x2 must be > x1"
    assert results[4][1]["message"] == "image: is required"
    assert [body.get("boxes_from") for _, body in results] == ["detector", "roi", None, "detector", None, "roi"]
    for (status, body), size in zip(results, sizes):
        if status == 200:
            check_people(body, size)
    assert len(results[5][1]["people"]) == 2


@pytest.mark.parametrize(
    "body, field, status",
    [
        ({}, "image", 400),
        ({"image": "not base64!!"}, "image", 400),
        ({"image": "aGVsbG8="}, "image", 400),
        ({"image": png_b64(sample_image()), "roi": "everyone"}, "roi", 400),
        ({"image": png_b64(sample_image()), "roi": []}, "roi", 400),
        ({"image": png_b64(sample_image()), "roi": [[0, 0, 10]]}, "roi[0]", 400),
        ({"image": png_b64(sample_image()), "roi": [[0, 0, 10, 10], [0, 0, 65, 10]]}, "roi[1]", 400),
        ({"image": png_b64(sample_image()), "roi": [[0, 0, "a", 10]]}, "roi[0][2]", 400),
        ({"image": png_b64(sample_image()), "roi": [[0, 0, 5, 5]] * 11}, "roi", 400),
        ({"image": png_b64(sample_image()), "people": 2}, "people", 400),
        ({"image": png_b64(Image.new("RGB", (2049, 2)))}, "image", 413),
    ],
)
def test_bad_input_names_the_field(pose, body, field, status):
    [(got, error)] = run_batch(pose, [body])
    assert got == status, error
    assert error["message"].startswith(f"{field}: "), error


def test_real_photograph_through_detector_and_roi(pose, astronaut):
    assert astronaut.size == (512, 512)
    before = pose.detector_forwards, pose.pose_forwards
    detected, given = run_batch(
        pose, [png_bytes(astronaut), {"image": png_b64(astronaut), "roi": [[130, 20, 380, 512]]}]
    )
    assert (pose.detector_forwards, pose.pose_forwards) == (before[0] + 1, before[1] + 1)
    assert detected[0] == 200 and given[0] == 200, (detected, given)
    assert detected[1]["boxes_from"] == "detector"
    check_people(detected[1], (512, 512))
    assert given[1]["boxes_from"] == "roi"
    check_people(given[1], (512, 512), count=1)
    # the overlay is the photograph with drawing on it, not a blank canvas
    overlay = np.asarray(decode_png(given[1]["overlay"]), dtype=np.int16)
    assert np.abs(overlay - np.asarray(astronaut, dtype=np.int16)).mean() < 20


def test_overlay_is_downscaled_to_its_limit_but_keypoints_stay_in_input_pixels():
    small = load_handler(PoseEstimator, "pose", overlay_max_side=40)
    [(status, body)] = run_batch(small, [{"image": png_b64(sample_image(160, 80)), "roi": [[80, 0, 160, 80]]}])
    assert status == 200, body
    assert decode_png(body["overlay"]).size == (40, 20)
    assert any(x > 40 for x, _, _ in body["people"][0]["keypoints"])  # box starts at x=80 in input pixels


def test_control_image_is_the_openpose_rendering_of_the_answered_keypoints():
    drawn = load_handler(PoseEstimator, "pose", keypoint_threshold=0.0)  # tiny weights score ~0.01
    [(status, body)] = run_batch(drawn, [{"image": png_b64(sample_image(96, 80)), "roi": [[4, 4, 90, 76]]}])
    assert status == 200, body
    control = decode_png(body["control_image"])
    assert control.mode == "RGB" and control.size == (96, 80)
    expected = draw_openpose((96, 80), body["people"], threshold=0.0)
    assert (np.asarray(control) == expected).all() and expected.any()
    # joints under the threshold are left out: at 1.0 (above every tiny score) a black canvas
    strict = load_handler(PoseEstimator, "pose", keypoint_threshold=1.0)
    [(status, body)] = run_batch(strict, [{"image": png_b64(sample_image(96, 80)), "roi": [[4, 4, 90, 76]]}])
    assert status == 200 and max(k[2] for k in body["people"][0]["keypoints"]) < 1.0
    assert not np.asarray(decode_png(body["control_image"])).any()


def test_draw_pose_draws_confident_joints_and_limbs_only():
    canvas = Image.new("RGB", (100, 100))
    keypoints = [[0.0, 0.0, 0.0]] * 17
    keypoints[5] = [20.0, 50.0, 0.9]  # left shoulder
    keypoints[6] = [80.0, 50.0, 0.9]  # right shoulder: the (5, 6) limb is drawn between them
    keypoints[0] = [50.0, 10.0, 0.1]  # nose below threshold: not drawn
    assert (5, 6) in COCO_SKELETON
    drawn = np.asarray(draw_pose(canvas, [{"keypoints": keypoints, "box": [10, 5, 90, 95]}], threshold=0.3))
    assert drawn[50, 20].any() and drawn[50, 80].any() and drawn[50, 50].any()
    assert not drawn[10, 50].any()
    assert drawn[5, 50].any()  # the box's top edge
    assert not np.asarray(canvas).any()  # the input is not modified
