"""`sd` parity: the served image equals diffusers' own ``StableDiffusionPipeline`` for the same seed.

Reference: ``StableDiffusionPipeline.from_pretrained(<the served weights>)`` called the plain way
(``prompt``, ``negative_prompt``, ``num_inference_steps``, ``guidance_scale``, ``width``, ``height``,
``generator=torch.Generator("cpu").manual_seed(seed)``), its scheduler swapped the way diffusers'
docs do it (``<Scheduler>.from_config(pipe.scheduler.config)``). The served handler instead
encodes the prompts itself, builds a fresh scheduler per call, runs each image's UNet pair on its
own and takes a list of generators: none of that may change a pixel.

Tolerance: at most 1 level (of 255) on any channel of any pixel, and at most 0.5 % of the values
off at all. The worker and this process may run oneDNN with different thread counts, whose
float sums can round apart by ~1e-6 before the uint8 conversion; in practice the images are
identical (measured: 0 differing values).
"""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, StableDiffusionPipeline
from parity.common import assert_same_image, decode_png_array, handler_settings, ok, sampling, served_weights

# the request's scheduler name -> the diffusers class a user would pick for it (None: the weights' own)
SCHEDULER_CLASSES = {"default": None, "dpm++": DPMSolverMultistepScheduler, "euler_a": EulerAncestralDiscreteScheduler}


@pytest.fixture(scope="module")
def reference_pipe():
    pipe = StableDiffusionPipeline.from_pretrained(
        served_weights("sd"), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_images(
    pipe,
    scheduler: str,
    prompts: list[str],
    seeds: list[int],
    *,
    negative: str,
    steps: int,
    guidance: float,
    width: int,
    height: int,
) -> list[np.ndarray]:
    own = pipe.scheduler
    cls = SCHEDULER_CLASSES[scheduler]
    if cls is not None:
        pipe.scheduler = cls.from_config(own.config)
    try:
        images = []
        for prompt, seed in zip(prompts, seeds):  # one call per image, each with its own seed
            image = pipe(
                prompt, negative_prompt=negative, width=width, height=height, **sampling(steps, guidance, seed)
            ).images[0]
            images.append(np.asarray(image))
        return images
    finally:
        pipe.scheduler = own


CASES = [
    # (scheduler, prompts, seed, negative prompt, steps, guidance, width, height)
    pytest.param("default", ["a lighthouse at dusk"], 7, None, 4, 7.5, 64, 64, id="pndm-guided"),
    pytest.param("dpm++", ["a red bicycle", "a cat"], 123, "blurry", 4, 5.0, 72, 64, id="dpm++-two-prompts-negative"),
    pytest.param("euler_a", ["a boat"], 99, None, 3, 1.0, 64, 80, id="euler_a-unguided"),
]


@pytest.mark.parametrize("scheduler,prompts,seed,negative,steps,guidance,width,height", CASES)
def test_served_image_equals_diffusers_pipeline(
    server, reference_pipe, scheduler, prompts, seed, negative, steps, guidance, width, height
):
    body = {
        "prompt": prompts if len(prompts) > 1 else prompts[0],
        "seed": seed,
        "steps": steps,
        "guidance_scale": guidance,
        "width": width,
        "height": height,
        "scheduler": scheduler,
    }
    if negative is not None:
        body["negative_prompt"] = negative
    served = ok(server.predict("sd", body))
    seeds = [seed + i for i in range(len(prompts))]
    assert served["seeds"] == seeds
    negative_prompt = negative if negative is not None else handler_settings("sd").get("negative_prompt") or ""
    references = reference_images(
        reference_pipe,
        scheduler,
        prompts,
        seeds,
        negative=negative_prompt,
        steps=steps,
        guidance=guidance,
        width=width,
        height=height,
    )
    assert len(served["images"]) == len(references)
    for image, reference in zip(served["images"], references):
        assert_same_image(decode_png_array(image), reference)
