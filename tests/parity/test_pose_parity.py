"""`pose` parity: served keypoints equal transformers' ViTPose + ``post_process_pose_estimation``.

Reference, as the ViTPose model card: the weights' ``AutoImageProcessor`` with ``boxes=`` (COCO
``[x, y, w, h]``) into ``VitPoseForPoseEstimation``, then
``processor.post_process_pose_estimation(outputs, boxes=...)``. The request sends ``roi``, so the
detector is out of the loop and both sides see the same boxes. The handler's one documented
change (handlers/pose_estimator.py): keypoints are clipped to the image; the reference is clipped the same.
Served values are rounded (2 decimals for x, y; 4 for scores).

Tolerance: x and y within 0.006 px (the 0.005 rounding plus float slack), scores within 6e-5
(the 5e-5 rounding plus slack). Measured: within the rounding.

The detector (requests without ``roi``), checked on the same archive registered a second time with
a threshold and a minimum box side the tiny detector's detections pass: each person the server
reports is one of RT-DETR's own ``post_process_object_detection`` detections on the person class
alone (the handler's documented scoring: per query, not the top-k over all 80 classes), clipped to
the image, box and score within the rounding, the best one first. On the served threshold (0.5,
which random weights never reach) the library finds no person either, and the server falls back
to the whole image.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import yaml
from harness import png_b64, sample_image
from parity.common import handler_settings, ok, served_weights
from transformers import AutoImageProcessor, AutoModelForObjectDetection, VitPoseForPoseEstimation
from transformers.models.rt_detr.modeling_rt_detr import RTDetrObjectDetectionOutput

XY_ATOL = 0.006
SCORE_ATOL = 6e-5
BOX_ATOL = 0.006
# the second registration's detector settings: the tiny detector's person scores are ~0.012 and its
# boxes ~5 px, so the yaml's 0.5 and 8 px would leave nothing to compare
DETECTOR_OVERRIDES = {"detector_threshold": 0.005, "min_box_side": 1}

IMAGE = sample_image(96, 72, seed=7)
ROI = [[5, 4, 50, 70], [40, 10, 95, 60], [0, 0, 96, 72]]


@pytest.fixture(scope="module")
def vitpose():
    path = served_weights("pose") / "vitpose"
    return AutoImageProcessor.from_pretrained(path), VitPoseForPoseEstimation.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def detector():
    path = served_weights("pose") / "detector"
    return AutoImageProcessor.from_pretrained(path), AutoModelForObjectDetection.from_pretrained(path).eval()


@torch.inference_mode()
def reference_keypoints(vitpose, image, boxes: list[list[float]]) -> list[np.ndarray]:
    """Per box, (17, 3) [x, y, score] from the library, clipped to the image as documented."""
    processor, model = vitpose
    coco = [[[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes]]
    outputs = model(**processor(images=image, boxes=coco, return_tensors="pt"))
    people = processor.post_process_pose_estimation(outputs, boxes=coco)[0]
    result = []
    for person in people:
        xy = person["keypoints"].numpy().astype(np.float64)
        xy[:, 0] = xy[:, 0].clip(0, image.width - 1)
        xy[:, 1] = xy[:, 1].clip(0, image.height - 1)
        result.append(np.concatenate([xy, person["scores"].numpy().reshape(-1, 1)], axis=1))
    return result


def test_keypoints_on_roi_boxes_equal_vitpose(server, vitpose):
    served = ok(server.predict("pose", {"image": png_b64(IMAGE), "roi": ROI}))
    assert served["boxes_from"] == "roi"
    expected = reference_keypoints(vitpose, IMAGE, ROI)
    assert [person["box"] for person in served["people"]] == ROI
    for person, reference in zip(served["people"], expected):
        keypoints = np.array(person["keypoints"], dtype=np.float64)
        assert keypoints.shape == reference.shape
        np.testing.assert_allclose(keypoints[:, :2], reference[:, :2], rtol=0, atol=XY_ATOL)
        np.testing.assert_allclose(keypoints[:, 2], reference[:, 2], rtol=0, atol=SCORE_ATOL)
    # other boxes give other keypoints, so the match is not with something box-independent
    assert np.abs(expected[0][:, :2] - expected[1][:, :2]).max() > 100 * XY_ATOL


@pytest.fixture(scope="module")
def low_threshold_pose(server, model_store):
    """The served pose archive, registered a second time with ``DETECTOR_OVERRIDES``, so detections exist."""
    name = "pose_detector_parity"
    with (
        zipfile.ZipFile(model_store / "pose.mar") as source,
        zipfile.ZipFile(model_store / f"{name}.mar", "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "model-config.yaml":
                config = yaml.safe_load(data)
                config["handler"].update(DETECTOR_OVERRIDES)
                data = yaml.safe_dump(config, sort_keys=False).encode()
            elif item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = name
                data = json.dumps(manifest).encode()
            target.writestr(item, data)
    server.register(name)
    try:
        yield name
    finally:
        server.request("management", "DELETE", f"/models/{name}").raise_for_status()
        (model_store / f"{name}.mar").unlink()


@torch.inference_mode()
def reference_person_boxes(detector, image, threshold: float, min_side: float) -> tuple[np.ndarray, np.ndarray]:
    """RT-DETR's ``post_process_object_detection`` on the person class alone (the handler's documented
    scoring: per query on the person class, not the top-k over all 80), clipped to the image, boxes
    under ``min_side`` dropped: (scores (n,), boxes (n, 4)), best first."""
    processor, model = detector
    outputs = model(**processor(images=image, return_tensors="pt"))
    person = [int(i) for i, name in model.config.id2label.items() if name == "person"]
    person_only = RTDetrObjectDetectionOutput(logits=outputs.logits[..., person], pred_boxes=outputs.pred_boxes)
    found = processor.post_process_object_detection(
        person_only, threshold=threshold, target_sizes=[(image.height, image.width)]
    )[0]
    boxes = found["boxes"].numpy().astype(np.float64)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image.height)
    big = ((boxes[:, 2] - boxes[:, 0]) >= min_side) & ((boxes[:, 3] - boxes[:, 1]) >= min_side)
    return found["scores"].numpy().astype(np.float64)[big], boxes[big]


def test_detector_boxes_are_rt_detr_person_detections(server, detector, low_threshold_pose):
    settings = handler_settings("pose")
    assert settings["person_label"] == "person"
    max_people = int(settings["limits"]["max_people"])
    threshold, min_side = DETECTOR_OVERRIDES["detector_threshold"], DETECTOR_OVERRIDES["min_box_side"]
    for seed in (7, 8):
        image = sample_image(96, 72, seed=seed)
        served = ok(server.predict(low_threshold_pose, {"image": png_b64(image)}))
        scores, boxes = reference_person_boxes(detector, image, threshold, min_side)
        assert served["boxes_from"] == "detector" and len(scores) > 0
        people = served["people"]
        assert 1 <= len(people) <= max_people
        # the best detection survives non-maximum suppression, so it is the first person
        assert abs(people[0]["score"] - scores[0]) <= SCORE_ATOL
        for person_found in people:  # the rest: each one of the library's detections
            distance = np.abs(boxes - np.array(person_found["box"])).max(axis=1)
            match = int(distance.argmin())
            assert distance[match] <= BOX_ATOL, (person_found, boxes)
            assert abs(scores[match] - person_found["score"]) <= SCORE_ATOL


@torch.inference_mode()
def test_no_person_above_the_served_threshold_means_the_whole_image(server, detector):
    settings = handler_settings("pose")
    threshold, min_side = float(settings["detector_threshold"]), float(settings["min_box_side"])
    image = sample_image(96, 72, seed=9)
    served = ok(server.predict("pose", {"image": png_b64(image)}))
    scores, _ = reference_person_boxes(detector, image, threshold, min_side)
    assert served["boxes_from"] == ("detector" if len(scores) else "whole_image")
