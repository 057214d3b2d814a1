"""`upscale` on the real TorchServe: the 4x image, tiling, one seed alone or batched across
concurrent requests, per-request errors that leave the worker alive, and the client."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from harness import png_b64, sample_image

from client import Client
from handlers.common import decode_png

STEPS = 2


def req(width=16, height=16, seed=0, **fields):
    return {"image": png_b64(sample_image(width, height, seed=seed)), "steps": STEPS, "seed": seed, **fields}


def upscaled(server, body) -> np.ndarray:
    response = server.predict("upscale", body)
    assert response.status_code == 200, response.text
    return np.asarray(decode_png(response.json()["image"]))


def test_upscale_is_four_times_the_input(server):
    response = server.predict("upscale", req(20, 12, prompt="a boat"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"request_id", "image", "seed", "model"}
    assert body["request_id"] == response.headers["x-request-id"] and body["model"] == "upscale"
    assert decode_png(body["image"]).size == (80, 48)


def test_a_tiled_input_comes_back_whole(server):
    image = upscaled(server, req(56, 24, tile=32))
    assert image.shape == (96, 224, 3)


def test_the_same_seed_gives_the_same_image_alone_or_under_concurrent_load(server):
    bodies = [req(seed=s) for s in range(4)]
    alone = [upscaled(server, body) for body in bodies[:2]]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda body: upscaled(server, body), bodies))
    assert np.array_equal(together[0], alone[0]) and np.array_equal(together[1], alone[1])
    assert not np.array_equal(together[0], together[1])


def test_bad_requests_get_json_4xx_naming_the_field_and_leave_the_worker_alive(server):
    pids = server.worker_pids("upscale")
    cases = [
        ({"steps": 2}, "image"),
        (req(noise_level=10_000), "noise_level"),
        (req(tile=12), "tile"),
        (req(guidance_scale="9"), "guidance_scale"),
        (req(prompt=["a"]), "prompt"),
        (req(strength=1), "strength"),
    ]
    for body, field in cases:
        response = server.predict("upscale", body)
        assert 400 <= response.status_code < 500, (field, response.text)
        error = response.json()
        assert error["message"].startswith(f"{field}: "), error
        assert {"code", "type", "message"} <= set(error)
    assert server.predict("upscale", req()).status_code == 200
    assert server.worker_pids("upscale") == pids


def test_client_upscale_returns_the_image(server):
    client = Client(server.url("inference"), server.url("management"), key_file=server.key_file)
    body = client.upscale(sample_image(16, 12, seed=2), steps=STEPS, seed=4, prompt="a cat")
    assert body["seed"] == 4 and decode_png(body["image"]).size == (64, 48)
