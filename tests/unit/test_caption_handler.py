"""`caption` in-process: response shape, the prompt's echo, one generate per group, bad input."""

import pytest
from harness import load_handler, png_b64, png_bytes, run_batch, sample_image

from handlers.captioner import Captioner
from handlers.common import SettingsError

PROMPT = "a photograph of"


@pytest.fixture(scope="module")
def caption():
    return load_handler(Captioner, "caption")


def image(seed: int = 0) -> str:
    return png_b64(sample_image(seed=seed))


def test_caption_response(caption):
    [(status, body)] = run_batch(caption, [{"image": image()}])
    assert status == 200, body
    assert set(body) == {"request_id", "caption", "model"}
    assert body["request_id"] == "req-0"
    assert body["model"] == "caption"
    assert isinstance(body["caption"], str) and body["caption"].strip()


def test_raw_image_body_equals_json(caption):
    [(status, raw)] = run_batch(caption, [png_bytes(sample_image())])
    assert status == 200, raw
    [(_, json_body)] = run_batch(caption, [{"image": image()}])
    assert raw["caption"] == json_body["caption"]


def test_conditional_caption_starts_with_the_prompt(caption):
    [(status, body)] = run_batch(caption, [{"image": image(), "prompt": PROMPT}])
    assert status == 200, body
    assert body["caption"].startswith(PROMPT), body
    [(_, unconditional)] = run_batch(caption, [{"image": image()}])
    assert body["caption"] != unconditional["caption"]


def test_max_new_tokens_bounds_the_caption(caption):
    short = {"image": image(), "max_new_tokens": 2, "num_beams": 1}
    [(status, body)] = run_batch(caption, [short])
    assert status == 200, body
    # tiny's vocabulary is characters and ## continuations: two new tokens are at most 2 words
    assert 1 <= len(body["caption"].split()) <= 2
    tokens = caption.processor.tokenizer(body["caption"], add_special_tokens=False).input_ids
    assert len(tokens) <= 2


def test_same_settings_share_one_generate(caption):
    bodies = [{"image": image(seed)} for seed in range(8)]
    before = caption.generate_calls
    results = run_batch(caption, bodies)
    assert caption.generate_calls == before + 1
    assert [status for status, _ in results] == [200] * 8


def test_groups_by_settings_and_prompt_and_each_equals_its_alone_result(caption):
    bodies = [
        {"image": image(0)},
        {"image": image(1), "prompt": PROMPT},
        {"image": image(2), "prompt": "a picture of the"},  # another prompt, another token length
        {"image": image(3), "prompt": PROMPT},
        {"image": image(4), "num_beams": 1},
        {"image": image(5), "max_new_tokens": 5},
        {"image": image(6)},
    ]
    before = caption.generate_calls
    batched = run_batch(caption, bodies)
    # (30, 3, None) x2, (30, 3, PROMPT) x2, (30, 3, other prompt), (30, 1, None), (5, 3, None)
    assert caption.generate_calls == before + 5
    for body, (status, result) in zip(bodies, batched):
        assert status == 200, result
        [(_, alone)] = run_batch(caption, [body])
        assert result["caption"] == alone["caption"], body


def test_bad_request_fails_alone(caption):
    good = {"image": image()}
    bad = {"image": image(), "num_beams": 0}
    results = run_batch(caption, [good, bad, good])
    assert [status for status, _ in results] == [200, 400, 200]
    assert results[1][1] == {
        "request_id": "req-1",
        "code": 400,
        "type": "InvalidInput",
        "message": "num_beams: must be >= 1, got 0",
    }
    assert results[0][1]["caption"] == results[2][1]["caption"]


@pytest.mark.parametrize(
    "body, field, status",
    [
        ({"prompt": PROMPT}, "image", 400),
        ({"image": "not base64!!"}, "image", 400),
        ({"image": "aGVsbG8="}, "image", 400),
        ({"image": png_b64(sample_image(5000, 10))}, "image", 413),
        ({"image": image(), "prompt": 3}, "prompt", 400),
        ({"image": image(), "prompt": ""}, "prompt", 400),
        ({"image": image(), "prompt": "a " * 200}, "prompt", 400),
        ({"image": image(), "max_new_tokens": 0}, "max_new_tokens", 400),
        ({"image": image(), "max_new_tokens": 61}, "max_new_tokens", 400),
        ({"image": image(), "max_new_tokens": 2.5}, "max_new_tokens", 400),
        ({"image": image(), "max_new_tokens": "5"}, "max_new_tokens", 400),
        ({"image": image(), "max_new_tokens": True}, "max_new_tokens", 400),
        ({"image": image(), "num_beams": 6}, "num_beams", 400),
        ({"image": image(), "num_beams": [1]}, "num_beams", 400),
        ({"image": image(), "promt": PROMPT}, "promt", 400),
    ],
)
def test_bad_input_names_the_field(caption, body, field, status):
    [(got, error)] = run_batch(caption, [body])
    assert got == status, error
    assert set(error) == {"request_id", "code", "type", "message"}
    assert error["message"].startswith(f"{field}: "), error


def test_limits_come_from_the_yaml(caption):
    limits = caption.settings.limits
    [(status, error)] = run_batch(caption, [{"image": image(), "max_new_tokens": limits.max_new_tokens + 1}])
    assert status == 400 and error["message"] == (
        f"max_new_tokens: must be <= {limits.max_new_tokens}, got {limits.max_new_tokens + 1}"
    )
    [(status, _)] = run_batch(
        caption, [{"image": image(), "max_new_tokens": limits.max_new_tokens, "num_beams": limits.max_num_beams}]
    )
    assert status == 200


def test_prompt_and_new_tokens_must_fit_the_decoder():
    # tiny's decoder has 512 positions; "x " * 500 is 500 tokens, plus the 30 new tokens
    roomy = load_handler(Captioner, "caption", limits={"max_prompt_length": 1000})
    [(status, error)] = run_batch(roomy, [{"image": image(), "prompt": "x " * 500}])
    assert status == 400 and error["message"].startswith("prompt: is 500 tokens"), error
    [(status, _)] = run_batch(roomy, [{"image": image(), "prompt": "x " * 400, "num_beams": 1}])
    assert status == 200


def test_a_default_over_its_limit_refuses_to_load():
    with pytest.raises(SettingsError, match="max_new_tokens"):
        load_handler(Captioner, "caption", max_new_tokens=1000)
