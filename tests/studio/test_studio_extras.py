"""The studio's after-a-run actions in a real browser against the session's tiny TorchServe: a sample
upscaled x4, and the frames between two samples of the same priors, whose end frames are those two
samples; refusals name the field."""

from __future__ import annotations

import base64
import io

import requests
from PIL import Image

TIMEOUT_MS = 300_000  # an upscale and an interpolation on the tiny profile on a busy 2-core machine


def stored(studio, sha256: str) -> bytes:
    return (studio.data_dir / "images" / sha256[:2] / f"{sha256}.png").read_bytes()


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


def test_upscale_and_interpolate_from_the_run_page(recorded, browser):
    studio, run = recorded
    page = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=studio.url).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"/runs/{run['id']}")
    first, second = (sample["index"] for sample in run["samples"][:2])

    page.click(f".sample[data-sample='{first}'] button[data-action=upscale]")
    page.wait_for_selector("#extras:not([hidden]) #extras-images img")
    width = page.evaluate("document.querySelector('#extras-images img').naturalWidth")
    source = Image.open(io.BytesIO(stored(studio, run["samples"][0]["image_sha256"])))
    assert width == 4 * source.width
    assert "upscaled x4" in page.inner_text("#extras-title")

    page.check(f".sample[data-sample='{first}'] input[name=chosen]")
    page.check(f".sample[data-sample='{second}'] input[name=chosen]")
    page.fill("#frames", "3")
    page.click("#interpolate")
    page.wait_for_function("document.querySelectorAll('#extras-images img').length === 3")
    # the page lists samples by rank: the walk goes from the higher-ranked checked sample to the other
    first, second = page.eval_on_selector_all("input[name=chosen]:checked", "boxes => boxes.map(b => Number(b.value))")
    assert page.inner_text("#extras-title") == f"3 frames from sample {first} to {second}"
    frames = [
        base64.b64decode(src.split(",", 1)[1])
        for src in page.eval_on_selector_all("#extras-images img", "images => images.map(image => image.src)")
    ]
    by_index = {sample["index"]: sample for sample in run["samples"]}
    # the walk starts and ends at the two samples themselves: same seeds, caption and control
    assert pixels(frames[0]) == pixels(stored(studio, by_index[first]["image_sha256"]))
    assert pixels(frames[-1]) == pixels(stored(studio, by_index[second]["image_sha256"]))


def test_refusals_name_the_field(recorded):
    studio, run = recorded
    for body, field in [
        ({"samples": [0], "frames": 3}, "samples"),
        ({"samples": [0, 1]}, "frames"),
        ({"samples": [0, 1], "frames": 1}, "frames"),
        ({"samples": [0, 99], "frames": 3}, "samples"),
    ]:
        response = requests.post(f"{studio.url}/api/runs/{run['id']}/interpolate", json=body, timeout=60)
        assert 400 <= response.status_code < 500 and response.json()["message"].startswith(f"{field}: "), response.text
    response = requests.post(f"{studio.url}/api/runs/{run['id']}/samples/99/upscale", timeout=60)
    assert response.status_code == 404 and response.json()["message"].startswith("samples: ")
