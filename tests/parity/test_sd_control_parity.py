"""`sd` + control parity: the served image equals diffusers' own ``StableDiffusionControlNetPipeline``.

Reference: ``ControlNetModel.from_pretrained(<the served weights>/controlnet/<type>)`` for each type
and ``StableDiffusionControlNetPipeline.from_pretrained(<the served sd weights>, controlnet=...)``
(a ``MultiControlNetModel`` for several types), called the plain way diffusers documents: ``prompt``,
``image`` (the control image as a PIL image), ``controlnet_conditioning_scale``,
``control_guidance_start``/``end``, ``num_inference_steps``, ``guidance_scale``, ``width``, ``height``,
``generator=torch.Generator("cpu").manual_seed(seed)``, its scheduler swapped with
``<Scheduler>.from_config(pipe.scheduler.config)`` (the served default is dpm++). The handler instead
builds the control pipeline over the base pipeline's own modules, encodes the prompts itself, and
runs each image's UNet and ControlNet rows on their own: none of that may change a pixel.

Tolerance, as the plain sd parity test (tests/parity/test_sd_parity.py): at most 1 level of 255 on
any value and at most 0.5 % of the values off at all, for float sums the worker's and this
process's thread counts may round apart (measured: 0 differing values).
"""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import ControlNetModel, DPMSolverMultistepScheduler, StableDiffusionControlNetPipeline
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from harness import png_b64, sample_image
from parity.common import decode_png_array, handler_settings, ok, sampling, served_weights
from parity.test_sd_parity import assert_same_image

CONTROL_IMAGES = {kind: sample_image(96, 64, seed=seed) for kind, seed in (("depth", 31), ("pose", 32), ("canny", 33))}


@pytest.fixture(scope="module")
def controlnets():
    root = served_weights("sd") / "controlnet"
    return {kind: ControlNetModel.from_pretrained(root / kind) for kind in CONTROL_IMAGES}


def reference_image(controlnets, kinds, scales, starts, ends, prompt: str, size: tuple[int, int], **sampling_kwargs):
    """diffusers' image for the ``kinds`` at those scales and guidance windows, at ``size`` (width,
    height), with the pipeline's steps, guidance and generator in ``sampling_kwargs`` (common.sampling)."""
    nets = [controlnets[kind] for kind in kinds]
    controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        served_weights("sd"), controlnet=controlnet, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = [CONTROL_IMAGES[kind] for kind in kinds]
    one = len(kinds) == 1
    return pipe(
        prompt,
        image=images[0] if one else images,
        negative_prompt=handler_settings("sd")["negative_prompt"],
        controlnet_conditioning_scale=scales[0] if one else scales,
        control_guidance_start=starts[0] if one else starts,
        control_guidance_end=ends[0] if one else ends,
        width=size[0],
        height=size[1],
        **sampling_kwargs,
    ).images[0]


CASES = [
    # (control types in diffusers' order, scales, starts, ends, seed, steps, guidance, width, height)
    pytest.param(["depth"], [1.0], [0.0], [1.0], 7, 4, 7.5, 96, 64, id="depth"),
    pytest.param(["pose"], [0.6], [0.25], [1.0], 11, 4, 5.0, 64, 96, id="pose-scaled-late-start-resized"),
    pytest.param(
        ["depth", "pose", "canny"],
        [1.0, 0.8, 1.5],
        [0.0, 0.0, 0.2],
        [1.0, 0.5, 1.0],
        3,
        4,
        7.5,
        96,
        64,
        id="multi-three",
    ),
]


@pytest.mark.parametrize("kinds,scales,starts,ends,seed,steps,guidance,width,height", CASES)
def test_served_control_image_equals_diffusers_controlnet_pipeline(
    server, controlnets, kinds, scales, starts, ends, seed, steps, guidance, width, height
):
    assert handler_settings("sd")["scheduler"] == "dpm++"  # what the reference's scheduler assumes
    prompt = "a dancer on a stage"
    controls = [
        {"type": kind, "image": png_b64(CONTROL_IMAGES[kind]), "scale": scale, "start": start, "end": end}
        for kind, scale, start, end in zip(kinds, scales, starts, ends)
    ]
    served = ok(
        server.predict(
            "sd",
            {
                "prompt": prompt,
                "seed": seed,
                "steps": steps,
                "guidance_scale": guidance,
                "width": width,
                "height": height,
                "control": controls[::-1],
            },
        )
    )
    reference = reference_image(
        controlnets, kinds, scales, starts, ends, prompt, (width, height), **sampling(steps, guidance, seed)
    )
    assert_same_image(decode_png_array(served["images"][0]), np.asarray(reference))
