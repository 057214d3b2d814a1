import base64
import json
import types

import pytest
from harness import assert_names_the_field, load_handler, run_batch
from ts.metrics.metric_type_enum import MetricTypes
from ts.protocol.otf_message_handler import create_predict_response

from handlers.common import Batch, decode_png
from handlers.text_to_image import SCHEDULERS, TextToImage

STEPS = 3  # tiny weights: a few ms per step at 64x64


@pytest.fixture(scope="module")
def sd():
    return load_handler(TextToImage, "sd")


def req(prompt="a photo of a cat", **fields):
    return {"prompt": prompt, "steps": STEPS, **fields}


def image_sizes(body):
    return [decode_png(image).size for image in body["images"]]


def test_single_prompt(sd):
    [(status, body)] = run_batch(sd, [req(seed=7)])
    assert status == 200, body
    assert body["request_id"] == "req-0"
    assert body["model"] == "sd"
    assert body["seeds"] == [7]
    [image] = [decode_png(b) for b in body["images"]]
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == (64, 64)  # the tiny model's native size: unet sample_size 8 x VAE factor 8


def test_prompt_list_gives_one_image_per_prompt_with_consecutive_seeds(sd):
    prompts = ["a cat", "a dog", "a car"]
    [(status, body)] = run_batch(sd, [req(prompts, seed=100)])
    assert status == 200, body
    assert body["seeds"] == [100, 101, 102]
    assert image_sizes(body) == [(64, 64)] * 3
    assert len(set(body["images"])) == 3
    # seeds[j] alone reproduces image j
    [(_, alone)] = run_batch(sd, [req("a dog", seed=101)])
    assert alone["images"][0] == body["images"][1]


def test_random_seeds_are_returned_and_reproduce(sd):
    [(status, body)] = run_batch(sd, [req(["a", "b"])])
    assert status == 200, body
    first, second = body["seeds"]
    assert 0 <= first < 2**32 and second == (first + 1) % 2**32
    [(_, again)] = run_batch(sd, [req(["a", "b"], seed=first)])
    assert again["images"] == body["images"]


def test_seeds_wrap_at_two_to_the_32(sd):
    [(status, body)] = run_batch(sd, [req(["a", "b"], seed=2**32 - 1)])
    assert status == 200, body
    assert body["seeds"] == [2**32 - 1, 0]


def test_batch_of_same_shape_is_one_pipeline_call(sd):
    before = sd.pipeline_calls
    results = run_batch(sd, [req(f"prompt {i}", seed=i) for i in range(4)] + [req(["x", "y"], seed=9)])
    assert [status for status, _ in results] == [200] * 5
    assert sd.pipeline_calls == before + 1
    assert [len(body["images"]) for _, body in results] == [1, 1, 1, 1, 2]
    assert [body["request_id"] for _, body in results] == [f"req-{i}" for i in range(5)]


@pytest.mark.parametrize(
    "fields",
    [
        {},  # classifier-free guidance (the default scheduler, dpm++)
        {"scheduler": "euler_a"},  # fresh noise from the generators at every step
        {"guidance_scale": 1.0, "scheduler": "ddim"},  # no guidance: one UNet row per image
        {"negative_prompt": "blurry", "width": 96},
        {"steps": 25, "width": 128, "height": 128},  # batched UNet forwards would drift here on CPU
    ],
)
def test_same_seed_is_bit_identical_alone_or_in_a_batch(sd, fields):
    target = req("a red bicycle", seed=1234, **fields)
    [(status, alone)] = run_batch(sd, [target])
    assert status == 200, alone
    before = sd.pipeline_calls
    batch = run_batch(sd, [req("a dog", seed=1, **fields), target, req(["x", "y"], seed=5, **fields)])
    assert sd.pipeline_calls == before + 1
    assert [status for status, _ in batch] == [200] * 3
    assert base64.b64decode(batch[1][1]["images"][0]) == base64.b64decode(alone["images"][0])


def test_mixed_shapes_in_one_batch_are_grouped_and_all_answered(sd):
    bodies = [
        req(seed=1),
        req(seed=2, width=96),
        req(seed=3, height=128),
        req(seed=4, width=96),
        req(seed=5, steps=2),
        req(["a", "b"], seed=6, guidance_scale=3.0),
    ]
    before = sd.pipeline_calls
    results = run_batch(sd, bodies)
    assert [status for status, _ in results] == [200] * 6
    assert sd.pipeline_calls == before + 5  # 64x64, 96x64 (twice), 64x128, 2 steps, guidance 3
    sizes = [image_sizes(body) for _, body in results]
    assert sizes == [[(64, 64)], [(96, 64)], [(64, 128)], [(96, 64)], [(64, 64)], [(64, 64)] * 2]


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_each_scheduler_runs(sd, scheduler):
    [(status, body)] = run_batch(sd, [req(["a", "b"], seed=3, scheduler=scheduler)])
    assert status == 200, body
    assert image_sizes(body) == [(64, 64)] * 2


BAD = [
    ({"steps": 2}, "prompt", "prompt: is required"),
    ({"prompt": ""}, "prompt", "prompt: must not be empty"),
    ({"prompt": "   "}, "prompt", None),
    ({"prompt": 5}, "prompt", "prompt: must be a string or a list of strings, got a number"),
    ({"prompt": []}, "prompt", None),
    ({"prompt": ["a", ""]}, "prompt[1]", None),
    ({"prompt": ["a", 3]}, "prompt[1]", None),
    ({"prompt": ["a"] * 5}, "prompt", "prompt: has 5 items; the limit is 4"),
    ({"prompt": "x" * 1001}, "prompt", "prompt: is 1001 characters long; the limit is 1000"),
    ({"prompt": "a", "negative_prompt": ["a", "b"]}, "negative_prompt", None),
    ({"prompt": "a", "negative_prompt": 3}, "negative_prompt", None),
    ({"prompt": ["a", "b"], "negative_prompt": ["ok", 3]}, "negative_prompt[1]", None),
    ({"prompt": "a", "width": 100}, "width", "width: must be a multiple of 8, got 100"),
    ({"prompt": "a", "width": 1024}, "width", "width: must be <= 768, got 1024"),
    ({"prompt": "a", "height": 32}, "height", "height: must be >= 64, got 32"),
    ({"prompt": "a", "width": 768, "height": 512}, "width", "width: 768x512 is 393216 pixels; the limit is 262144"),
    ({"prompt": "a", "height": 768, "width": 512}, "width", None),
    ({"prompt": "a", "width": "64"}, "width", "width: must be a number, got a string"),
    ({"prompt": "a", "height": 64.5}, "height", None),
    ({"prompt": "a", "steps": 80}, "steps", "steps: must be <= 50, got 80"),
    ({"prompt": "a", "steps": 0}, "steps", None),
    ({"prompt": "a", "steps": 2.5}, "steps", None),
    ({"prompt": "a", "steps": True}, "steps", None),
    ({"prompt": "a", "guidance_scale": float("nan")}, "guidance_scale", "guidance_scale: must be a finite number"),
    ({"prompt": "a", "guidance_scale": float("inf")}, "guidance_scale", None),
    ({"prompt": "a", "guidance_scale": 31}, "guidance_scale", None),
    ({"prompt": "a", "guidance_scale": -1}, "guidance_scale", None),
    ({"prompt": "a", "seed": -1}, "seed", None),
    ({"prompt": "a", "seed": 2**32}, "seed", None),
    ({"prompt": "a", "seed": "42"}, "seed", None),
    ({"prompt": "a", "scheduler": "lms"}, "scheduler", None),
    ({"prompt": "a", "scheduler": 1}, "scheduler", None),
    ({"prompt": "a", "stream": "yes"}, "stream", None),
    ({"prompt": "a", "promt": "b"}, "promt", "promt: unknown field"),
]


@pytest.mark.parametrize("body, field, message", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_field(sd, body, field, message):
    [(status, error)] = run_batch(sd, [body])
    assert_names_the_field(status, error, field, message)


def test_bad_requests_fail_alone_in_a_batch(sd):
    good = req(seed=11)
    bodies = [
        good,
        {"prompt": "a", "steps": 80},
        req(seed=12),
        b'{"prompt": ',
        req(["c", "d"], seed=13),
        {"prompt": "a", "width": 100},
    ]
    before = sd.pipeline_calls
    results = run_batch(sd, bodies)
    assert [status for status, _ in results] == [200, 400, 200, 400, 200, 400]
    assert sd.pipeline_calls == before + 1
    assert results[1][1]["type"] == "LimitExceeded"
    assert results[1][1]["message"] == "steps: must be <= 50, got 80"
    assert results[3][1]["message"].startswith("body: invalid JSON")
    assert results[5][1]["message"] == "width: must be a multiple of 8, got 100"
    [(_, alone)] = run_batch(sd, [good])
    assert results[0][1]["images"] == alone["images"]


def test_a_failing_group_does_not_fail_the_others(sd, monkeypatch):
    real = sd.generate

    def flaky(group, batch):
        if any("boom" in p for request in group for p in request["prompts"]):
            raise RuntimeError("simulated failure")
        return real(group, batch)

    monkeypatch.setattr(sd, "generate", flaky)
    results = run_batch(sd, [req(seed=1), req("boom", seed=2), req(seed=3, width=96)])
    assert [status for status, _ in results] == [200, 500, 200]
    assert results[1][1]["type"] == "InternalServerError"
    assert "simulated failure" in results[1][1]["message"]


def test_stream_sends_a_progress_event_per_step_and_runs_alone(sd, monkeypatch):
    events = []
    monkeypatch.setattr(Batch, "send", lambda batch, position, event: events.append((batch.indices[position], event)))
    before = sd.pipeline_calls
    results = run_batch(sd, [req(seed=1), req(seed=2, stream=True, steps=4), req(seed=3)])
    assert [status for status, _ in results] == [200] * 3
    assert sd.pipeline_calls == before + 2  # the streamed request in a call of its own
    assert events == [(1, {"request_id": "req-1", "step": s, "steps": 4}) for s in range(1, 5)]
    # streaming changes nothing in the image
    [(_, plain)] = run_batch(sd, [req(seed=2, steps=4)])
    assert results[1][1]["images"] == plain["images"]


def test_stream_progress_counts_the_schedulers_unet_passes(sd, monkeypatch):
    events = []
    monkeypatch.setattr(Batch, "send", lambda batch, position, event: events.append(event))
    [(status, _)] = run_batch(sd, [req(seed=1, stream=True, steps=3, scheduler="pndm")])
    assert status == 200
    assert [e["step"] for e in events] == [1, 2, 3, 4] and {e["steps"] for e in events} == {4}  # PNDM: steps + 1


def test_progress_goes_to_the_frontend_as_an_intermediate_response(sd, monkeypatch):
    sent = []
    monkeypatch.setattr(sd.context, "cl_socket", types.SimpleNamespace(sendall=sent.append), raising=False)
    results = run_batch(sd, [req(seed=1), req(seed=2, stream=True, steps=2)])
    assert [status for status, _ in results] == [200, 200]
    assert len(sent) == 2
    for step, message in enumerate(sent, 1):
        message = bytes(message)
        assert b"req-1" in message and b"req-0" not in message
        assert b"ts_stream_next" in message and b"application/json" in message
        assert json.dumps({"request_id": "req-1", "step": step, "steps": 2}, separators=(",", ":")).encode() in message
    # the final response closes the stream: TorchServe flips the header to false when it encodes it
    final = create_predict_response(
        [json.dumps(body) for _, body in results], sd.context.request_ids, "ok", 200, sd.context
    )
    assert sd.context.get_response_headers(1)["ts_stream_next"] == "false"
    assert b"req-0" in final and b"req-1" in final


def test_progress_is_not_sent_in_process(sd):
    # no frontend socket in-process: sending is a no-op rather than an error
    assert getattr(sd.context, "cl_socket", None) is None
    sd.context.request_ids = {0: "req-0"}
    Batch(sd.context, [0]).send(0, {"step": 1, "steps": 2})


def test_metrics(sd, monkeypatch):
    recorded = []
    real = sd.add_metric
    monkeypatch.setattr(
        sd,
        "add_metric",
        lambda name, value, unit="count": (recorded.append((name, value, unit)), real(name, value, unit)),
    )
    run_batch(sd, [req(["a", "b"], seed=1), req(seed=2)])
    assert ("ImagesGenerated", 3, "count") in recorded
    [(rate, unit)] = [(v, u) for n, v, u in recorded if n == "DenoisingStepsPerSecond"]
    assert rate > 0 and unit == "StepsPerSecond"
    # a unit other than ms/s reaches the metrics cache (TorchServe's add_time would refuse it)
    metric = sd.context.metrics.get_metric("DenoisingStepsPerSecond", MetricTypes.GAUGE)
    assert metric.unit == "StepsPerSecond"


def test_batched_unet_mode_still_answers_every_request():
    sd = load_handler(TextToImage, "sd", exact_seeds=False)
    results = run_batch(sd, [req(seed=1), req(["a", "b"], seed=2), req(seed=3, height=128)])
    assert [status for status, _ in results] == [200] * 3
    assert [image_sizes(body) for _, body in results] == [[(64, 64)], [(64, 64)] * 2, [(64, 128)]]


def test_configured_defaults_and_model_name():
    sd = load_handler(TextToImage, "sd", width=96, height=128, steps=2, scheduler="euler", model_name="sd-tiny")
    [(status, body)] = run_batch(sd, [{"prompt": "a"}])
    assert status == 200, body
    assert body["model"] == "sd-tiny"
    assert image_sizes(body) == [(96, 128)]


def test_defaults_that_break_the_limits_fail_at_load():
    with pytest.raises(RuntimeError, match="steps: must be <= 50"):
        load_handler(TextToImage, "sd", steps=100)
    with pytest.raises(RuntimeError, match="scheduler: unknown scheduler"):
        load_handler(TextToImage, "sd", scheduler="nope")


def test_compile_switch_warms_up_at_load():
    from torch._dynamo.utils import counters

    counters.clear()
    # the eager backend exercises the torch.compile path without a C++ toolchain
    sd = load_handler(TextToImage, "sd", compile_unet={"backend": "eager"})
    assert sd.warmed_up
    # the warm-up generation ran the compiled UNet during load: dynamo traced it before any request
    assert counters["stats"]["unique_graphs"] >= 1
    assert sd.pipeline_calls == 0  # the warm-up is not counted
    [(status, body)] = run_batch(sd, [req(seed=1)])
    assert status == 200, body
