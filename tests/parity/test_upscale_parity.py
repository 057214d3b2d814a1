"""`upscale` parity: the served image equals diffusers' own ``StableDiffusionUpscalePipeline``.

Reference: ``StableDiffusionUpscalePipeline.from_pretrained(<the served weights>)`` called the
plain way (``prompt``, ``image`` as a PIL image, ``num_inference_steps``, ``guidance_scale``,
``noise_level``, ``generator=torch.Generator("cpu").manual_seed(seed)``) on an input that fits one
tile (so the server does not split it) with sides that are multiples of 8 (so it pads nothing).
The served handler instead encodes the prompt itself, builds a fresh scheduler per call, takes a
list of generators, runs the UNet's guidance pair per tile and rounds diffusers' float output
itself: none of that may change a pixel.

Tolerance: at most 1 level (of 255) on any channel of any pixel, and at most 0.5 % of the values
off at all (tests/parity/common.py: the worker and this process may run oneDNN with different
thread counts); in practice the images are identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import StableDiffusionUpscalePipeline
from harness import png_b64, sample_image
from parity.common import assert_same_image, decode_png_array, handler_settings, ok, sampling, served_weights


@pytest.fixture(scope="module")
def reference_pipe():
    pipe = StableDiffusionUpscalePipeline.from_pretrained(served_weights("upscale"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


CASES = [
    # (input width, height, prompt, steps, guidance, noise_level, seed)
    pytest.param(32, 24, "a cat", 2, 9.0, 20, 7, id="guided"),
    pytest.param(24, 40, "", 3, 1.0, 100, 123, id="unguided-no-prompt"),
]


@pytest.mark.parametrize("width,height,prompt,steps,guidance,noise_level,seed", CASES)
def test_served_upscale_equals_diffusers_pipeline(
    server, reference_pipe, width, height, prompt, steps, guidance, noise_level, seed
):
    image = sample_image(width, height, seed=seed)
    assert max(width, height) <= handler_settings("upscale")["tile"]  # one tile: the pipeline's own path
    served = ok(
        server.predict(
            "upscale",
            {
                "image": png_b64(image),
                "prompt": prompt,
                "steps": steps,
                "guidance_scale": guidance,
                "noise_level": noise_level,
                "seed": seed,
            },
        )
    )
    assert served["seed"] == seed
    reference = reference_pipe(
        prompt=prompt, image=image, noise_level=noise_level, **sampling(steps, guidance, seed)
    ).images[0]
    assert reference.size == (4 * width, 4 * height)
    assert_same_image(decode_png_array(served["image"]), np.asarray(reference))
