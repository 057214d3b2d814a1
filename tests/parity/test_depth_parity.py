"""`depth` parity: the served map equals transformers' depth model and its processor's post-processing.

Reference, as the Depth Anything model card: the weights' ``AutoImageProcessor`` into
``AutoModelForDepthEstimation``, then ``processor.post_process_depth_estimation(outputs,
target_sizes=[(height, width)])``.

The handler makes two documented choices (handlers/depth_estimator.py) the card's recipe does not:
1. it resizes every image to the model's square input WITHOUT keeping the aspect ratio (so a
   batch stacks), where the processor by default keeps it (and rounds to a multiple of 14);
2. it resizes the prediction back to the image BILINEARLY (no overshoot beyond the model's range),
   where ``post_process_depth_estimation`` uses bicubic.
So: an image that is already the model's square input size touches neither choice, and is
compared with the card's recipe verbatim (processor defaults, ``post_process_depth_estimation``).
Any other image is compared with the same library calls made the handler's way: the processor
with ``keep_aspect_ratio=False`` at the model's size, ``predicted_depth`` resized bilinearly.

Tolerance: ``min`` and ``max`` within 1e-5 relative, and the decoded 16-bit map
(``min + png / 65535 * (max - min)``) within half a quantisation step plus 1e-6 of the range
(measured: 0.501 of a step). The tiny weights' maps span ~1e-7 (38 % of pixels 0 after the head's
ReLU): every tolerance here is relative to the map's own range, so that does not loosen it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from harness import png_b64, sample_image
from parity.common import decode_png_array, ok, served_weights
from transformers import AutoImageProcessor, AutoModelForDepthEstimation

RANGE_RTOL = 1e-5
FLOAT_SLACK = 1e-6  # of the range, beyond half a quantisation step


@pytest.fixture(scope="module")
def reference():
    path = served_weights("depth")
    return AutoImageProcessor.from_pretrained(path), AutoModelForDepthEstimation.from_pretrained(path).eval()


def model_side(processor) -> tuple[int, int]:
    return int(processor.size["height"]), int(processor.size["width"])


def served_depth(server, image) -> tuple[np.ndarray, dict]:
    served = ok(server.predict("depth", {"image": png_b64(image)}))
    levels = decode_png_array(served["depth"]).astype(np.float64)
    assert levels.shape == (image.height, image.width)
    return served["min"] + levels / 65535.0 * (served["max"] - served["min"]), served


def assert_depth(served_map: np.ndarray, served: dict, expected: np.ndarray) -> None:
    vmin, vmax = float(expected.min()), float(expected.max())
    assert vmax > vmin, "a constant map would match anything"
    np.testing.assert_allclose([served["min"], served["max"]], [vmin, vmax], rtol=RANGE_RTOL, atol=0)
    step = (vmax - vmin) / 65535.0
    error = np.abs(served_map - expected).max()
    assert error <= step / 2 + FLOAT_SLACK * (vmax - vmin), f"max error {error} for a step of {step}"


@torch.inference_mode()
def test_model_sized_image_equals_the_model_card_recipe(server, reference):
    processor, model = reference
    height, width = model_side(processor)
    image = sample_image(width, height, seed=4)
    inputs = processor(images=image, return_tensors="pt")  # the processor's own defaults
    outputs = model(**inputs)
    expected = processor.post_process_depth_estimation(outputs, target_sizes=[(height, width)])[0]
    expected = expected["predicted_depth"].numpy().astype(np.float64)
    served_map, served = served_depth(server, image)
    assert_depth(served_map, served, expected)


@torch.inference_mode()
def test_other_sizes_equal_the_library_calls_made_the_documented_way(server, reference):
    processor, model = reference
    height, width = model_side(processor)
    for image in (sample_image(80, 60, seed=5), sample_image(31, 70, seed=6)):
        inputs = processor(
            images=image, return_tensors="pt", size={"height": height, "width": width}, keep_aspect_ratio=False
        )
        outputs = model(**inputs)
        expected = (
            F.interpolate(
                outputs.predicted_depth[:, None], size=(image.height, image.width), mode="bilinear", align_corners=False
            )[0, 0]
            .numpy()
            .astype(np.float64)
        )
        served_map, served = served_depth(server, image)
        assert_depth(served_map, served, expected)
        # the bicubic post-processing differs (documented choice 2) by far more than the tolerance:
        # the comparison above can tell the two apart
        bicubic = processor.post_process_depth_estimation(outputs, target_sizes=[(image.height, image.width)])
        bicubic = bicubic[0]["predicted_depth"].numpy()
        assert np.abs(bicubic - expected).max() > 10 * (expected.max() - expected.min()) / 65535.0
