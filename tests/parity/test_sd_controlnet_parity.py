"""`sd` with ``control`` parity: the served image equals diffusers' own ``StableDiffusionControlNetPipeline``.

Reference: ``StableDiffusionControlNetPipeline.from_pretrained(<the served sd weights>,
controlnet=ControlNetModel.from_pretrained(<sd>/controlnet/<type>))`` (a list of them for several
types, in the handler's documented order: depth, pose, canny), called the plain way with
``image=``, ``controlnet_conditioning_scale``, ``control_guidance_start``/``end`` and
``generator=torch.Generator("cpu").manual_seed(seed)``. The request gives ``width``/``height`` equal
to the control image's size, so no size choice of the handler's is involved. The served handler
instead shares the plain pipeline's models, builds the ControlNet pipeline per call and splits the
ControlNets' residuals per image: none of that may change a pixel.

Tolerance: as test_sd_parity.py (at most 1 level, at most 0.5 % of the values; measured 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from harness import png_b64, sample_image
from parity.common import assert_same_image, decode_png_array, handler_settings, ok, served_weights

ORDER = ("depth", "pose", "canny")  # the handler's documented order for several ControlNets
SIDE = 64
CONTROL = sample_image(SIDE, SIDE, seed=11)


@pytest.fixture(scope="module")
def controlnets() -> dict[str, ControlNetModel]:
    root = served_weights("sd") / "controlnet"
    return {kind: ControlNetModel.from_pretrained(root / kind).eval() for kind in ORDER}


def reference_image(controlnets, controls: list[dict], prompt: str, seed: int, steps: int) -> np.ndarray:
    defaults = handler_settings("sd")["control"]
    controls = sorted(controls, key=lambda c: ORDER.index(c["type"]))
    nets = [controlnets[c["type"]] for c in controls]
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        served_weights("sd"),
        controlnet=nets[0] if len(nets) == 1 else nets,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    one = len(controls) == 1

    def option(name: str):
        values = [float(c.get(name, defaults[name])) for c in controls]
        return values[0] if one else values

    image = pipe(
        prompt,
        image=CONTROL if one else [CONTROL] * len(controls),
        num_inference_steps=steps,
        guidance_scale=float(handler_settings("sd")["guidance_scale"]),
        width=SIDE,
        height=SIDE,
        negative_prompt=handler_settings("sd").get("negative_prompt") or "",
        controlnet_conditioning_scale=option("scale"),
        control_guidance_start=option("start"),
        control_guidance_end=option("end"),
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image)


CASES = [
    pytest.param([{"type": "canny", "scale": 0.7}], id="canny"),
    pytest.param([{"type": "canny", "scale": 0.5}, {"type": "depth", "end": 0.5}], id="canny+depth"),
]


@pytest.mark.parametrize("controls", CASES)
def test_served_image_equals_diffusers_controlnet_pipeline(server, controlnets, controls):
    # the default scheduler: the weights' own, as StableDiffusionControlNetPipeline.from_pretrained loads it
    body = {
        "prompt": "a house by a lake",
        "seed": 21,
        "steps": 3,
        "width": SIDE,
        "height": SIDE,
        "scheduler": "default",
        "control": [{**c, "image": png_b64(CONTROL)} for c in controls],
    }
    served = ok(server.predict("sd", body))
    reference = reference_image(controlnets, controls, body["prompt"], body["seed"], body["steps"])
    assert_same_image(decode_png_array(served["images"][0]), reference)
    # without the control the image is another one: the ControlNets' residuals reach the pixels
    plain = ok(server.predict("sd", {key: value for key, value in body.items() if key != "control"}))
    assert np.abs(decode_png_array(plain["images"][0]).astype(int) - reference.astype(int)).max() > 10
