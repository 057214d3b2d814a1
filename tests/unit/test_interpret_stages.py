"""The interpreter's stage functions (workflows/interpret.py) on the real handlers, in-process.

The stages reach the models through a ModelCaller; here it runs the real tiny handlers of caption,
depth, pose, sd (with its ControlNets) and clip in this process (tests/harness.py), one request at a
time per model, and records every call, so a test sees which models ran and with what body.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import load_handler, model_config, png_b64, run_batch, sample_image
from render_model_config import deep_merge

from handlers.common import InputError, ServerError, load_settings
from handlers.model_settings import InterpretSettings
from workflows.interpret import (
    PRIORS,
    generation_body,
    parse_request,
    rank_order,
    ranking_score,
    run_interpret,
)
from workflows.stages import StageFailure

REPO = Path(__file__).resolve().parents[2]
SIDE = 64
SOURCE = png_b64(sample_image(SIDE, SIDE, seed=5))
FAST = {"steps": 2}  # tiny sd, two denoising steps: the stages' logic, not the images, is under test


def handler_classes() -> dict[str, type]:
    from handlers.captioner import Captioner
    from handlers.clip_scorer import ClipScorer
    from handlers.depth_estimator import DepthEstimator
    from handlers.pose_estimator import PoseEstimator
    from handlers.text_to_image import TextToImage

    return {"caption": Captioner, "clip": ClipScorer, "depth": DepthEstimator, "pose": PoseEstimator, "sd": TextToImage}


class InProcessModels:
    """A ModelCaller over the real handlers (loaded once per module), answering as the REST caller does:
    a 2xx answer is returned, a non-2xx raises StageFailure with the handler's status and message."""

    def __init__(self) -> None:
        self.handlers = {name: load_handler(cls, name) for name, cls in handler_classes().items()}
        self.locks = {name: threading.Lock() for name in self.handlers}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.calls.append((model, body))
        with self.locks[model]:  # a handler runs one batch at a time, as its worker does
            [(status, answer)] = run_batch(self.handlers[model], [body])
        if status >= 400:
            raise StageFailure(status, answer["message"])
        return answer

    def called(self, model: str) -> list[dict[str, Any]]:
        return [body for name, body in self.calls if name == model]


@pytest.fixture(scope="module")
def models() -> InProcessModels:
    return InProcessModels()


@pytest.fixture()
def calls(models: InProcessModels) -> InProcessModels:
    models.calls.clear()
    return models


def settings(**overrides: Any) -> InterpretSettings:
    return load_settings(InterpretSettings, deep_merge(model_config("interpret")["handler"], overrides))


SETTINGS = settings()


def interpret(
    models: InProcessModels, body: dict[str, Any], config: InterpretSettings = SETTINGS, events: list | None = None
) -> dict[str, Any]:
    request = parse_request({"image": SOURCE, **FAST, **body}, config)
    on_event = (lambda stage, result: events.append((stage, result))) if events is not None else None
    return run_interpret(request, models, config, on_event)


# --- counts, order, seeds ----------------------------------------------------------------------


def test_each_mode_gives_samples_times_priors_in_request_order_on_the_same_seeds(calls):
    result = interpret(calls, {"priors": ["pose", "canny", "depth"], "samples": 2, "seed": 11})
    samples = result["samples"]
    assert [(s["priors"], s["seed"]) for s in samples] == [
        (["pose"], 11),
        (["pose"], 12),
        (["canny"], 11),
        (["canny"], 12),
        (["depth"], 11),
        (["depth"], 12),
    ]
    assert list(result["priors"]) == ["pose", "canny", "depth"]
    # one sd request per prior, each with one ControlNet and `samples` prompts (the caption)
    sd_calls = calls.called("sd")
    assert len(sd_calls) == 3
    assert sorted(body["control"][0]["type"] for body in sd_calls) == ["canny", "depth", "pose"]
    assert all(len(body["control"]) == 1 and body["prompt"] == [result["caption"]["text"]] * 2 for body in sd_calls)
    assert len(calls.called("clip")) == 1  # one call scores every sample
    assert len(calls.called("caption")) == len(calls.called("depth")) == len(calls.called("pose")) == 1
    for sample in samples:
        assert sample["image"] and -1 <= sample["scores"]["caption"] <= 1 and -1 <= sample["scores"]["source"] <= 1
    assert set(result["timings"]) == {
        "caption",
        "depth",
        "pose",
        "canny",
        "generate_pose",
        "generate_canny",
        "generate_depth",
        "score",
    }


def test_combined_mode_gives_samples_from_one_multicontrolnet_request(calls):
    result = interpret(calls, {"priors": ["depth", "canny"], "mode": "combined", "samples": 3, "seed": 4})
    assert [(s["priors"], s["seed"]) for s in result["samples"]] == [(["depth", "canny"], seed) for seed in (4, 5, 6)]
    [sd_body] = calls.called("sd")
    assert [control["type"] for control in sd_body["control"]] == ["depth", "canny"]
    assert sd_body["prompt"] == [result["caption"]["text"]] * 3
    assert "generate" in result["timings"]


def test_control_images_sent_to_sd_are_the_priors_returned(calls):
    result = interpret(calls, {"priors": ["depth", "pose", "canny"], "samples": 1, "seed": 2, "scales": {"pose": 0.5}})
    for body in calls.called("sd"):
        [control] = body["control"]
        assert control["image"] == result["priors"][control["type"]]["control_image"]
        assert control.get("scale") == (0.5 if control["type"] == "pose" else None)
    assert set(result["priors"]["pose"]) >= {"control_image", "people"}


def test_a_seed_gives_the_same_samples_every_time(calls):
    body = {"priors": ["canny"], "samples": 2, "seed": 99}
    first, second = interpret(calls, body), interpret(calls, body)
    assert [s["image"] for s in first["samples"]] == [s["image"] for s in second["samples"]]
    assert [s["scores"] for s in first["samples"]] == [s["scores"] for s in second["samples"]]
    other = interpret(calls, {**body, "seed": 100})
    assert other["samples"][0]["image"] != first["samples"][0]["image"]


def test_without_a_seed_every_prior_still_shares_the_noise(calls):
    result = interpret(calls, {"priors": ["canny", "depth"], "samples": 2})
    seeds = [s["seed"] for s in result["samples"]]
    assert seeds[:2] == seeds[2:] and seeds[1] == (seeds[0] + 1) % 2**32


# --- scores and ranking -----------------------------------------------------------------------


def test_scores_are_clips_cosines_of_each_sample_with_the_caption_and_the_source(calls):
    result = interpret(calls, {"priors": ["canny", "depth"], "samples": 2, "seed": 3})
    [clip_body] = calls.called("clip")
    assert clip_body["texts"] == [result["caption"]["text"]] and clip_body["reference_image"] == SOURCE
    assert clip_body["images"] == [s["image"] for s in result["samples"]]
    # the same cosines, asked of clip directly for one sample
    direct = calls(
        "clip",
        {"images": [result["samples"][3]["image"]], "texts": [result["caption"]["text"]], "reference_image": SOURCE},
        60,
    )["similarities"][0]
    expected = {"caption": direct["texts"][0], "source": direct["reference"]}
    assert result["samples"][3]["scores"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("rule", ["mean", "caption", "source"])
def test_rank_and_best_follow_the_ranking_rule(calls, rule):
    result = interpret(calls, {"priors": ["depth", "canny"], "samples": 3, "seed": 21}, settings(rank_by=rule))
    samples = result["samples"]
    assert sorted(s["rank"] for s in samples) == list(range(len(samples)))
    assert samples[result["best"]]["rank"] == 0
    by_rank = sorted(samples, key=lambda s: s["rank"])
    values = [ranking_score(s["scores"], rule) for s in by_rank]
    assert values == sorted(values, reverse=True)
    assert ranking_score(samples[result["best"]]["scores"], rule) == max(values)


def test_ranking_score_and_ties():
    scores = [{"caption": 0.2, "source": 0.6}, {"caption": 0.5, "source": 0.1}, {"caption": 0.6, "source": 0.2}]
    samples = [{"scores": s} for s in scores]
    assert rank_order(samples, "mean") == [0, 2, 1]
    assert rank_order(samples, "caption") == [2, 1, 0]
    assert rank_order(samples, "source") == [0, 2, 1]
    tied = [{"scores": {"caption": 0.3, "source": 0.3}}] * 3
    assert rank_order(tied, "mean") == [0, 1, 2]  # a tie keeps request order


# --- editing priors: a supplied caption or prior image -------------------------------------------


def test_a_supplied_caption_is_what_sd_receives_and_blip_is_not_called(calls):
    caption = "a lighthouse on a cliff at dusk"
    result = interpret(calls, {"priors": ["canny"], "samples": 2, "seed": 8, "caption": caption})
    assert result["caption"] == {"text": caption, "edited": True}
    assert calls.called("caption") == []
    [sd_body] = calls.called("sd")
    assert sd_body["prompt"] == [caption, caption]
    # the samples are exactly sd's answer to that prompt with that control and seed, asked directly
    direct = calls(
        "sd",
        {
            "prompt": [caption] * 2,
            "seed": 8,
            "control": [{"type": "canny", "image": result["priors"]["canny"]["control_image"]}],
            **FAST,
        },
        600,
    )
    assert [s["image"] for s in result["samples"]] == direct["images"]
    generated = interpret(calls, {"priors": ["canny"], "samples": 2, "seed": 8})
    assert generated["caption"]["edited"] is False and generated["caption"]["text"] != caption
    assert generated["samples"][0]["image"] != result["samples"][0]["image"]


def test_a_supplied_prior_image_is_not_computed_again(calls):
    edited_depth = png_b64(sample_image(SIDE, SIDE, seed=77).convert("L").convert("RGB"))
    result = interpret(
        calls, {"priors": ["depth", "pose"], "samples": 1, "seed": 1, "prior_images": {"depth": edited_depth}}
    )
    assert calls.called("depth") == [] and len(calls.called("pose")) == 1
    assert result["priors"]["depth"] == {"control_image": edited_depth, "supplied": True}
    depth_call = next(body for body in calls.called("sd") if body["control"][0]["type"] == "depth")
    assert depth_call["control"][0]["image"] == edited_depth
    assert "depth" not in result["timings"]


def test_everything_supplied_calls_only_sd_and_clip(calls):
    canny = png_b64(sample_image(SIDE, SIDE, seed=3))
    interpret(calls, {"priors": ["canny"], "samples": 1, "caption": "x", "prior_images": {"canny": canny}})
    assert [model for model, _ in calls.calls] == ["sd", "clip"]


# --- streaming ----------------------------------------------------------------------------------


def test_events_come_for_the_caption_each_prior_then_the_samples(calls):
    events: list = []
    result = interpret(calls, {"priors": ["depth", "pose", "canny"], "samples": 1, "seed": 6}, events=events)
    stages = [stage for stage, _ in events]
    assert set(stages[:4]) == {"caption", "depth", "pose", "canny"} and stages[4:] == ["samples"]
    results = dict(events)
    assert results["caption"] == result["caption"]
    assert results["depth"] == result["priors"]["depth"]
    assert results["samples"] == {"samples": result["samples"], "best": result["best"]}


# --- bad input: refused before any model runs ------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({"image": None}, "image"),
        ({"image": 5}, "image"),
        ({"image": "bm90IGFuIGltYWdl"}, "image"),
        ({"caption": ""}, "caption"),
        ({"caption": "x" * 301}, "caption"),
        ({"priors": []}, "priors"),
        ({"priors": ["normals"]}, "priors[0]"),
        ({"priors": ["depth", "depth"]}, "priors[1]"),
        ({"mode": "all"}, "mode"),
        ({"samples": 0}, "samples"),
        ({"samples": 5}, "samples"),
        ({"samples": 1.5}, "samples"),
        ({"scales": [1]}, "scales"),
        ({"scales": {"canny": 1.0}}, "scales.canny"),
        ({"scales": {"depth": 3}}, "scales.depth"),
        ({"prior_images": {"pose": "xx"}}, "prior_images.pose"),
        ({"prior_images": {"pose": "bm90IGFuIGltYWdl"}}, "prior_images.pose"),
        ({"prior_images": {"canny": SOURCE}}, "prior_images.canny"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"steps": 51}, "steps"),
        ({"width": 60, "height": 64}, "width"),
        ({"width": 32, "height": 64}, "width"),
        ({"width": 768, "height": 768}, "width"),
        ({"height": 64}, "height"),
        ({"guidance_scale": 31}, "guidance_scale"),
        ({"scheduler": "lms"}, "scheduler"),
        ({"negative_prompt": 3}, "negative_prompt"),
        ({"stream": "yes"}, "stream"),
        ({"prompt": "a cat"}, "prompt"),
    ],
)
def test_bad_input_is_refused_naming_the_field_before_any_model_runs(calls, body, field):
    with pytest.raises(InputError) as refused:
        parse_request({"image": SOURCE, **body}, SETTINGS)
    assert refused.value.message.startswith(f"{field}: "), refused.value.message
    assert 400 <= refused.value.code < 500
    assert calls.calls == []


def test_an_image_over_the_limit_is_413():
    big = png_b64(sample_image(2056, 8))
    with pytest.raises(InputError) as refused:
        parse_request({"image": big}, SETTINGS)
    assert refused.value.code == 413 and refused.value.message.startswith("image: is 2056x8")


# --- failures: named by stage, never hanging ----------------------------------------------------------


def test_a_model_that_refuses_gives_its_4xx_naming_the_stage(calls):
    # limits looser than sd's (a misconfigured yaml): sd itself refuses the steps, after the priors
    loose = settings(limits={"max_steps": 500})
    with pytest.raises(InputError) as refused:
        interpret(calls, {"priors": ["canny"], "samples": 1, "steps": 60}, loose)
    assert refused.value.code == 400 and refused.value.kind == "StageRejected"
    assert refused.value.message.startswith("generate_canny: steps: "), refused.value.message


def test_a_prior_that_fails_answers_at_once_naming_its_stage_while_the_others_still_run(models):
    """depth fails (its model unreachable) while pose is still running: the request answers 502 naming
    depth without waiting for pose, whose call is held until the test releases it."""
    release = threading.Event()
    pose_started = threading.Event()

    def caller(model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        if model == "depth":
            pose_started.wait(30)
            raise StageFailure(502, "depth unreachable: connection refused")
        if model == "pose":
            pose_started.set()
            release.wait(60)
        return models(model, body, timeout)

    try:
        with pytest.raises(ServerError) as failed:
            interpret(caller, {"priors": ["depth", "pose"], "samples": 1, "caption": "x"})  # type: ignore[arg-type]
        assert not release.is_set()  # answered while pose was still held
        assert failed.value.code == 502 and str(failed.value).startswith("depth: depth unreachable")
    finally:
        release.set()


def test_a_timeout_is_504_naming_the_stage(models):
    def caller(model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        if model == "clip":
            raise StageFailure(504, f"clip did not answer within {timeout}s")
        return models(model, body, timeout)

    with pytest.raises(ServerError) as failed:
        interpret(caller, {"priors": ["canny"], "samples": 1, "caption": "x"})  # type: ignore[arg-type]
    assert failed.value.code == 504
    assert str(failed.value) == f"score: clip did not answer within {SETTINGS.stage_timeouts['clip']}s"


# --- settings ------------------------------------------------------------------------------------


def handler_section(name: str) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "models" / name / "model-config.yaml").read_text())
    return config["handler"]


def test_the_interpreters_up_front_limits_never_exceed_the_models_it_calls():
    from handlers.model_settings import CaptionSettings, ClipSettings, DepthSettings, PoseSettings, SdSettings
    from handlers.text_to_image import SCHEDULERS

    limits = SETTINGS.limits
    sd = load_settings(SdSettings, handler_section("sd")).limits
    clip = load_settings(ClipSettings, handler_section("clip")).limits
    for analyzer in (
        clip,
        sd,
        load_settings(CaptionSettings, handler_section("caption")).limits,
        load_settings(DepthSettings, handler_section("depth")).limits,
        load_settings(PoseSettings, handler_section("pose")).limits,
    ):
        assert limits.max_image_side <= analyzer.max_image_side
        assert limits.max_image_pixels <= analyzer.max_image_pixels
    assert limits.max_caption_length <= min(clip.max_text_length, sd.max_prompt_length)
    assert limits.max_samples <= sd.max_prompts
    assert len(PRIORS) * limits.max_samples <= clip.max_images  # one clip call scores every sample
    assert (limits.min_side, limits.max_side, limits.max_pixels) == (sd.min_side, sd.max_side, sd.max_pixels)
    assert limits.max_steps <= sd.max_steps and limits.max_guidance_scale <= sd.max_guidance_scale
    assert limits.max_control_scale <= sd.max_control_scale
    assert sorted(SETTINGS.sd_schedulers) == sorted(SCHEDULERS)


def test_the_yamls_defaults_are_within_its_limits():
    with pytest.raises(Exception, match="samples"):
        settings(samples=SETTINGS.limits.max_samples + 1)


def test_generation_body_carries_the_request_fields():
    request = parse_request(
        {
            "image": SOURCE,
            "priors": ["canny", "depth"],
            "samples": 2,
            "seed": 5,
            "scales": {"depth": 1.5},
            "steps": 3,
            "width": 64,
            "height": 64,
            "scheduler": "euler",
            "negative_prompt": "",
        },
        SETTINGS,
    )
    body = generation_body(request, "a cat", ["depth"], {"depth": {"control_image": "D"}})
    assert body == {
        "prompt": ["a cat", "a cat"],
        "seed": 5,
        "control": [{"type": "depth", "image": "D", "scale": 1.5}],
        "steps": 3,
        "width": 64,
        "height": 64,
        "scheduler": "euler",
        "negative_prompt": "",
    }


def test_an_empty_generated_caption_is_a_502_naming_the_caption_stage(models):
    # random weights can stop at once: the real caption answer with its text blanked
    def caller(model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        answer = models(model, body, timeout)
        return {**answer, "caption": " "} if model == "caption" else answer

    with pytest.raises(ServerError) as failed:
        interpret(caller, {"priors": ["canny"], "samples": 1})  # type: ignore[arg-type]
    assert failed.value.code == 502 and str(failed.value).startswith("caption: ")


# --- the handler (handlers/common/light.py, shared with pipeline) --------------------------------


def test_a_request_that_fails_unexpectedly_is_its_own_500_and_the_batch_is_not_run_again(models):
    """The light models' handler runs each request of a batch in its own thread: a request whose run
    raises something unexpected (here its caption call) answers 500 alone; the others answer 200,
    each run once (a retry of the batch one by one would call sd again for them)."""
    from harness import make_context

    from handlers.interpreter import Interpreter

    handler = Interpreter()  # a light model: no weights to build
    handler.initialize(make_context("interpret", model_config("interpret")))

    def caller(model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        if model == "caption":
            raise ConnectionResetError("caption's connection reset")
        return models(model, body, timeout)

    handler.call = caller
    models.calls.clear()
    supplied = {"image": SOURCE, **FAST, "priors": ["canny"], "samples": 1, "caption": "x"}
    results = run_batch(handler, [supplied, {**supplied, "caption": None}, supplied])
    assert [status for status, _ in results] == [200, 500, 200], results
    assert results[1][1]["type"] == "InternalServerError"
    assert len(models.called("sd")) == 2  # once for each request that had its caption
