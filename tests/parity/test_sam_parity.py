"""`sam` parity: served masks and IoU scores equal transformers' ``SamModel`` + ``post_process_masks``.

Reference, as the SamModel model card: ``SamProcessor(images=image, input_boxes=... | input_points=...,
input_labels=...)`` into ``SamModel(**inputs, multimask_output=...)``, then
``processor.image_processor.post_process_masks(pred_masks, original_sizes, reshaped_input_sizes)``
(bilinear to the padded input, crop, bilinear to the original size, threshold 0). The served
handler instead caches the image embedding, scales the prompts itself, upsamples in chunks and
ships each mask as a 1-bit PNG.

Tolerance: every mask agrees with the reference on all but 0.1 % of its pixels and has IoU >= 0.999
with it (a logit within float rounding of the threshold may flip a pixel), and every IoU score is
within 1e-7 + 0.1 % of the reference's (the tiny weights' scores are ~1e-4, so an absolute
tolerance alone would not be tight). Measured: 0 pixels differ, scores within 4e-9.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import png_b64, sample_image
from parity.common import decode_png_array, handler_settings, ok, served_weights
from transformers import SamModel, SamProcessor

MAX_DISAGREEING_FRACTION = 0.001
MIN_IOU = 0.999
SCORE_ATOL = 1e-7
SCORE_RTOL = 1e-3

IMAGE = sample_image(80, 60, seed=3)  # not square and not the model's side: the resize and the crop matter
BOXES = [[4, 6, 50, 40], [30, 20, 79, 59]]
POINTS = [[20, 15], [60, 45], [40, 10]]
POINT_LABELS = [1, 1, 0]


@pytest.fixture(scope="module")
def reference():
    path = served_weights("sam")
    return SamProcessor.from_pretrained(path), SamModel.from_pretrained(path).eval()


@torch.inference_mode()
def reference_masks(reference, image, multimask: bool, **prompts) -> tuple[np.ndarray, np.ndarray]:
    """(masks (n, H, W) bool, iou scores (n,)) for one image, prompt-major as the model returns them."""
    processor, model = reference
    inputs = processor(images=image, return_tensors="pt", **prompts)
    outputs = model(**inputs, multimask_output=multimask)
    threshold = float(handler_settings("sam").get("mask_threshold", 0.0))
    masks = processor.image_processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], mask_threshold=threshold
    )
    return masks[0].flatten(0, 1).numpy(), outputs.iou_scores[0].flatten().numpy()


def assert_masks(served: dict, expected_masks: np.ndarray, expected_scores: np.ndarray) -> None:
    masks = [decode_png_array(m) > 0 for m in served["masks"]]
    assert len(masks) == len(expected_masks)
    for i, (mask, expected) in enumerate(zip(masks, expected_masks)):
        assert mask.shape == expected.shape == (IMAGE.height, IMAGE.width)
        disagreeing = (mask != expected).mean()
        union = (mask | expected).sum()
        iou = (mask & expected).sum() / union if union else 1.0
        assert disagreeing <= MAX_DISAGREEING_FRACTION and iou >= MIN_IOU, (i, disagreeing, iou)
    np.testing.assert_allclose(served["iou_scores"], expected_scores, rtol=SCORE_RTOL, atol=SCORE_ATOL)


@pytest.mark.parametrize("multimask", [False, True])
def test_box_prompts(server, reference, multimask):
    served = ok(server.predict("sam", {"image": png_b64(IMAGE), "roi": BOXES, "multimask": multimask}))
    # one image, one box per prompt: the processor's [image][box][4] nesting
    masks, scores = reference_masks(reference, IMAGE, multimask, input_boxes=[BOXES])
    assert len(masks) == len(BOXES) * (3 if multimask else 1)
    assert_masks(served, masks, scores)


def test_point_prompt(server, reference):
    served = ok(server.predict("sam", {"image": png_b64(IMAGE), "points": POINTS, "point_labels": POINT_LABELS}))
    # every point together is one prompt: [image][points][2], labels [image][points]
    masks, scores = reference_masks(reference, IMAGE, False, input_points=[POINTS], input_labels=[POINT_LABELS])
    assert len(masks) == 1
    assert_masks(served, masks, scores)
    # another prompt gives another mask, so agreeing with this one is not agreeing with anything
    other, _ = reference_masks(reference, IMAGE, False, input_points=[[POINTS[0]]], input_labels=[[1]])
    assert (other[0] != masks[0]).mean() > 100 * MAX_DISAGREEING_FRACTION


def test_points_refining_boxes(server, reference):
    served = ok(server.predict("sam", {"image": png_b64(IMAGE), "roi": BOXES, "points": POINTS[:2]}))
    # the handler's documented meaning: the points join every box's prompt
    points = [[POINTS[:2]] * len(BOXES)]
    masks, scores = reference_masks(
        reference, IMAGE, False, input_boxes=[BOXES], input_points=points, input_labels=[[[1, 1]] * len(BOXES)]
    )
    assert_masks(served, masks, scores)
