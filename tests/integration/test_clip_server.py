"""`clip` on the real TorchServe: JSON and raw bodies, batching, per-request errors."""

from concurrent.futures import ThreadPoolExecutor

from harness import png_b64, png_bytes, sample_image

from handlers.common import BATCH_SIZE_HEADER
from handlers.common.vocabulary import DEFAULT_CONCEPTS


def test_json_request(server):
    response = server.predict("clip", {"image": png_b64(sample_image()), "texts": ["a cat", "a dog", "a car"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["concepts"] == ["a cat", "a dog", "a car"]
    assert abs(sum(body["confidence_scores"]) - 1) < 1e-4
    assert body["max_confidence_concept"] in body["concepts"]


def test_raw_image_body_uses_default_vocabulary(server):
    response = server.predict("clip", raw=png_bytes(sample_image()))
    assert response.status_code == 200, response.text
    assert response.json()["concepts"] == list(DEFAULT_CONCEPTS)


def test_roi_returns_scores_per_box(server):
    boxes = [[0, 0, 20, 20], [30, 10, 64, 48]]
    body = server.predict("clip", {"image": png_b64(sample_image()), "texts": ["a", "b"], "roi": boxes}).json()
    assert [region["box"] for region in body["regions"]] == boxes


def test_concurrent_requests_are_batched_and_a_bad_one_fails_alone(server):
    good = {"image": png_b64(sample_image()), "texts": ["sun", "moon"]}
    bad = {"image": png_b64(sample_image()), "texts": ["sun"], "roi": [[0, 0, 5]]}
    bodies = [good] * 7 + [bad]
    batch_sizes = []
    # several rounds: a round whose requests TorchServe spread over two batches proves nothing
    for _ in range(5):
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda b: server.predict("clip", b), bodies))
        assert [r.status_code for r in responses] == [200] * 7 + [400]
        assert responses[-1].json() == {
            **responses[-1].json(),
            "code": 400,
            "type": "InvalidInput",
            "message": "roi[0]: must be a list of 4 numbers [x1, y1, x2, y2]",
        }
        batch_sizes += [int(r.headers[BATCH_SIZE_HEADER]) for r in responses]
        if max(batch_sizes) > 1:
            break
    assert max(batch_sizes) > 1, "TorchServe never batched concurrent requests"


def test_bad_requests_get_json_4xx_and_leave_the_worker_alive(server):
    pids = server.worker_pids("clip")
    cases = [
        (b"not an image at all", "image"),
        (b'{"image": ', "body"),
    ]
    for raw, field in cases:
        response = server.predict(
            "clip", raw=raw, headers={"Content-Type": "application/json"} if raw.startswith(b"{") else {}
        )
        assert response.status_code == 400, response.text
        assert response.json()["message"].startswith(f"{field}: ")
    response = server.predict("clip", {"image": png_b64(sample_image()), "texts": ["x"], "typo": 1})
    assert response.status_code == 400 and response.json()["message"].startswith("typo: ")
    assert server.worker_pids("clip") == pids
    assert server.predict("clip", {"image": png_b64(sample_image())}).status_code == 200


def test_requires_tokens(server):
    # TorchServe 0.12 answers a missing or wrong token with 400 InvalidKeyException
    body = {"image": png_b64(sample_image())}
    for token in ("wrong", "", server.token("management")):
        response = server.predict("clip", body, token=token)
        assert response.status_code == 400 and response.json()["type"] == "InvalidKeyException"
    response = server.get("management", "/models", token=server.token("inference"))
    assert response.status_code == 400 and response.json()["type"] == "InvalidKeyException"
    assert server.get("management", "/models").status_code == 200


def test_images_form_scores_each_image_by_raw_cosine_against_texts_and_reference(server):
    images = [png_b64(sample_image(seed=i)) for i in range(3)]
    body = {"images": images, "texts": ["a cat", "a dog"], "reference_image": images[1]}
    response = server.predict("clip", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["texts"] == ["a cat", "a dog"]
    assert [len(s["texts"]) for s in answer["similarities"]] == [2, 2, 2]
    references = [s["reference"] for s in answer["similarities"]]
    assert abs(references[1] - 1) < 1e-4 and max(references[0], references[2]) < 1 - 1e-4
    # the single-image form of the same image gives a softmax over the same texts, unchanged
    single = server.predict("clip", {"image": images[0], "texts": ["a cat", "a dog"]}).json()
    assert abs(sum(single["confidence_scores"]) - 1) < 1e-4
    refused = server.predict("clip", {"images": images, "image": images[0]})
    assert refused.status_code == 400 and refused.json()["message"].startswith("image: ")
