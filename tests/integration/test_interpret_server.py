"""`interpret` on the real tiny server: shapes, counts, rank/best, the edited caption reaching sd, the
stream's order, gRPC, bad input, failures named by stage, and no second copy of any model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from client_cli import run_cli
from harness import png_b64, sample_image
from PIL import Image

from client import ApiError
from handlers.common import decode_png

SIDE = 64
SOURCE = png_b64(sample_image(SIDE, SIDE, seed=9))
QUICK = {"steps": 2}  # tiny sd at 64x64 (the source's size), two steps


def interpret(server, body: dict[str, Any], **kwargs: Any):
    return server.post("inference", "/predictions/interpret", json={"image": SOURCE, **QUICK, **body}, **kwargs)


def requests_to(server, model: str) -> float:
    """Requests ``model`` has received: TorchServe's own counter on the metrics port."""
    total = 0.0
    for line in server.get("metrics", "/metrics").text.splitlines():
        if line.startswith("ts_inference_requests_total") and f'model_name="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_ranked(body: dict[str, Any]) -> None:
    samples = body["samples"]
    assert sorted(s["rank"] for s in samples) == list(range(len(samples)))
    assert samples[body["best"]]["rank"] == 0
    means = [(s["scores"]["caption"] + s["scores"]["source"]) / 2 for s in samples]  # the yaml's rule: mean
    assert means[body["best"]] == max(means)
    by_rank = [means[i] for i in sorted(range(len(samples)), key=lambda i: samples[i]["rank"])]
    assert by_rank == sorted(by_rank, reverse=True)


def test_each_mode_shapes_counts_and_ranking(server):
    response = interpret(server, {"priors": ["depth", "pose", "canny"], "samples": 2, "seed": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["caption"]["edited"] is False and body["caption"]["text"].strip()
    assert list(body["priors"]) == ["depth", "pose", "canny"]
    for prior in body["priors"].values():
        assert decode_png(prior["control_image"]).size == (SIDE, SIDE)
    assert isinstance(body["priors"]["pose"]["people"], list)
    assert [(s["priors"], s["seed"]) for s in body["samples"]] == [
        ([p], seed) for p in ("depth", "pose", "canny") for seed in (5, 6)
    ]
    for sample in body["samples"]:
        assert decode_png(sample["image"]).size == (SIDE, SIDE)
        assert -1 <= sample["scores"]["caption"] <= 1 and -1 <= sample["scores"]["source"] <= 1
    assert_ranked(body)
    assert {"caption", "depth", "pose", "canny", "generate_depth", "generate_pose", "generate_canny", "score"} <= set(
        body["timings"]
    )


def test_combined_mode_gives_samples_from_all_priors_at_once(server):
    body = interpret(
        server, {"priors": ["canny", "depth"], "mode": "combined", "samples": 3, "seed": 1, "caption": "a red bicycle"}
    ).json()
    assert [(s["priors"], s["seed"]) for s in body["samples"]] == [(["canny", "depth"], seed) for seed in (1, 2, 3)]
    assert_ranked(body)
    assert "generate" in body["timings"]


def test_the_edited_caption_is_sds_prompt(server):
    caption = "a lighthouse on a cliff at dusk"
    captions_before = requests_to(server, "caption")
    body = interpret(server, {"priors": ["canny"], "samples": 2, "seed": 3, "caption": caption}).json()
    assert body["caption"] == {"text": caption, "edited": True}
    assert requests_to(server, "caption") == captions_before  # BLIP was not called
    # the samples are sd's own answer to that prompt, with that control image and seed, asked directly
    direct = server.predict(
        "sd",
        {
            "prompt": [caption, caption],
            "seed": 3,
            **QUICK,
            "control": [{"type": "canny", "image": body["priors"]["canny"]["control_image"]}],
        },
    ).json()
    assert [s["image"] for s in body["samples"]] == direct["images"]
    other = server.predict(
        "sd",
        {
            "prompt": ["something else"] * 2,
            "seed": 3,
            **QUICK,
            "control": [{"type": "canny", "image": body["priors"]["canny"]["control_image"]}],
        },
    ).json()
    assert other["images"][0] != direct["images"][0]  # so the equality above says which prompt sd got


def test_a_supplied_prior_image_is_not_computed_again(server):
    edited = png_b64(Image.new("RGB", (SIDE, SIDE), (90, 90, 90)))
    depth_before = requests_to(server, "depth")
    body = interpret(server, {"priors": ["depth"], "samples": 1, "seed": 2, "prior_images": {"depth": edited}}).json()
    assert body["priors"]["depth"] == {"control_image": edited, "supplied": True}
    assert requests_to(server, "depth") == depth_before


def read_stream(response) -> list[dict[str, Any]]:
    decoder, text, events = json.JSONDecoder(), "", []
    for chunk in response.iter_content(chunk_size=None):
        text += chunk.decode()
    while text.strip():
        event, end = decoder.raw_decode(text.lstrip())
        text = text.lstrip()[end:]
        events.append(event)
    return events


def test_stream_sends_the_caption_each_prior_the_samples_then_the_response(server):
    response = interpret(server, {"priors": ["depth", "pose"], "samples": 1, "seed": 4, "stream": True}, stream=True)
    assert response.status_code == 200
    events = read_stream(response)
    stages = [event.get("stage") for event in events[:-1]]
    assert set(stages[:3]) == {"caption", "depth", "pose"} and stages[3:] == ["samples"]
    final = events[-1]
    assert "stage" not in final and final["best"] == events[-2]["result"]["best"]
    assert events[-2]["result"]["samples"] == final["samples"]
    assert dict((e["stage"], e["result"]) for e in events[:3])["depth"] == final["priors"]["depth"]


def test_grpc_predictions_and_stream_predictions(rest, grpc_client):
    request = {"priors": ["canny"], "samples": 2, "seed": 8, "caption": "a cat", **QUICK}
    body = grpc_client.interpret(SOURCE, **request)
    assert [s["image"] for s in body["samples"]] == [s["image"] for s in rest.interpret(SOURCE, **request)["samples"]]
    assert_ranked(body)
    events = list(grpc_client.interpret_stream(SOURCE, **{**request, "samples": 1}))
    assert [e.get("stage") for e in events[:-1]] == ["caption", "canny", "samples"]  # a supplied caption comes first
    assert "best" in events[-1]
    with pytest.raises(ApiError) as refused:
        grpc_client.interpret(SOURCE, priors=["normals"])
    assert refused.value.status == 400 and refused.value.body["message"].startswith("priors[0]: ")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"priors": ["normals"]}, "priors[0]"),
        ({"samples": 9}, "samples"),
        ({"mode": "all"}, "mode"),
        ({"scales": {"canny": 1}}, "scales.canny"),
        ({"prior_images": {"depth": "bm90IGFuIGltYWdl"}}, "prior_images.depth"),
        ({"steps": 80}, "steps"),
        ({"caption": ""}, "caption"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_before_any_model_runs(server, body, field):
    before = {model: requests_to(server, model) for model in ("caption", "depth", "pose", "sd", "clip")}
    response = interpret(server, body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["message"].startswith(f"{field}: ") and error["code"] == 400
    assert {model: requests_to(server, model) for model in before} == before


def test_models_are_registered_once_and_interpret_uses_their_workers(server):
    names = [m["modelName"] for m in server.get("management", "/models?limit=100").json()["models"]]
    for model in ("caption", "depth", "pose", "sd", "clip", "interpret"):
        assert names.count(model) == 1
    assert not [name for name in names if "__" in name]  # no workflow-style second copies
    # with clip scaled to zero workers the interpreter cannot score: it runs on clip's own workers
    server.request("management", "PUT", "/models/clip?min_worker=0&max_worker=0&synchronous=true").raise_for_status()
    try:
        response = interpret(server, {"priors": ["canny"], "samples": 1, "caption": "x"}, timeout=120)
        assert response.status_code == 502, response.text
        message = response.json()["message"]
        assert message.startswith("score: ") and 'Model "clip" has no worker' in message
    finally:
        restore = "/models/clip?min_worker=1&max_worker=4&synchronous=true"
        server.request("management", "PUT", restore).raise_for_status()
    assert interpret(server, {"priors": ["canny"], "samples": 1, "caption": "x"}).status_code == 200


def test_cli_saves_samples_control_images_and_a_contact_sheet(server, tmp_path):
    photo = tmp_path / "photo.png"
    sample_image(SIDE, SIDE, seed=9).save(photo)
    out = tmp_path / "out"
    result = run_cli(
        server,
        "interpret",
        str(photo),
        "--priors",
        "depth",
        "pose",
        "--samples",
        "2",
        "--steps",
        "2",
        "--seed",
        "1",
        out=out,
    )
    files = sorted(path.name for path in out.iterdir())
    assert {"interpret_depth.png", "interpret_pose.png", "interpret_contact_sheet.png", "interpret.json"} <= set(files)
    assert len([name for name in files if name.startswith("interpret_rank")]) == 4
    saved = json.loads((out / "interpret.json").read_text())
    best = saved["samples"][saved["best"]]
    assert (out / f"interpret_rank0_{best['priors'][0]}_{best['seed']}.png").exists()
    sheet = Image.open(out / "interpret_contact_sheet.png")
    assert sheet.width >= 4 * 64 and sheet.height > sheet.width / 2
    assert "best: sample" in result.stdout
