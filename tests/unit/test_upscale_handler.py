"""`upscale` in-process on the tiny x4 upscaler: 4x sizes, padding, tiling and blending, one call per
shape, the same seed alone or batched, and a 4xx naming the field for every field."""

import itertools

import numpy as np
import pytest
from harness import load_handler, model_config, png_b64, run_batch, sample_image

from handlers.common import SettingsError, decode_png
from handlers.upscaler import SCALE, Upscaler, blend_tiles, tile_boxes, tile_starts

STEPS = 2


@pytest.fixture(scope="module")
def upscale():
    return load_handler(Upscaler, "upscale")


def req(width=16, height=16, seed=0, image_seed=0, **fields):
    return {"image": png_b64(sample_image(width, height, seed=image_seed)), "steps": STEPS, "seed": seed, **fields}


def pixels(body) -> np.ndarray:
    return np.asarray(decode_png(body["image"]))


def test_response_is_four_times_the_input(upscale):
    [(status, body)] = run_batch(upscale, [req(24, 16, seed=5, prompt="a cat")])
    assert status == 200, body
    assert set(body) == {"request_id", "image", "seed", "model"}
    assert body["seed"] == 5 and body["model"] == "upscale" and body["request_id"] == "req-0"
    assert decode_png(body["image"]).size == (24 * SCALE, 16 * SCALE)


def test_sides_that_are_not_multiples_are_padded_and_cropped_back(upscale):
    [(status, body)] = run_batch(upscale, [req(21, 13)])
    assert status == 200, body
    assert decode_png(body["image"]).size == (84, 52)


def test_a_seed_is_drawn_and_returned_when_none_is_sent(upscale):
    body = req()
    del body["seed"]
    [(status, first)] = run_batch(upscale, [body])
    assert status == 200, first
    [(_, again)] = run_batch(upscale, [req(seed=first["seed"])])
    assert np.array_equal(pixels(first), pixels(again))


def test_seed_prompt_and_noise_level_change_the_image(upscale):
    results = run_batch(upscale, [req(seed=1), req(seed=2), req(seed=1, prompt="a dog"), req(seed=1, noise_level=200)])
    assert [status for status, _ in results] == [200] * 4
    base, *others = (pixels(body) for _, body in results)
    for other in others:
        assert not np.array_equal(base, other)


def test_requests_of_one_shape_share_one_pipeline_call(upscale):
    before = upscale.pipeline_calls
    results = run_batch(upscale, [req(seed=s, prompt=f"p{s}") for s in range(3)])
    assert [status for status, _ in results] == [200] * 3
    assert upscale.pipeline_calls == before + 1
    # another steps value is another call
    run_batch(upscale, [req(seed=0), req(seed=0, steps=1)])
    assert upscale.pipeline_calls == before + 3


def test_the_same_seed_gives_the_same_image_alone_or_batched(upscale):
    alone = [pixels(body) for _, body in (run_batch(upscale, [req(seed=s, image_seed=s)])[0] for s in (7, 8))]
    tiled_alone = pixels(run_batch(upscale, [req(40, 32, seed=9, tile=32)])[0][1])
    batched = run_batch(
        upscale,
        [
            req(seed=7, image_seed=7),
            req(40, 32, seed=9, tile=32),
            req(seed=8, image_seed=8),
            req(seed=3, prompt="other"),
        ],
    )
    assert [status for status, _ in batched] == [200] * 4
    assert np.array_equal(pixels(batched[0][1]), alone[0])
    assert np.array_equal(pixels(batched[2][1]), alone[1])
    assert np.array_equal(pixels(batched[1][1]), tiled_alone)


def test_tiles_cover_the_image_with_the_overlap():
    assert tile_starts(100, 128, 16) == [0]
    for length, tile, overlap in [(300, 128, 16), (129, 128, 16), (512, 128, 16), (72, 32, 8)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] == length - tile
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))
    boxes = tile_boxes((72, 40), 32, 8)
    assert {(w, h) for _, _, w, h in boxes} == {(32, 32)}
    covered = np.zeros((40, 72), bool)
    for x, y, w, h in boxes:
        covered[y : y + h, x : x + w] = True
    assert covered.all()


def test_blending_keeps_a_constant_image_constant_and_takes_each_tile_where_alone():
    boxes = tile_boxes((48, 16), 32, 8)  # two tiles side by side, 16 px shared
    assert boxes == [(0, 0, 32, 16), (16, 0, 32, 16)]
    constant = blend_tiles([np.full((64, 128, 3), 0.25, np.float32)] * 2, boxes, (48, 16), 8)
    assert constant.shape == (64, 192, 3) and np.allclose(constant, 0.25)
    left, right = np.zeros((64, 128, 3), np.float32), np.ones((64, 128, 3), np.float32)
    blended = blend_tiles([left, right], boxes, (48, 16), 8)
    assert np.all(blended[:, :64] == 0) and np.all(blended[:, 128:] == 1)  # only one tile there
    across = blended[0, 64:128, 0]
    assert np.all(np.diff(across) >= 0) and 0 < across[32] < 1  # a ramp across the overlap, no seam


def test_a_tiled_image_has_the_full_size_and_no_visible_seam(upscale):
    [(status, body)] = run_batch(upscale, [req(56, 24, tile=32, image_seed=4)])
    assert status == 200, body
    image = pixels(body).astype(np.int16)
    assert image.shape == (24 * SCALE, 56 * SCALE, 3)
    # the column steps at the tiles' old borders are no larger than the image's steps elsewhere
    steps = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))
    assert steps.max() < 4 * np.median(steps) + 20


def test_the_output_bound_is_a_413_naming_the_image(upscale):
    limit = upscale.settings.limits.max_output_pixels
    side = int((limit / SCALE**2) ** 0.5) + 8  # just over: 16 x side^2 > limit
    [(status, body)] = run_batch(upscale, [req(side, side)])
    assert status == 413 and body["message"].startswith("image: ") and str(limit) in body["message"]


BAD = [
    ({"steps": 2}, "image"),
    ({"image": "not base64!"}, "image"),
    ({"image": png_b64(sample_image(8, 8)), "prompt": 3}, "prompt"),
    ({"image": png_b64(sample_image(8, 8)), "prompt": "x" * 5000}, "prompt"),
    ({"image": png_b64(sample_image(8, 8)), "steps": 0}, "steps"),
    ({"image": png_b64(sample_image(8, 8)), "steps": 10_000}, "steps"),
    ({"image": png_b64(sample_image(8, 8)), "steps": "2"}, "steps"),
    ({"image": png_b64(sample_image(8, 8)), "guidance_scale": -1}, "guidance_scale"),
    ({"image": png_b64(sample_image(8, 8)), "guidance_scale": 1e9}, "guidance_scale"),
    ({"image": png_b64(sample_image(8, 8)), "noise_level": 351}, "noise_level"),
    ({"image": png_b64(sample_image(8, 8)), "noise_level": 1.5}, "noise_level"),
    ({"image": png_b64(sample_image(8, 8)), "seed": -1}, "seed"),
    ({"image": png_b64(sample_image(8, 8)), "seed": 2**32}, "seed"),
    ({"image": png_b64(sample_image(8, 8)), "tile": 16}, "tile"),
    ({"image": png_b64(sample_image(8, 8)), "tile": 256}, "tile"),
    ({"image": png_b64(sample_image(8, 8)), "tile": 34}, "tile"),
    ({"image": png_b64(sample_image(8, 8)), "scale": 2}, "scale"),
]


def test_bad_input_names_the_field_and_leaves_the_batch_alone(upscale):
    results = run_batch(upscale, [body for body, _ in BAD] + [req()])
    for (status, body), (_, field) in zip(results, BAD):
        assert 400 <= status < 500, (field, body)
        assert body["message"].startswith(f"{field}: "), (field, body)
        assert set(body) == {"request_id", "code", "type", "message"}
    assert results[-1][0] == 200


def test_settings_that_break_their_limits_fail_at_load():
    from handlers.common import load_settings
    from handlers.model_settings import UpscaleSettings

    section = model_config("upscale")["handler"]
    with pytest.raises(SettingsError, match="tile"):
        load_settings(UpscaleSettings, {**section, "tile": 256})
    with pytest.raises(SettingsError, match="noise_level"):
        load_settings(UpscaleSettings, {**section, "noise_level": 400})
    with pytest.raises(RuntimeError, match="multiple of"):
        load_handler(Upscaler, "upscale", tile=34, limits={"min_tile": 32, "max_tile": 128})
