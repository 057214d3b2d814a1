"""`caption` parity: the served caption equals transformers' ``BlipForConditionalGeneration.generate``.

Reference: the model card's recipe on the served weights directory: ``BlipProcessor(image, text)``
into ``model.generate(**inputs, max_new_tokens=..., num_beams=...)``, one image at a time, decoded
with ``processor.decode(..., skip_special_tokens=True)``. The served handler instead batches the
requests that share their settings and prompt into one ``generate``. Defaults the request leaves
out are the served model-config.yaml's, read from its rendered config.

Tolerance: none; the same token ids decode to the same text.
"""

from __future__ import annotations

import pytest
import torch
from harness import png_b64, sample_image
from parity.common import handler_settings, ok, served_weights
from transformers import BlipForConditionalGeneration, BlipProcessor

CASES = [
    {},
    {"prompt": "a photograph of"},
    {"prompt": "a picture of the", "max_new_tokens": 12, "num_beams": 1},
    {"max_new_tokens": 7, "num_beams": 5},
]


@pytest.fixture(scope="module")
def reference():
    path = served_weights("caption")
    return BlipProcessor.from_pretrained(path), BlipForConditionalGeneration.from_pretrained(path).eval()


@torch.inference_mode()
def reference_caption(reference, image, prompt: str | None, max_new_tokens: int, num_beams: int) -> str:
    processor, model = reference
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    tokens = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams)
    return processor.decode(tokens[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("options", CASES)
def test_caption_equals_blip_generate(server, reference, options):
    defaults = handler_settings("caption")
    expected_settings = {"max_new_tokens": defaults["max_new_tokens"], "num_beams": defaults["num_beams"], **options}
    captions = []
    for seed in (0, 1):
        image = sample_image(64, 48, seed=seed)
        served = ok(server.predict("caption", {"image": png_b64(image), **options}))
        expected = reference_caption(
            reference, image, options.get("prompt"), expected_settings["max_new_tokens"], expected_settings["num_beams"]
        )
        assert served["caption"] == expected
        captions.append(expected)
    # the images caption differently, so matching them is not matching a constant
    assert captions[0] != captions[1]
