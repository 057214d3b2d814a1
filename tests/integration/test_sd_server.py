"""`sd` on the real TorchServe: batching, seeds, limits, progress over HTTP chunked."""

from concurrent.futures import ThreadPoolExecutor

from client.events import json_values
from handlers.common import BATCH_SIZE_HEADER, decode_png


def generate(server, **body):
    return server.predict("sd", {"prompt": "a lighthouse at dusk", "steps": 4, **body})


def test_single_prompt_and_prompt_list(server):
    one = generate(server, seed=11)
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["seeds"] == [11] and body["model"] and len(body["images"]) == 1
    assert decode_png(body["images"][0]).size == (64, 64)
    many = generate(server, prompt=["a cat", "a dog", "a fox"], seed=5, width=72, height=64).json()
    assert many["seeds"] == [5, 6, 7]
    assert [decode_png(image).size for image in many["images"]] == [(72, 64)] * 3


def test_concurrent_requests_batch_and_seeds_reproduce_bit_for_bit(server):
    alone = generate(server, seed=1234).json()["images"][0]
    bodies = [{"seed": 1234}] + [{"seed": 900 + i} for i in range(5)]
    for _ in range(4):
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda b: generate(server, **b), bodies))
        assert all(r.status_code == 200 for r in responses)
        assert responses[0].json()["images"][0] == alone
        if int(responses[0].headers[BATCH_SIZE_HEADER]) > 1:
            break
    assert int(responses[0].headers[BATCH_SIZE_HEADER]) > 1, "never batched with the others"


def test_every_limit_is_a_4xx_naming_the_field(server):
    cases = {
        "steps": {"steps": 500},
        "width": {"width": 100},
        "height": {"height": 4096},
        "prompt": {"prompt": ["p"] * 50},
        "scheduler": {"scheduler": "nope"},
        "guidance_scale": {"guidance_scale": "high"},
        "seed": {"seed": -1},
    }
    for field, extra in cases.items():
        response = generate(server, **extra)
        assert 400 <= response.status_code < 500, (field, response.text)
        assert response.json()["message"].startswith(f"{field}"), response.text
    assert server.predict("sd", {"prompt": ""}).status_code == 400


def test_stream_sends_steps_then_the_image_over_http_chunked(server):
    response = server.post(
        "inference", "/predictions/sd", json={"prompt": "a boat", "steps": 3, "seed": 2, "stream": True}, stream=True
    )
    assert response.status_code == 200
    assert response.headers.get("Transfer-Encoding") == "chunked"
    events = json_values(response.iter_content(chunk_size=None))
    steps = [event["step"] for event in events[:-1]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3
    assert events[-1]["seeds"] == [2] and decode_png(events[-1]["images"][0]).size == (64, 64)
