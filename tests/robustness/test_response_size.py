"""No legal request can produce a response over config.properties' max_response_size (TorchServe
kills the worker that sends one): the bounds, checked on paper from the yaml limits, on the
pathological masks the bound is built for, and on the real server with the largest legal requests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from harness import png_bytes
from PIL import Image
from robustness.tools import all_worker_pids, b64, limits, model_yaml, properties

from handlers.common.masks import encode_mask, encoded_size_bound

MAX_RESPONSE = int(properties()["max_response_size"])
ENVELOPE = 4096  # request_id, keys, numbers: generous


def b64_size(raw_bytes: int) -> int:
    return 4 * math.ceil(raw_bytes / 3)


def png_bound(width: int, height: int, bytes_per_pixel: float) -> int:
    """An incompressible PNG: raw rows (+1 filter byte each), deflate's stored-block overhead, chunks."""
    raw = height * (math.ceil(width * bytes_per_pixel) + 1)
    return raw + 5 * (raw // 16384 + 1) + 1024


def clip_scores(images: int) -> int:
    """clip's answer for one image and ``images - 1`` rois: each carries every text and a score."""
    clip = limits("clip")
    texts = clip["max_texts"] * (clip["max_text_length"] * 6 + 4)  # JSON-escaped as \uXXXX at worst
    scores = clip["max_texts"] * 26
    return images * (texts + scores + clip["max_text_length"] * 6 + 200)


def worst_cases() -> dict[str, int]:
    """Strict upper bounds on one response of each model, from the limits in its model-config.yaml."""
    sam, sam_handler = limits("sam"), model_yaml("sam")["handler"]
    max_points = sam_handler["polygon_max_points"]
    # the handler refuses (413) or trims any response over max_response_bytes, whatever the masks
    # (tests/unit/test_sam_handler.py drives that path); the per-mask bound it relies on is checked
    # against real worst-case encodings below
    sam_bound = sam["max_response_bytes"]

    depth = limits("depth")
    depth_side = depth["max_image_side"]
    depth_other = depth["max_image_pixels"] // depth_side
    # a 16-bit grey PNG and an RGB PNG at the input's size
    depth_bound = b64_size(png_bound(depth_side, depth_other, 2)) + b64_size(png_bound(depth_side, depth_other, 3))

    pose = limits("pose")
    pose_side, pose_other = pose["max_image_side"], pose["max_image_pixels"] // pose["max_image_side"]
    people = max(pose["max_people"], pose["max_rois"])
    keypoints = 17 * 3 * 24  # [x, y, score] floats
    pose_bound = b64_size(png_bound(pose_side, pose_other, 3)) + people * (keypoints + 200) + 1024

    clip_bound = clip_scores(1 + limits("clip")["max_rois"])

    sd = limits("sd")
    # max_pixels at any aspect ratio the sides allow: width x height <= max_pixels
    # a prompt list's images, or an interpolation's frames
    sd_images = max(sd["max_prompts"], sd["max_frames"])
    sd_bound = sd_images * (b64_size(png_bound(sd["max_side"], sd["max_pixels"] // sd["max_side"], 3)) + 32)

    # one RGB PNG of at most max_output_pixels (4x each side of the input), at any aspect the sides allow
    upscale = limits("upscale")
    upscale_side = 4 * upscale["max_image_side"]
    upscale_bound = b64_size(png_bound(upscale_side, upscale["max_output_pixels"] // upscale_side, 3))

    pipe = limits("pipeline")
    pipe_side, pipe_other = pipe["max_image_side"], pipe["max_image_pixels"] // pipe["max_image_side"]
    polygon = 2 + max_points * 12
    # the echoed image (or the generated one), sam's masks without RLE (1-bit PNG, polygon, box,
    # score), clip on the image and on every mask's region (with the region's polygon again),
    # depth and pose
    per_mask = b64_size(png_bound(pipe_side, pipe_other, 1 / 8)) + 2 * polygon + 100
    pipeline_bound = (
        max(b64_size(png_bound(pipe_side, pipe_other, 3)), sd_bound)
        + sam["max_masks"] * per_mask
        + clip_scores(1 + sam["max_masks"])
        + depth_bound
        + pose_bound
    )
    return {
        "sam": sam_bound,
        "depth": depth_bound + ENVELOPE,
        "pose": pose_bound + ENVELOPE,
        "clip": clip_bound + ENVELOPE,
        "sd": sd_bound + ENVELOPE,
        "pipeline": pipeline_bound + ENVELOPE,
        "upscale": upscale_bound + ENVELOPE,
    }


def test_pipeline_limits_fit_the_models_it_calls():
    """The pipeline sends every mask sam returns to clip as a roi, and its own roi to sam: a legal
    pipeline request must never make a legal-looking call that a model refuses."""
    pipe, clip, sam = limits("pipeline"), limits("clip"), limits("sam")
    assert sam["max_masks"] <= clip["max_rois"], (
        f"sam may return {sam['max_masks']} masks; describe_regions would send clip more than its "
        f"{clip['max_rois']} rois"
    )
    assert pipe["max_rois"] <= sam["max_boxes"] and pipe["max_rois"] <= sam["max_masks"]
    assert pipe["max_texts"] <= clip["max_texts"] and pipe["max_text_length"] <= clip["max_text_length"]
    assert pipe["max_prompt_length"] <= limits("sd")["max_prompt_length"]
    for name in ("clip", "sam", "depth", "pose"):
        model = limits(name)
        assert pipe["max_image_side"] <= model["max_image_side"], name
        assert pipe["max_image_pixels"] <= model["max_image_pixels"], name
    sd = limits("sd")  # a generated image goes to every analyzer
    assert sd["max_side"] <= min(limits(n)["max_image_side"] for n in ("clip", "sam", "depth", "pose"))


def test_worst_case_responses_fit_max_response_size():
    bounds = worst_cases()
    print(f"\nmax_response_size {MAX_RESPONSE:,} B; worst-case responses from the yaml limits:")
    for name, bound in bounds.items():
        print(f"  {name:<9} {bound:>13,} B  ({100 * bound / MAX_RESPONSE:5.1f}% of the limit)")
    over = {name: bound for name, bound in bounds.items() if bound >= MAX_RESPONSE}
    assert not over, f"a legal request could produce a response over max_response_size: {over}"
    sam = limits("sam")
    assert sam["max_response_bytes"] < MAX_RESPONSE


@pytest.mark.parametrize("name", ["checkerboard", "noise", "stripes", "full", "empty"])
def test_mask_encoding_stays_within_its_bound_at_the_largest_legal_size(name):
    """The bound the sam handler relies on holds for the masks that are worst for each encoding
    (a checkerboard for RLE, noise for PNG and polygons) at 2048x2048."""
    side = limits("sam")["max_image_side"]
    yy, xx = np.mgrid[:side, :side]
    mask = {
        "checkerboard": (xx + yy) % 2 == 0,
        "noise": np.random.default_rng(0).random((side, side)) > 0.5,
        "stripes": xx % 2 == 0,
        "full": np.ones((side, side), bool),
        "empty": np.zeros((side, side), bool),
    }[name]
    item = encode_mask(mask, max_points=model_yaml("sam")["handler"]["polygon_max_points"])
    size = len(
        json.dumps(
            [item["mask"], item["rle"], item["polygon"], item["box"], item["area"], 0.12345678901234567],
            separators=(",", ":"),
        )
    )
    assert size <= encoded_size_bound(side, side), (size, encoded_size_bound(side, side))


@pytest.fixture(scope="module")
def noise_2048():
    side = limits("sam")["max_image_side"]  # 2048: sam, depth, pose and the pipeline share it
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (side, side, 3), dtype=np.uint8))
    raw = png_bytes(image)  # incompressible: ~12.6 MB, as large as a legal image gets
    assert len(b64(raw)) + 100 < int(properties()["max_request_size"])
    return b64(raw)


def largest_legal_requests(image: str) -> list[tuple[str, str, dict]]:
    sam, clip, pose, sd = limits("sam"), limits("clip"), limits("pose"), limits("sd")
    side = sam["max_image_side"]
    upscale_side = int((limits("upscale")["max_output_pixels"] // 16) ** 0.5)  # the largest square input
    boxes = sam["max_masks"] // 3  # x 3 masks each with multimask: exactly max_masks
    step = (side - 200) // boxes
    return [
        ("sam: automatic masks on 2048x2048 noise", "sam", {"image": image}),
        (
            f"sam: {boxes} boxes x multimask on 2048x2048",
            "sam",
            {
                "image": image,
                "roi": [[i * step, i * step, i * step + 200, i * step + 200] for i in range(boxes)],
                "multimask": True,
            },
        ),
        ("depth: 2048x2048 noise", "depth", {"image": image}),
        (
            f"pose: 2048x2048 noise, {pose['max_rois']} rois",
            "pose",
            {"image": image, "roi": [[0, 0, side, side]] * pose["max_rois"]},
        ),
        (
            f"clip: {clip['max_texts']} texts of {clip['max_text_length']} chars, {clip['max_rois']} rois",
            "clip",
            {
                "image": b64(png_bytes(Image.new("RGB", (64, 48)))),
                "texts": [f"{i:03d}" + "\u00e9" * (clip["max_text_length"] - 3) for i in range(clip["max_texts"])],
                "roi": [[0, 0, 64, 48]] * clip["max_rois"],
            },
        ),
        (
            f"sd: {sd['max_prompts']} prompts at 512x512",
            "sd",
            {"prompt": [f"p{i}" for i in range(sd["max_prompts"])], "width": 512, "height": 512, "steps": 1, "seed": 1},
        ),
        ("pipeline: 2048x2048 noise with depth and pose", "pipeline", {"image": image, "priors": ["depth", "pose"]}),
        (
            f"upscale: {upscale_side}x{upscale_side} noise to the output bound",
            "upscale",
            {
                "image": b64(
                    png_bytes(
                        Image.fromarray(
                            np.random.default_rng(2).integers(0, 255, (upscale_side, upscale_side, 3), dtype=np.uint8)
                        )
                    )
                ),
                "steps": 1,
                "seed": 1,
            },
        ),
    ]


def test_largest_legal_requests_answer_under_the_limit_and_keep_their_workers(server, noise_2048):
    before = all_worker_pids(server)
    print()
    for label, name, body in largest_legal_requests(noise_2048):
        response = server.predict(name, body, timeout=600)
        assert response.status_code == 200, f"{label}: {response.status_code} {response.text[:300]}"
        size = len(response.content)
        print(f"  {label:<52} {size:>12,} B ({100 * size / MAX_RESPONSE:4.1f}% of max_response_size)")
        assert size < MAX_RESPONSE
        if name == "sam":
            assert len(response.json()["masks"]) <= limits("sam")["max_masks"]
    response = server.post(
        "inference", "/wfpredict/pipeline", json={"image": noise_2048, "priors": ["depth", "pose"]}, timeout=600
    )
    assert response.status_code == 200, response.text[:300]
    print(f"  {'workflow: 2048x2048 noise with depth and pose':<52} {len(response.content):>12,} B")
    assert all_worker_pids(server) == before, "a worker was restarted"
