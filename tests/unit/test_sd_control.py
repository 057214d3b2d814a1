"""`sd` with `control` (DESIGN §11), in-process on the tiny weights and their three tiny ControlNets."""

import base64
import shutil

import pytest
import torch
from diffusers.models.controlnets.controlnet import ControlNetOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from harness import assert_names_the_field, load_handler, model_config, png_b64, run_batch, sample_image

from handlers.common import decode_png
from handlers.text_to_image import TextToImage, forward_per_image

STEPS = 3
DEPTH = png_b64(sample_image(64, 64, seed=1))
POSE = png_b64(sample_image(64, 64, seed=2))
CANNY = png_b64(sample_image(64, 64, seed=3))


@pytest.fixture(scope="module")
def sd():
    return load_handler(TextToImage, "sd")


def control(kind, image, **fields):
    return {"type": kind, "image": image, **fields}


def req(prompt="a dancer", controls=None, **fields):
    return {"prompt": prompt, "steps": STEPS, "control": controls or [control("depth", DEPTH)], **fields}


def image_bytes(body, index=0):
    return base64.b64decode(body["images"][index])


def test_all_three_controlnets_load_in_the_worker_sharing_its_models(sd):
    assert list(sd.controlnets) == ["depth", "pose", "canny"]
    pipe = sd.pipeline("default", ["depth", "pose"])
    # the control pipeline is built over the base pipeline's very modules: no second copy of SD
    assert pipe.unet is sd.pipe.unet and pipe.vae is sd.pipe.vae and pipe.text_encoder is sd.pipe.text_encoder
    assert list(pipe.controlnet.nets) == [sd.controlnets["depth"], sd.controlnets["pose"]]
    assert sd.pipeline("default", ["canny"]).controlnet is sd.controlnets["canny"]


def test_control_changes_the_image_and_scale_zero_is_no_control(sd):
    results = run_batch(
        sd,
        [
            req(seed=4),
            req(seed=4, controls=[control("depth", POSE)]),
            req(seed=4, controls=[control("depth", DEPTH, scale=0)]),
            {"prompt": "a dancer", "steps": STEPS, "seed": 4},
        ],
    )
    assert [status for status, _ in results] == [200] * 4
    depth, other_image, scale_zero, plain = (image_bytes(body) for _, body in results)
    assert depth != plain and depth != other_image  # the control image acts, and which one matters
    # zero residuals leave the UNet's sums as they are: the plain pipeline's image, bit for bit
    assert scale_zero == plain


@pytest.mark.parametrize(
    "controls",
    [
        [control("depth", DEPTH)],
        [control("pose", POSE, scale=0.7, start=0.2), control("canny", CANNY, end=0.8)],
        [control("canny", CANNY), control("depth", DEPTH, scale=1.5), control("pose", POSE)],
    ],
    ids=["one", "two", "three"],
)
def test_same_seed_is_bit_identical_alone_or_batched_with_control(sd, controls):
    target = req(seed=1234, controls=controls)
    [(status, alone)] = run_batch(sd, [target])
    assert status == 200, alone
    # the others have their own control images, and one sends two prompts
    others = [{**c, "image": png_b64(sample_image(64, 64, seed=10 + i))} for i, c in enumerate(controls)]
    before = sd.pipeline_calls
    batch = run_batch(sd, [req("a dog", seed=1, controls=others), target, req(["x", "y"], seed=5, controls=others)])
    assert sd.pipeline_calls == before + 1
    assert [status for status, _ in batch] == [200] * 3
    assert image_bytes(batch[1][1]) == image_bytes(alone)
    assert image_bytes(batch[0][1]) != image_bytes(alone)


def test_grouped_by_control_types_and_each_ones_scale_start_and_end(sd):
    bodies = [
        req(seed=1),  # depth
        req(seed=2),  # depth: with the first
        req(seed=3, controls=[control("depth", DEPTH, scale=0.5)]),  # another scale
        req(seed=4, controls=[control("depth", DEPTH, end=0.5)]),  # another end
        req(seed=5, controls=[control("pose", POSE), control("depth", DEPTH)]),  # depth + pose, listed pose first
        req(seed=6, controls=[control("depth", DEPTH), control("pose", POSE)]),  # the same pair: one call
        {"prompt": "no control", "steps": STEPS, "seed": 7},  # no control: a call of its own
    ]
    before = sd.pipeline_calls
    results = run_batch(sd, bodies)
    assert [status for status, _ in results] == [200] * 7
    assert sd.pipeline_calls == before + 5
    # the order a request lists its types in changes nothing
    [(_, reordered)] = run_batch(sd, [req(seed=5, controls=[control("depth", DEPTH), control("pose", POSE)])])
    assert image_bytes(reordered) == image_bytes(results[4][1])


def test_size_defaults_to_the_first_control_image_scaled_to_fit(sd):
    wide = png_b64(sample_image(1024, 256, seed=5))  # 4:1, over max_side (768)
    small = png_b64(sample_image(100, 70, seed=6))
    cases = [
        ([control("depth", wide)], {}, (768, 192)),
        ([control("depth", small), control("pose", wide)], {}, (96, 64)),  # the FIRST image decides
        ([control("depth", small)], {"width": 64, "height": 128}, (64, 128)),  # given sizes win
        ([control("depth", wide)], {"width": 256}, (256, 64)),  # one side: the aspect kept
        ([control("depth", wide)], {"height": 96}, (384, 96)),
    ]
    limits = model_config("sd")["handler"]["limits"]
    assert (limits["max_side"], limits["max_pixels"]) == (768, 262144)  # what the expected sizes assume
    results = run_batch(sd, [req(seed=1, controls=controls, steps=1, **size) for controls, size, _ in cases])
    for (status, body), (_, _, expected) in zip(results, cases):
        assert status == 200, body
        assert decode_png(body["images"][0]).size == expected


BAD = [
    ({"control": "depth"}, "control", "control: must be a list"),
    ({"control": []}, "control", "control: must not be an empty list"),
    (
        {"control": [control("depth", DEPTH), control("pose", POSE), control("canny", CANNY), control("depth", DEPTH)]},
        "control",
        "control: has 4 entries; the limit is 3",
    ),
    ({"control": ["depth"]}, "control[0]", "control[0]: must be an object"),
    ({"control": [{"image": DEPTH}]}, "control[0].type", "control[0].type: is required"),
    ({"control": [control(3, DEPTH)]}, "control[0].type", None),
    ({"control": [control("seg", DEPTH)]}, "control[0].type", "control[0].type: unknown control type 'seg'"),
    (
        {"control": [control("depth", DEPTH), control("depth", POSE)]},
        "control[1].type",
        "control[1].type: 'depth' is already control[0]",
    ),
    ({"control": [control("depth", DEPTH, colour=1)]}, "control[0].colour", "control[0].colour: unknown field"),
    ({"control": [{"type": "depth"}]}, "control[0].image", "control[0].image: is required"),
    ({"control": [control("depth", "not base64!")]}, "control[0].image", "control[0].image: is not valid base64"),
    (
        {"control": [control("depth", base64.b64encode(b"no image").decode())]},
        "control[0].image",
        "control[0].image: is not a PNG or JPEG image",
    ),
    ({"control": [control("depth", png_b64(sample_image(2049, 8)))]}, "control[0].image", None),
    (
        {"control": [control("pose", POSE), control("depth", DEPTH, scale=2.5)]},
        "control[1].scale",
        "control[1].scale: must be <= 2.0, got 2.5",
    ),
    ({"control": [control("depth", DEPTH, scale=-0.1)]}, "control[0].scale", None),
    ({"control": [control("depth", DEPTH, scale="1")]}, "control[0].scale", "control[0].scale: must be a number"),
    ({"control": [control("depth", DEPTH, scale=float("nan"))]}, "control[0].scale", None),
    ({"control": [control("depth", DEPTH, start=-0.5)]}, "control[0].start", None),
    ({"control": [control("depth", DEPTH, end=1.5)]}, "control[0].end", "control[0].end: must be <= 1"),
    (
        {"control": [control("depth", DEPTH, start=0.6, end=0.4)]},
        "control[0].start",
        "control[0].start: must be < end (0.4), got 0.6",
    ),
    ({"control": [control("depth", DEPTH, start=0.5, end=0.5)]}, "control[0].start", None),
    ({"control": [control("depth", DEPTH, end=True)]}, "control[0].end", None),
]


@pytest.mark.parametrize("fields, field, message", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_control_names_the_field(sd, fields, field, message):
    [(status, error)] = run_batch(sd, [{"prompt": "a", "steps": STEPS, **fields}])
    assert_names_the_field(status, error, field, message)


def test_a_bad_control_fails_alone_in_its_batch(sd):
    good = req(seed=21)
    bodies = [
        good,
        req(controls=[control("depth", DEPTH, scale=9)]),
        req(seed=22),
        req(controls=[control("seg", DEPTH)]),
    ]
    before = sd.pipeline_calls
    results = run_batch(sd, bodies)
    assert [status for status, _ in results] == [200, 400, 200, 400]
    assert sd.pipeline_calls == before + 1
    [(_, alone)] = run_batch(sd, [good])
    assert results[0][1]["images"] == alone["images"]


def test_a_type_not_loaded_is_a_4xx_naming_it(tmp_path):
    # listed in the yaml but its weights absent (a profile built without it), and not listed at all
    weights = tmp_path / "sd"
    shutil.copytree(model_config("sd")["handler"]["weights_dir"], weights)
    shutil.rmtree(weights / "controlnet" / "canny")
    partial = load_handler(TextToImage, "sd", weights_dir=str(weights), control={"types": ["depth", "canny"]})
    assert list(partial.controlnets) == ["depth"]
    results = run_batch(
        partial,
        [
            req(seed=1, controls=[control("depth", DEPTH), control("canny", CANNY)]),
            req(seed=2, controls=[control("pose", POSE)]),
            req(seed=3),
        ],
    )
    assert [status for status, _ in results] == [400, 400, 200]
    assert results[0][1]["message"] == (
        "control[1].type: no canny ControlNet is installed on this server (installed: depth)"
    )
    assert results[1][1]["message"].startswith("control[0].type: no pose ControlNet is installed")


def test_settings_refuse_bad_control_defaults():
    with pytest.raises(Exception, match=r"control\.scale"):
        load_handler(TextToImage, "sd", control={"scale": 3.0})
    with pytest.raises(Exception, match="start"):
        load_handler(TextToImage, "sd", control={"start": 0.5, "end": 0.5})
    with pytest.raises(Exception, match=r"control\.types"):
        load_handler(TextToImage, "sd", control={"types": ["depth", "segmentation"]})


# --- the per-image split itself: each image's rows alone == its rows of the batched forward -------


def guided_rows(images, *shape, seed=0):
    """Rows as the pipeline stacks them with guidance: [uncond_1..uncond_N, cond_1..cond_N]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2 * images, *shape, generator=generator)


def pick(rows, i, images):
    return rows[[i, images + i]]


@torch.inference_mode()
def test_controlnet_forward_split_per_image_equals_each_image_alone(sd):
    net, images = sd.controlnets["pose"], 3
    sample, text = guided_rows(images, 4, 8, 8), guided_rows(images, 77, 32, seed=1)
    cond = guided_rows(images, 3, 64, 64, seed=2)
    split = forward_per_image(
        net.forward,
        images,
        ControlNetOutput,
        sample,
        torch.tensor(500),
        text,
        cond,
        conditioning_scale=0.8,
        return_dict=True,
    )
    for i in range(images):
        down, mid = net(
            pick(sample, i, images),
            torch.tensor(500),
            pick(text, i, images),
            pick(cond, i, images),
            conditioning_scale=0.8,
            return_dict=False,
        )
        assert torch.equal(pick(split.mid_block_res_sample, i, images), mid)
        assert len(split.down_block_res_samples) == len(down)
        for batched, own in zip(split.down_block_res_samples, down):
            assert torch.equal(pick(batched, i, images), own)


@torch.inference_mode()
def test_unet_forward_split_per_image_splits_the_controlnet_residuals(sd):
    unet, net, images = sd.pipe.unet, sd.controlnets["depth"], 2
    sample, text = guided_rows(images, 4, 8, 8), guided_rows(images, 77, 32, seed=1)
    down, mid = net(sample, torch.tensor(300), text, guided_rows(images, 3, 64, 64, seed=2), return_dict=False)
    split = forward_per_image(
        unet.forward,
        images,
        UNet2DConditionOutput,
        sample,
        torch.tensor(300),
        text,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    )
    for i in range(images):
        own = unet(
            pick(sample, i, images),
            torch.tensor(300),
            pick(text, i, images),
            down_block_additional_residuals=tuple(pick(d, i, images) for d in down),
            mid_block_additional_residual=pick(mid, i, images),
        ).sample
        assert torch.equal(pick(split.sample, i, images), own)
    # the residuals reach the UNet: without them its output differs
    assert not torch.equal(split.sample, unet(sample, torch.tensor(300), text).sample)
