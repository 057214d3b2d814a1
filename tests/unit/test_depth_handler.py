import numpy as np
import pytest
from harness import load_handler, png_b64, png_bytes, run_batch, sample_image
from PIL import Image

from handlers.common import decode_png
from handlers.common.drawing import COLORMAPS, colorize, normalize, to_uint16
from handlers.depth_estimator import ENCODING, DepthEstimator


@pytest.fixture(scope="module")
def depth():
    return load_handler(DepthEstimator, "depth")


def decode_depth(body):
    """What a client does: the 16-bit PNG back to depth values."""
    png = np.asarray(decode_png(body["depth"]), dtype=np.float64)
    return body["min"] + png / 65535.0 * (body["max"] - body["min"])


def check_depth_body(body, size):
    assert body["encoding"] == ENCODING == "uint16 linear in [min, max]"
    assert body["kind"] == "relative_inverse_depth"
    assert body["min"] <= body["max"]
    assert (body["width"], body["height"]) == size
    png = decode_png(body["depth"])
    assert png.mode == "I;16" and png.size == size
    values = np.asarray(png)
    if body["max"] > body["min"]:
        assert values.min() == 0 and values.max() == 65535  # the whole 16-bit range is used
    colormap = decode_png(body["colormap"])
    assert colormap.mode == "RGB" and colormap.size == size
    # the control image is the same map in 8 bits, near (larger inverse depth) = white
    control = decode_png(body["control_image"])
    assert control.mode == "L" and control.size == size
    assert np.abs(np.asarray(control, dtype=np.float64) - values / 65535.0 * 255.0).max() <= 0.51


def test_json_image(depth):
    [(status, body)] = run_batch(depth, [{"image": png_b64(sample_image(64, 48))}])
    assert status == 200, body
    assert body["request_id"] == "req-0"
    check_depth_body(body, (64, 48))


def test_raw_image_body(depth):
    [(status, body)] = run_batch(depth, [png_bytes(sample_image(50, 70, seed=3))])
    assert status == 200, body
    check_depth_body(body, (50, 70))


def test_batch_of_different_sizes_is_one_forward_and_bad_request_fails_alone(depth):
    sizes = [(64, 48), (100, 30), (17, 91), (1, 1), (300, 200)]
    bodies = [{"image": png_b64(sample_image(w, h, seed=i))} for i, (w, h) in enumerate(sizes)]
    bodies.insert(2, {"image": png_b64(sample_image()), "colour": "red"})
    bodies.insert(4, png_bytes(sample_image(40, 40)))  # raw body mixed with JSON ones
    before = depth.forwards
    results = run_batch(depth, bodies)
    assert depth.forwards == before + 1
    assert [status for status, _ in results] == [200, 200, 400, 200, 200, 200, 200]
    assert results[2][1]["message"].startswith("colour: unknown field")
    good = [body for status, body in results if status == 200]
    for body, size in zip(good, sizes[:2] + [sizes[2], (40, 40)] + sizes[3:]):
        check_depth_body(body, size)


def test_same_image_gives_the_same_map_alone_or_batched(depth):
    image = {"image": png_b64(sample_image(80, 60, seed=7))}
    [(_, alone)] = run_batch(depth, [image])
    batched = run_batch(depth, [{"image": png_b64(sample_image(33, 120, seed=1))}, image])[1][1]
    assert batched["min"] == pytest.approx(alone["min"], rel=1e-4, abs=1e-9)
    assert batched["max"] == pytest.approx(alone["max"], rel=1e-4, abs=1e-9)


def test_png_round_trips_the_values_within_one_step(depth):
    image = sample_image(90, 40, seed=5)
    expected = depth.resize_to(depth.predict([image])[0], image.size)
    [(status, body)] = run_batch(depth, [{"image": png_b64(image)}])
    assert status == 200, body
    assert body["min"] == pytest.approx(float(expected.min()), rel=1e-6, abs=1e-12)
    assert body["max"] == pytest.approx(float(expected.max()), rel=1e-6, abs=1e-12)
    step = (body["max"] - body["min"]) / 65535.0
    assert np.abs(decode_depth(body) - expected).max() <= step


@pytest.mark.parametrize(
    "body, field, status",
    [
        ({}, "image", 400),
        ({"image": None}, "image", 400),
        ({"image": "not base64!!"}, "image", 400),
        ({"image": "aGVsbG8="}, "image", 400),  # base64 of "hello": not an image
        ({"image": 12}, "image", 400),
        ({"image": png_b64(sample_image()), "roi": [[0, 0, 5, 5]]}, "roi", 400),
        ({"image": png_b64(Image.new("RGB", (2049, 1)))}, "image", 413),
        (b"GIF89a not really", "image", 400),
    ],
)
def test_bad_input_names_the_field(depth, body, field, status):
    [(got, error)] = run_batch(depth, [body])
    assert got == status, error
    assert error["code"] == status
    assert error["message"].startswith(f"{field}: "), error


def test_json_array_body_is_refused(depth):
    [(status, error)] = run_batch(depth, [b'[{"image": "x"}]'])
    assert status == 400 and error["message"].startswith("body: ")


def test_image_limits_come_from_the_yaml():
    small = load_handler(DepthEstimator, "depth", limits={"max_image_side": 32, "max_image_pixels": 600})
    ok, too_wide, too_many = run_batch(
        small,
        [
            {"image": png_b64(sample_image(30, 20))},
            {"image": png_b64(sample_image(33, 2))},
            {"image": png_b64(sample_image(30, 30))},
        ],
    )
    assert ok[0] == 200
    assert too_wide[0] == 413 and "at most 32" in too_wide[1]["message"]
    assert too_many[0] == 413 and "600" in too_many[1]["message"]


def test_input_size_knob_sets_the_models_square():
    handler = load_handler(DepthEstimator, "depth", input_size=30)  # rounded to a multiple of 14
    assert handler.input_size == {"height": 28, "width": 28}
    [(status, body)] = run_batch(handler, [{"image": png_b64(sample_image(64, 48))}])
    assert status == 200, body
    check_depth_body(body, (64, 48))


# --- the shared drawing helpers the handler relies on --------------------------------------------
def test_turbo_colormap_runs_dark_blue_to_green_to_dark_red():
    lut = COLORMAPS["turbo"]
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    low, mid, high = lut[0].astype(int), lut[128].astype(int), lut[255].astype(int)
    assert low.sum() < 150 and high[0] > high[1] + 100 and high[0] > high[2] + 100
    assert mid[1] > 200  # green-yellow in the middle


def test_normalize_and_uint16_handle_constant_maps():
    flat = np.full((4, 5), 3.5, dtype=np.float32)
    assert not normalize(flat).any()
    assert not to_uint16(flat, 3.5, 3.5).any()
    ramp = np.linspace(-2.0, 6.0, 20, dtype=np.float32).reshape(4, 5)
    quantised = to_uint16(ramp, -2.0, 6.0)
    assert quantised.dtype == np.uint16 and quantised.min() == 0 and quantised.max() == 65535
    picture = colorize(ramp)
    assert picture.shape == (4, 5, 3) and (picture[0, 0] == COLORMAPS["turbo"][0]).all()
    assert (colorize(ramp, invert=True)[0, 0] == COLORMAPS["turbo"][255]).all()
