"""`clip` parity: the served scores equal transformers' ``CLIPModel`` logits, softmaxed over the texts.

Reference: ``CLIPProcessor(text=texts, images=image, padding=True)`` into ``CLIPModel(...)``, then
``logits_per_image.softmax(-1)``: the model card's zero-shot recipe. For each ``roi`` box the same on
``image.crop(box)`` (integer boxes, so the handler's outward rounding is the plain crop). The served
handler instead embeds every image and crop of a batch together, caches text embeddings across
requests (encoded with another batch's padding) and multiplies normalised embeddings itself.

Tolerance: 1e-5 absolute on every probability (float32 sums in other orders and paddings), and the
same best concept.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import png_b64, sample_image
from parity.common import ok, served_weights
from transformers import CLIPModel, CLIPProcessor

PROBABILITY_ATOL = 1e-5
TEXTS = ["a photo of a cat", "a dog", "a red car", "the sea", "a person"]
ROI = [[0, 0, 32, 24], [10, 5, 60, 47], [3, 3, 4, 9]]  # the last is 1x6 px: the processor upscales it


@pytest.fixture(scope="module")
def reference():
    path = served_weights("clip")
    return CLIPProcessor.from_pretrained(path), CLIPModel.from_pretrained(path).eval()


@torch.inference_mode()
def reference_probabilities(reference, image, texts: list[str]) -> np.ndarray:
    processor, model = reference
    inputs = processor(text=texts, images=image, return_tensors="pt", padding=True)
    return model(**inputs).logits_per_image.softmax(dim=-1)[0].numpy()


def assert_scores(served: dict, texts: list[str], expected: np.ndarray) -> None:
    assert served["concepts"] == texts
    np.testing.assert_allclose(served["confidence_scores"], expected, rtol=0, atol=PROBABILITY_ATOL)
    assert served["max_confidence_concept"] == texts[int(expected.argmax())]


def test_scores_equal_clip_model_logits(server, reference):
    for seed in (0, 1):
        image = sample_image(64, 48, seed=seed)
        served = ok(server.predict("clip", {"image": png_b64(image), "texts": TEXTS}))
        assert_scores(served, TEXTS, reference_probabilities(reference, image, TEXTS))


def test_roi_scores_equal_clip_model_on_the_crop(server, reference):
    image = sample_image(64, 48, seed=2)
    texts = TEXTS[:3]
    served = ok(server.predict("clip", {"image": png_b64(image), "texts": texts, "roi": ROI}))
    assert_scores(served, texts, reference_probabilities(reference, image, texts))
    assert [region["box"] for region in served["regions"]] == ROI
    crops = [reference_probabilities(reference, image.crop(tuple(box)), texts) for box in ROI]
    for region, expected in zip(served["regions"], crops):
        assert_scores(region, texts, expected)
    # the crops score differently from the whole image, so matching them is not matching a constant
    assert max(np.abs(crop - crops[0]).max() for crop in crops[1:]) > 100 * PROBABILITY_ATOL
