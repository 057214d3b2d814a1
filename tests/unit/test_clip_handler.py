import pytest

from handlers.clip_scorer import ClipScorer
from handlers.common.vocabulary import DEFAULT_CONCEPTS
from harness import load_handler, png_b64, png_bytes, run_batch, sample_image


@pytest.fixture(scope="module")
def clip():
    return load_handler(ClipScorer, "clip")


def test_scores_given_texts(clip):
    [(status, body)] = run_batch(clip, [{"image": png_b64(sample_image()), "texts": ["a cat", "a dog"]}])
    assert status == 200, body
    assert body["request_id"] == "req-0"
    assert body["concepts"] == ["a cat", "a dog"]
    assert len(body["confidence_scores"]) == 2
    assert sum(body["confidence_scores"]) == pytest.approx(1.0, abs=1e-5)
    assert body["max_confidence_concept"] in body["concepts"]


def test_default_vocabulary_and_raw_image_body(clip):
    [(status, body)] = run_batch(clip, [png_bytes(sample_image())])
    assert status == 200, body
    assert len(DEFAULT_CONCEPTS) >= 50
    assert body["concepts"] == list(DEFAULT_CONCEPTS)


def test_roi_scores_each_box(clip):
    boxes = [[0, 0, 32, 24], [10, 10, 60, 40]]
    [(status, body)] = run_batch(clip, [{"image": png_b64(sample_image()), "texts": ["x", "y"], "roi": boxes}])
    assert status == 200, body
    assert [r["box"] for r in body["regions"]] == boxes
    for region in body["regions"]:
        assert sum(region["confidence_scores"]) == pytest.approx(1.0, abs=1e-5)


def test_batch_of_eight_is_one_image_forward_and_bad_request_fails_alone(clip):
    good = {"image": png_b64(sample_image()), "texts": ["sun", "moon"]}
    bad = {"image": png_b64(sample_image()), "texts": ["sun"], "roi": [[10, 10, 5, 20]]}
    before = clip.image_forwards
    results = run_batch(clip, [good] * 3 + [bad] + [good] * 4)
    assert clip.image_forwards == before + 1
    statuses = [status for status, _ in results]
    assert statuses == [200] * 3 + [400] + [200] * 4
    error = results[3][1]
    assert error["code"] == 400 and error["type"] == "InvalidInput"
    assert error["message"] == "roi[0]: x2 must be > x1"
    # the same image and texts give the same scores whether or not they shared a batch
    [(_, alone)] = run_batch(clip, [good])
    assert results[0][1]["confidence_scores"] == pytest.approx(alone["confidence_scores"], abs=1e-5)


@pytest.mark.parametrize("body, field", [
    ({"texts": ["a"]}, "image"),
    ({"image": "not base64!!"}, "image"),
    ({"image": "aGVsbG8="}, "image"),
    ({"image": png_b64(sample_image()), "texts": "cat"}, "texts"),
    ({"image": png_b64(sample_image()), "texts": []}, "texts"),
    ({"image": png_b64(sample_image()), "texts": [""]}, "texts[0]"),
    ({"image": png_b64(sample_image()), "roi": [[0, 0, 1000, 10]]}, "roi[0]"),
    ({"image": png_b64(sample_image()), "roi": [[0, 0, 10]]}, "roi[0]"),
    ({"image": png_b64(sample_image()), "colour": "red"}, "colour"),
])
def test_bad_input_names_the_field(clip, body, field):
    [(status, error)] = run_batch(clip, [body])
    assert 400 <= status < 500
    assert error["message"].startswith(f"{field}: "), error


def test_invalid_json_bytes(clip):
    [(status, error)] = run_batch(clip, [b'{"image": '])
    assert status == 400 and error["message"].startswith("body: invalid JSON")
