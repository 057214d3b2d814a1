"""`sd` with `control` on the real TorchServe (tiny weights, three tiny ControlNets), over REST and gRPC;
and the control images `depth` and `pose` answer, fed back into `sd`."""

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from client_cli import run_cli
from harness import png_b64, sample_image
from PIL import Image

from client import ApiError
from client.rest import control_entries
from handlers.common import BATCH_SIZE_HEADER, decode_png
from handlers.common.edges import canny_edges

PHOTO = sample_image(96, 64, seed=8)
DEPTH = png_b64(sample_image(96, 64, seed=1))
POSE = png_b64(sample_image(96, 64, seed=2))


def body(seed, controls, **fields):
    return {"prompt": "a dancer on a stage", "steps": 3, "seed": seed, "control": controls, **fields}


def test_control_over_rest_takes_the_control_images_size(server):
    response = server.predict(
        "sd", body(3, [{"type": "depth", "image": DEPTH}, {"type": "pose", "image": POSE, "scale": 0.6}])
    )
    assert response.status_code == 200, response.text
    [image] = response.json()["images"]
    assert decode_png(image).size == (96, 64)  # no width/height: the first control image's size


def test_grpc_equals_rest_with_control(rest, grpc_client):
    controls = [{"type": "canny", "image": POSE, "end": 0.7}]
    over_rest = rest.generate("a dancer on a stage", steps=3, seed=9, control=controls)
    over_grpc = grpc_client.generate("a dancer on a stage", steps=3, seed=9, control=controls)
    assert over_grpc["images"] == over_rest["images"] and over_grpc["seeds"] == [9]


def test_grpc_refusal_names_the_control_field(grpc_client):
    with pytest.raises(ApiError, match=r"control\[0\]\.scale"):
        grpc_client.generate("a", steps=2, control=[{"type": "depth", "image": DEPTH, "scale": 5}])


def test_same_seed_with_control_is_the_same_image_alone_or_batched(server):
    target = body(1234, [{"type": "depth", "image": DEPTH}])
    alone = server.predict("sd", target)
    assert alone.status_code == 200, alone.text
    bodies = [target] + [
        body(900 + i, [{"type": "depth", "image": png_b64(sample_image(96, 64, seed=20 + i))}]) for i in range(5)
    ]
    for _ in range(4):
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda b: server.predict("sd", b), bodies))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        assert responses[0].json()["images"] == alone.json()["images"]
        if int(responses[0].headers[BATCH_SIZE_HEADER]) > 1:
            break
    assert int(responses[0].headers[BATCH_SIZE_HEADER]) > 1, "never batched with the others"
    assert len({r.json()["images"][0] for r in responses}) == len(bodies)


def test_bad_control_is_a_4xx_naming_the_field_and_the_worker_lives(server):
    cases = {
        "control[0].type": [{"type": "segmentation", "image": DEPTH}],
        "control[1].type": [{"type": "pose", "image": POSE}, {"type": "pose", "image": DEPTH}],
        "control[0].image": [{"type": "depth", "image": base64.b64encode(b"not a picture").decode()}],
        "control[0].start": [{"type": "depth", "image": DEPTH, "start": 0.9, "end": 0.1}],
        "control": [{"type": t, "image": DEPTH} for t in ("depth", "pose", "canny", "depth")],
    }
    for field, controls in cases.items():
        response = server.predict("sd", body(1, controls))
        assert 400 <= response.status_code < 500, (field, response.text)
        error = response.json()
        assert error["message"].startswith(f"{field}: "), error
    assert server.predict("sd", body(1, [{"type": "depth", "image": DEPTH}])).status_code == 200


def test_depth_and_pose_control_images_drive_sd(server):
    photo = png_b64(PHOTO)
    depth = server.predict("depth", {"image": photo})
    pose = server.predict("pose", {"image": photo})
    assert depth.status_code == 200 and pose.status_code == 200, (depth.text, pose.text)
    depth_control, pose_control = depth.json()["control_image"], pose.json()["control_image"]
    assert decode_png(depth_control).size == PHOTO.size and decode_png(depth_control).mode == "L"
    assert decode_png(pose_control).size == PHOTO.size and decode_png(pose_control).mode == "RGB"
    generated = server.predict(
        "sd", body(5, [{"type": "depth", "image": depth_control}, {"type": "pose", "image": pose_control}])
    )
    assert generated.status_code == 200, generated.text
    assert decode_png(generated.json()["images"][0]).size == PHOTO.size


def printed_by(server, out, *args: str) -> list[str]:
    """The lines the CLI command ``args`` prints (it saves into ``out``)."""
    return run_cli(server, *args, out=out).stdout.splitlines()


def test_cli_saves_the_control_images_and_generates_from_them(server, rest, tmp_path):
    photo = tmp_path / "photo.png"
    PHOTO.save(photo)
    out = tmp_path / "out"
    assert str(out / "depth_control.png") in printed_by(server, out, "depth", str(photo))
    assert str(out / "pose_control.png") in printed_by(server, out, "pose", str(photo))
    assert printed_by(server, out, "canny", str(photo)) == [str(out / "canny_control.png")]
    for name in ("depth_control", "pose_control", "canny_control"):
        assert Image.open(out / f"{name}.png").size == PHOTO.size
    assert (np.asarray(Image.open(out / "canny_control.png")) == np.asarray(canny_edges(PHOTO))).all()
    depth, pose = out / "depth_control.png", out / "pose_control.png"
    printed = printed_by(
        server,
        out,
        "generate",
        "a dancer",
        "--steps",
        "2",
        "--seed",
        "4",
        "--control",
        f"depth={depth}",
        "--control",
        f"pose={pose}",
        "--control-scale",
        "depth=0.8",
    )
    assert printed == [str(out / "generated_4.png")]
    expected = rest.generate(
        "a dancer", steps=2, seed=4, control=control_entries({"depth": depth, "pose": pose}, {"depth": 0.8})
    )
    assert (np.asarray(Image.open(out / "generated_4.png")) == np.asarray(decode_png(expected["images"][0]))).all()
