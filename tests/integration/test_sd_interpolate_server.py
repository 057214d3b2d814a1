"""`sd` with `interpolate` on the real TorchServe: the end frames are the plain generations of their
endpoints pixel for pixel (with and without control), the frames are one batch, bad input names the
field, the client and the CLI (frames and an animated GIF); and `interpret` with `"upscale": true`."""

import pytest
from client_cli import run_cli
from harness import png_b64, sample_image
from PIL import Image

from handlers.common import BATCH_SIZE_HEADER, decode_png

STEPS = 2
DEPTH = png_b64(sample_image(64, 64, seed=1))


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    "fields", [{}, {"control": [{"type": "depth", "image": DEPTH, "scale": 0.8}]}], ids=["plain", "control-fixed"]
)
def test_end_frames_equal_the_plain_generations_pixel_for_pixel(server, fields):
    response = server.predict(
        "sd",
        {
            "interpolate": {"seeds": [21, 4], "prompts": ["a lighthouse", "a red boat"], "frames": 5},
            "steps": STEPS,
            **fields,
        },
    )
    body = ok(response)
    assert response.headers[BATCH_SIZE_HEADER] == "1"  # one request: its five frames are one pipeline call
    assert len(body["images"]) == 5 and body["seeds"] == [21, 4]
    start = ok(server.predict("sd", {"prompt": "a lighthouse", "seed": 21, "steps": STEPS, **fields}))["images"][0]
    end = ok(server.predict("sd", {"prompt": "a red boat", "seed": 4, "steps": STEPS, **fields}))["images"][0]
    frames = [decode_png(frame).tobytes() for frame in body["images"]]
    assert frames[0] == decode_png(start).tobytes()
    assert frames[-1] == decode_png(end).tobytes()
    assert len(set(frames)) == 5


def test_bad_interpolate_input_names_the_field_and_leaves_the_worker_alive(server):
    pids = server.worker_pids("sd")
    for body, field in [
        ({"interpolate": {"seeds": [1, 2], "frames": 3}, "seed": 1}, "seed"),
        ({"interpolate": {"seeds": [1, 2], "frames": 3}, "prompt": "a"}, "prompt"),
        ({"interpolate": {"seeds": [1, 2], "frames": 999}}, "interpolate.frames"),
        ({"interpolate": {"seeds": [1], "frames": 3}}, "interpolate.seeds"),
    ]:
        response = server.predict("sd", body)
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["message"].startswith(f"{field}: ")
    assert server.worker_pids("sd") == pids


def test_client_interpolate_and_the_cli_gif(server, rest, tmp_path):
    body = rest.interpolate([1, 2], 3, ["a cat", "a dog"], steps=STEPS)
    assert len(body["images"]) == 3
    run_cli(
        server,
        "interpolate",
        "--seeds",
        "1",
        "2",
        "--prompts",
        "a cat",
        "a dog",
        "--frames",
        "3",
        "--steps",
        str(STEPS),
        out=tmp_path,
    )
    frames = sorted(tmp_path.glob("interpolation_*.png"))
    assert [f.name for f in frames] == ["interpolation_00.png", "interpolation_01.png", "interpolation_02.png"]
    assert Image.open(frames[0]).tobytes() == decode_png(body["images"][0]).convert("RGB").tobytes()
    with Image.open(tmp_path / "interpolation.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (64, 64)


def test_cli_upscale_saves_the_image(server, tmp_path):
    photo = tmp_path / "photo.png"
    sample_image(16, 12, seed=5).save(photo)
    run_cli(server, "upscale", str(photo), "--steps", str(STEPS), "--seed", "3", out=tmp_path / "out")
    assert Image.open(tmp_path / "out" / "photo_x4.png").size == (64, 48)


def test_interpret_upscales_the_best_sample(server):
    source = png_b64(sample_image(64, 64, seed=9))
    body = ok(
        server.post(
            "inference",
            "/predictions/interpret",
            json={"image": source, "priors": ["depth"], "samples": 2, "steps": STEPS, "seed": 5, "upscale": True},
            timeout=900,
        )
    )  # the upscale runs at its yaml's default steps
    best = body["samples"][body["best"]]
    assert decode_png(best["upscaled"]).size == (256, 256)
    assert all("upscaled" not in sample for i, sample in enumerate(body["samples"]) if i != body["best"])
    # the upscaled image is exactly an upscale call on the best sample with the caption and its seed
    again = ok(
        server.predict(
            "upscale", {"image": best["image"], "prompt": body["caption"]["text"], "seed": best["seed"]}, timeout=900
        )
    )
    assert again["image"] == best["upscaled"]
    assert "upscale" in body["timings"]
