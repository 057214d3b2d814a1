"""`caption` on the real TorchServe: REST (JSON and raw body), gRPC, the CLI, per-request errors, batching."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from client_cli import run_cli
from harness import png_b64, png_bytes, sample_image

from client import ApiError
from handlers.common import BATCH_SIZE_HEADER

PROMPT = "a photograph of"
IMAGE = sample_image(64, 48, seed=3)


def caption_of(server, body) -> str:
    response = server.predict("caption", body)
    assert response.status_code == 200, response.text
    return response.json()["caption"]


def test_json_request(server):
    response = server.predict("caption", {"image": png_b64(IMAGE)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"request_id", "caption", "model"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["model"] == "caption"
    assert isinstance(body["caption"], str) and body["caption"].strip()


def test_raw_image_body(server):
    response = server.predict("caption", raw=png_bytes(IMAGE))
    assert response.status_code == 200, response.text
    assert response.json()["caption"] == caption_of(server, {"image": png_b64(IMAGE)})


def test_conditional_caption_keeps_the_prompt(server):
    conditional = caption_of(server, {"image": png_b64(IMAGE), "prompt": PROMPT, "num_beams": 1})
    assert conditional.startswith(PROMPT)
    assert conditional != caption_of(server, {"image": png_b64(IMAGE), "num_beams": 1})


def test_grpc_equals_rest(rest, grpc_client):
    for options in ({}, {"prompt": PROMPT, "max_new_tokens": 8, "num_beams": 2}):
        over_grpc = grpc_client.caption(IMAGE, **options)
        assert over_grpc == {**rest.caption(IMAGE, **options), "request_id": over_grpc["request_id"]}


def test_grpc_refusal_names_the_field(grpc_client):
    with pytest.raises(ApiError) as refused:
        grpc_client.caption(IMAGE, num_beams=99)
    assert refused.value.status == 400 and refused.value.body["message"].startswith("num_beams: ")


def test_bad_requests_get_json_4xx_naming_the_field_and_leave_the_worker_alive(server):
    pids = server.worker_pids("caption")
    cases = [
        ({"image": png_b64(IMAGE), "prompt": ["a"]}, "prompt"),
        ({"image": png_b64(IMAGE), "max_new_tokens": 10_000}, "max_new_tokens"),
        ({"image": png_b64(IMAGE), "num_beams": "3"}, "num_beams"),
        ({"image": png_b64(IMAGE), "beams": 3}, "beams"),
        ({"prompt": PROMPT}, "image"),
    ]
    for body, field in cases:
        response = server.predict("caption", body)
        assert response.status_code == 400, response.text
        error = response.json()
        assert set(error) == {"request_id", "code", "type", "message"} and error["code"] == 400
        assert error["message"].startswith(f"{field}: "), error
    response = server.predict("caption", raw=b"not an image at all")
    assert response.status_code == 400 and response.json()["message"].startswith("image: ")
    assert server.worker_pids("caption") == pids
    assert server.predict("caption", {"image": png_b64(IMAGE)}).status_code == 200


def test_concurrent_requests_are_batched_each_as_alone_and_a_bad_one_fails_alone(server):
    images = [png_b64(sample_image(64, 48, seed=seed)) for seed in range(4)]
    good = [
        {"image": images[0]},
        {"image": images[1], "prompt": PROMPT},
        {"image": images[2], "prompt": "the"},
        {"image": images[3], "num_beams": 1},
        {"image": images[1]},
        {"image": images[0], "prompt": PROMPT},
    ]
    bad = {"image": images[2], "max_new_tokens": 0}
    alone = [caption_of(server, body) for body in good]
    bodies = [*good, bad]
    batch_sizes: list[int] = []
    # several rounds: a round whose requests TorchServe spread over several batches proves less
    for _ in range(5):
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda body: server.predict("caption", body), bodies))
        assert [r.status_code for r in responses] == [200] * len(good) + [400]
        assert responses[-1].json()["message"] == "max_new_tokens: must be >= 1, got 0"
        assert [r.json()["caption"] for r in responses[:-1]] == alone
        batch_sizes += [int(r.headers[BATCH_SIZE_HEADER]) for r in responses]
        if max(batch_sizes) > 1:
            break
    assert max(batch_sizes) > 1, "TorchServe never batched concurrent requests"


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_cli_prints_the_caption_and_saves_the_json(server, transport, tmp_path, rest, grpc_client):
    picture = tmp_path / "photo.png"
    IMAGE.save(picture)
    out = tmp_path / "out"
    result = run_cli(server, "caption", str(picture), "--prompt", PROMPT, transport=transport, out=out)
    expected = rest.caption(IMAGE, prompt=PROMPT)["caption"]
    printed, saved = result.stdout.splitlines()
    assert printed == expected
    assert json.loads((out / "caption.json").read_text())["caption"] == expected
    assert saved == str(out / "caption.json")
