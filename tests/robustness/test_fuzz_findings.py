"""Regressions for what tests/robustness/test_fuzz.py found: each a legal request that got a 5xx.

1. pose, an image 1 to 3 pixels high: ViTPose's PIL image processor (transformers 5.23) took the
   (3, H, W) array for channels-last and raised ("mean must have W elements"), a 500; the handler now
   pads such images (handlers/common/compat.py's vitpose_safe_image).
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import ensure_tiny_weights, png_b64, sample_image
from PIL import Image
from robustness.tools import all_worker_pids

SHORT_SIZES = [(22, 1), (4, 2), (3, 3), (1, 1)]


@pytest.mark.parametrize("width, height", SHORT_SIZES)
def test_pose_answers_an_image_a_few_pixels_high(server, width, height):
    before = all_worker_pids(server, ["pose"])
    image = png_b64(sample_image(width, height, seed=width))
    for body in ({"image": image}, {"image": image, "roi": [[0, 0, width, height]]}):
        response = server.predict("pose", body)
        assert response.status_code == 200, response.text[:300]
        answer = response.json()
        assert (answer["width"], answer["height"]) == (width, height)
        for person in answer["people"]:
            for x, y, _ in person["keypoints"]:
                assert 0 <= x <= width - 1 and 0 <= y <= height - 1
    assert all_worker_pids(server, ["pose"]) == before


def test_vitpose_processor_still_misreads_short_images():
    """The library behaviour the workaround is for: when this fails, vitpose_safe_image can go."""
    from transformers import AutoImageProcessor

    from handlers.common.compat import VITPOSE_MIN_HEIGHT, vitpose_safe_image

    processor = AutoImageProcessor.from_pretrained(ensure_tiny_weights("pose") / "pose" / "vitpose")
    short = Image.fromarray(np.zeros((VITPOSE_MIN_HEIGHT - 1, 22, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="mean must have"):
        processor(images=[short], boxes=[[[0, 0, 22, 3]]], return_tensors="pt")
    padded = vitpose_safe_image(short)
    assert padded.size == (22, VITPOSE_MIN_HEIGHT)
    assert processor(images=[padded], boxes=[[[0, 0, 22, 3]]], return_tensors="pt")["pixel_values"].ndim == 4
