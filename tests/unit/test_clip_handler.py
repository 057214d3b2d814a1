import pytest
from harness import load_handler, png_b64, png_bytes, run_batch, sample_image

from handlers.clip_scorer import ClipScorer
from handlers.common.vocabulary import DEFAULT_CONCEPTS


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


@pytest.mark.parametrize(
    "body, field",
    [
        ({"texts": ["a"]}, "image"),
        ({"image": "not base64!!"}, "image"),
        ({"image": "aGVsbG8="}, "image"),
        ({"image": png_b64(sample_image()), "texts": "cat"}, "texts"),
        ({"image": png_b64(sample_image()), "texts": []}, "texts"),
        ({"image": png_b64(sample_image()), "texts": [""]}, "texts[0]"),
        ({"image": png_b64(sample_image()), "roi": [[0, 0, 1000, 10]]}, "roi[0]"),
        ({"image": png_b64(sample_image()), "roi": [[0, 0, 10]]}, "roi[0]"),
        ({"image": png_b64(sample_image()), "colour": "red"}, "colour"),
    ],
)
def test_bad_input_names_the_field(clip, body, field):
    [(status, error)] = run_batch(clip, [body])
    assert 400 <= status < 500
    assert error["message"].startswith(f"{field}: "), error


def test_invalid_json_bytes(clip):
    [(status, error)] = run_batch(clip, [b'{"image": '])
    assert status == 400 and error["message"].startswith("body: invalid JSON")


# --- the `images` form: raw cosine similarities (what the interpreter ranks by) ------------------


def test_images_form_gives_raw_cosines_to_each_text_and_the_reference(clip):
    import torch

    from handlers.common.compat import pooled_features

    images = [sample_image(seed=i) for i in range(3)]
    reference = sample_image(seed=0)
    [(status, body)] = run_batch(
        clip,
        [{"images": [png_b64(i) for i in images], "texts": ["a cat", "a dog"], "reference_image": png_b64(reference)}],
    )
    assert status == 200, body
    assert body["texts"] == ["a cat", "a dog"]
    assert "confidence_scores" not in body
    [first, second, third] = body["similarities"]
    # the reference is images[0] itself: its cosine with itself is 1
    assert first["reference"] == pytest.approx(1.0, abs=1e-5)
    assert all(-1 <= s["reference"] < 1 - 1e-4 for s in (second, third))
    # raw cosines, not a softmax: they equal CLIP's normalized embeddings' dot products, computed here
    pixels = clip.processor(images=[*images, reference], return_tensors="pt")["pixel_values"]
    tokens = clip.processor.tokenizer(["a cat", "a dog"], padding=True, return_tensors="pt")
    normalize = torch.nn.functional.normalize
    with torch.inference_mode():
        embeds = normalize(pooled_features(clip.model.get_image_features(pixel_values=pixels)).float(), dim=-1)
        texts = normalize(pooled_features(clip.model.get_text_features(**tokens)).float(), dim=-1)
    expected = (embeds[:3] @ texts.T).tolist()
    for similarity, row in zip(body["similarities"], expected):
        assert similarity["texts"] == pytest.approx(row, abs=1e-4)
    assert third["reference"] == pytest.approx(float(embeds[2] @ embeds[3]), abs=1e-4)


def test_images_form_without_reference_and_the_single_form_in_one_batch_are_one_forward(clip):
    single = {"image": png_b64(sample_image()), "texts": ["sun", "moon"]}
    several = {"images": [png_b64(sample_image(seed=i)) for i in range(4)], "texts": ["sun", "moon"]}
    before = clip.image_forwards
    [(s1, one), (s2, many)] = run_batch(clip, [single, several])
    assert clip.image_forwards == before + 1
    assert (s1, s2) == (200, 200)
    assert sum(one["confidence_scores"]) == pytest.approx(1.0, abs=1e-5)  # the single form keeps its softmax
    assert len(many["similarities"]) == 4 and all("reference" not in s for s in many["similarities"])
    # batched or alone, the same cosines
    [(_, alone)] = run_batch(clip, [several])
    for batched, single_run in zip(many["similarities"], alone["similarities"]):
        assert batched["texts"] == pytest.approx(single_run["texts"], abs=1e-5)


def test_images_form_over_the_limit_is_refused(clip):
    limit = clip.settings.limits.max_images
    [(status, error)] = run_batch(clip, [{"images": [png_b64(sample_image(8, 8))] * (limit + 1)}])
    assert status == 400 and error["message"] == f"images: has {limit + 1} images; the limit is {limit}"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"images": [png_b64(sample_image())], "image": png_b64(sample_image())}, "image"),
        ({"images": [png_b64(sample_image())], "roi": [[0, 0, 4, 4]]}, "roi"),
        ({"image": png_b64(sample_image()), "reference_image": png_b64(sample_image())}, "reference_image"),
        ({"images": []}, "images"),
        ({"images": png_b64(sample_image())}, "images"),
        ({"images": [png_b64(sample_image()), "not base64!!"]}, "images[1]"),
        ({"images": [png_b64(sample_image())], "reference_image": 3}, "reference_image"),
    ],
)
def test_images_form_bad_input_names_the_field(clip, body, field):
    [(status, error)] = run_batch(clip, [body])
    assert 400 <= status < 500
    assert error["message"].startswith(f"{field}: "), error
