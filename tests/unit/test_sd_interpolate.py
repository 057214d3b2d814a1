"""`sd` with `interpolate`, in-process on the tiny weights: the end frames are the plain generations
pixel for pixel, the frames run as one call, a plain request batched beside them is unchanged, and
every interpolate field's bad input is a 4xx naming it."""

import base64

import pytest
import torch
from harness import load_handler, png_b64, run_batch, sample_image

from handlers.common import decode_png
from handlers.text_to_image import TextToImage, slerp

STEPS = 2
DEPTH = png_b64(sample_image(64, 64, seed=1))


@pytest.fixture(scope="module")
def sd():
    return load_handler(TextToImage, "sd")


def images(body) -> list[bytes]:
    return [base64.b64decode(image) for image in body["images"]]


def plain(sd, prompt, seed, **fields) -> bytes:
    [(status, body)] = run_batch(sd, [{"prompt": prompt, "seed": seed, "steps": STEPS, **fields}])
    assert status == 200, body
    return images(body)[0]


@pytest.mark.parametrize(
    "fields",
    [{}, {"scheduler": "euler_a", "guidance_scale": 1.0}, {"control": [{"type": "depth", "image": DEPTH}]}],
    ids=["dpm++-guided", "euler_a-unguided", "control"],
)
def test_end_frames_are_the_plain_generations_pixel_for_pixel(sd, fields):
    before = sd.pipeline_calls
    [(status, body)] = run_batch(
        sd,
        [{"interpolate": {"seeds": [3, 11], "prompts": ["a cat", "a red car"], "frames": 4}, "steps": STEPS, **fields}],
    )
    assert status == 200, body
    assert sd.pipeline_calls == before + 1  # the frames are one batch
    frames = images(body)
    assert len(frames) == 4 and body["seeds"] == [3, 11]
    assert frames[0] == plain(sd, "a cat", 3, **fields)
    assert frames[-1] == plain(sd, "a red car", 11, **fields)
    assert len(set(frames)) == 4  # the middle frames are frames of their own


def test_without_prompts_both_ends_use_the_empty_prompt(sd):
    [(status, body)] = run_batch(sd, [{"interpolate": {"seeds": [1, 2], "frames": 2}, "steps": STEPS}])
    assert status == 200, body
    # sd refuses an empty `prompt`, so the reference is diffusers' pipeline (over the worker's modules,
    # with the yaml's default scheduler) called with prompt "" the plain way
    settings = sd.settings
    for frame, seed in zip(images(body), (1, 2)):
        image = sd.pipeline(settings.scheduler)(
            "",
            negative_prompt=settings.negative_prompt,
            num_inference_steps=STEPS,
            guidance_scale=settings.guidance_scale,
            width=64,
            height=64,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        assert decode_png(base64.b64encode(frame).decode()).tobytes() == image.tobytes()


def test_a_plain_request_batched_beside_an_interpolation_is_unchanged(sd):
    alone = plain(sd, "a boat", 5)
    results = run_batch(
        sd,
        [
            {"prompt": "a boat", "seed": 5, "steps": STEPS},
            {"interpolate": {"seeds": [5, 6], "frames": 3}, "steps": STEPS},
        ],
    )
    assert [status for status, _ in results] == [200, 200]
    assert images(results[0][1]) == [alone]
    assert len(results[1][1]["images"]) == 3


def test_slerp_keeps_the_ends_and_the_norm_of_gaussian_noise():
    a, b = (
        torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0)),
        torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1)),
    )
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    middle = slerp(a, b, 0.5)
    smaller, larger = sorted((a.norm(), b.norm()))
    assert smaller <= middle.norm() <= larger  # on the arc between the two norms
    assert torch.lerp(a, b, 0.5).norm() < 0.8 * smaller  # a straight line's midpoint has ~0.71 of the norm
    assert torch.allclose(slerp(a, a, 0.3), a)  # parallel: no division by sin(0)


BAD = [
    ({"interpolate": {"seeds": [1, 2], "frames": 3}, "seed": 4}, "seed"),
    ({"interpolate": {"seeds": [1, 2], "frames": 3}, "prompt": "a cat"}, "prompt"),
    ({"interpolate": [1, 2]}, "interpolate"),
    ({"interpolate": {"seeds": [1, 2], "frames": 3, "steps": 2}}, "interpolate.steps"),
    ({"interpolate": {"frames": 3}}, "interpolate.seeds"),
    ({"interpolate": {"seeds": [1, 2, 3], "frames": 3}}, "interpolate.seeds"),
    ({"interpolate": {"seeds": [1, -2], "frames": 3}}, "interpolate.seeds[1]"),
    ({"interpolate": {"seeds": ["1", 2], "frames": 3}}, "interpolate.seeds[0]"),
    ({"interpolate": {"seeds": [1, 2], "prompts": "a cat", "frames": 3}}, "interpolate.prompts"),
    ({"interpolate": {"seeds": [1, 2], "prompts": ["a", 5], "frames": 3}}, "interpolate.prompts[1]"),
    ({"interpolate": {"seeds": [1, 2], "prompts": ["a", "x" * 5000], "frames": 3}}, "interpolate.prompts[1]"),
    ({"interpolate": {"seeds": [1, 2]}}, "interpolate.frames"),
    ({"interpolate": {"seeds": [1, 2], "frames": 1}}, "interpolate.frames"),
    ({"interpolate": {"seeds": [1, 2], "frames": 10_000}}, "interpolate.frames"),
    ({"interpolate": {"seeds": [1, 2], "frames": 2.5}}, "interpolate.frames"),
    ({"interpolate": {"seeds": [1, 2], "frames": 3}, "negative_prompt": ["a", "b"]}, "negative_prompt"),
]


def test_bad_interpolate_input_names_the_field(sd):
    results = run_batch(
        sd, [body for body, _ in BAD] + [{"interpolate": {"seeds": [1, 2], "frames": 2}, "steps": STEPS}]
    )
    for (status, body), (_, field) in zip(results, BAD):
        assert 400 <= status < 500, (field, body)
        assert body["message"].startswith(f"{field}: "), (field, body)
    assert results[-1][0] == 200


def test_frames_over_the_limit_name_the_limit(sd):
    limit = sd.settings.limits.max_frames
    [(status, body)] = run_batch(sd, [{"interpolate": {"seeds": [1, 2], "frames": limit + 1}}])
    assert status == 400 and str(limit) in body["message"]
