"""Malformed requests to every model and both pipeline paths: each gets a 4xx JSON naming the problem
(the workflow: a non-2xx naming the node), none restarts a worker, good requests beside them succeed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests
from harness import png_bytes, sample_image
from PIL import Image
from robustness.tools import all_worker_pids, b64, encoded, good_image, jpeg_declaring, limits, png_header, properties

IMAGE = good_image(64, 48)  # a legal 64x48 PNG (base64)
RAW = png_bytes(sample_image(64, 48))
BOMB = png_header(100_000, 100_000)  # 57 bytes declaring 10 gigapixels
HUGE_INT = "1" + "0" * 400  # a JSON integer no float can hold
DIGITS_5000 = "1" * 5000  # over Python's 4300-digit int conversion limit
DEEP = "[" * 100_000 + "]" * 100_000  # nested past the JSON parser's recursion limit


@dataclass
class Case:
    name: str
    path: str  # /predictions/<model> or /wfpredict/pipeline
    field: str  # the handler's message starts with "<field>: "; the workflow names this node
    json: Any = None  # sent as JSON
    text: str | None = None  # sent verbatim as application/json (NaN, Infinity, broken JSON)
    raw: bytes | None = None  # sent verbatim with no content type (TorchServe's raw image body)
    status: int = 400
    content_type: str = "application/json"  # for ``text``

    @property
    def workflow(self) -> bool:
        return self.path.startswith("/wfpredict/")

    @property
    def target(self) -> str:
        return self.path.rsplit("/", 1)[1] + (" (workflow)" if self.workflow else "")


def model(name: str, case: str, field: str, *, status: int = 400, **body: Any) -> Case:
    return Case(case, f"/predictions/{name}", field, status=status, **body)


def pipeline(case: str, field: str, *, node: str = "prepare", status: int = 400, **body: Any) -> list[Case]:
    """The same request to the pipeline model (a proper 4xx naming the field) and the workflow
    (TorchServe 0.12's engine can only say "Error executing <node>" with a non-2xx)."""
    return [
        Case(case, "/predictions/pipeline", field, status=status, **body),
        Case(case, "/wfpredict/pipeline", node, status=status, **body),
    ]


def gif() -> bytes:
    return encoded(sample_image(16, 16), "GIF")


def tiff() -> bytes:
    return encoded(sample_image(16, 16), "TIFF")


def truncated_png() -> bytes:
    return RAW[: len(RAW) // 2]


def elongated_png(width: int, height: int) -> str:
    return b64(encoded(Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))))


def cases() -> list[Case]:
    sd_limits, clip_limits, sam_limits, pose_limits = limits("sd"), limits("clip"), limits("sam"), limits("pose")
    over_clip_side = clip_limits["max_image_side"] + 1
    over_sam_side = sam_limits["max_image_side"] + 1
    too_many_sam_boxes = sam_limits["max_masks"] // 3 + 1  # x 3 masks each with multimask
    return [
        # --- sd ------------------------------------------------------------------------------
        model("sd", "invalid JSON", "body", text='{"prompt": "a cat",'),
        model("sd", "JSON array body", "body", text="[1, 2]"),
        model("sd", "missing prompt", "prompt", json={}),
        model("sd", "empty prompt", "prompt", json={"prompt": ""}),
        model("sd", "blank prompt", "prompt", json={"prompt": "   "}),
        model("sd", "prompt wrong type", "prompt", json={"prompt": 42}),
        model("sd", "empty prompt in a list", "prompt[1]", json={"prompt": ["a", ""]}),
        model("sd", "too many prompts", "prompt", json={"prompt": ["a"] * (sd_limits["max_prompts"] + 1)}),
        model("sd", "prompt too long", "prompt", json={"prompt": "x" * (sd_limits["max_prompt_length"] + 1)}),
        model("sd", "negative steps", "steps", json={"prompt": "a", "steps": -5}),
        model("sd", "steps over the limit", "steps", json={"prompt": "a", "steps": sd_limits["max_steps"] + 1}),
        model("sd", "fractional steps", "steps", json={"prompt": "a", "steps": 2.5}),
        model("sd", "steps NaN", "steps", text='{"prompt": "a", "steps": NaN}'),
        model("sd", "steps a 401-digit integer", "steps", text=f'{{"prompt": "a", "steps": {HUGE_INT}}}'),
        model("sd", "guidance Infinity", "guidance_scale", text='{"prompt": "a", "guidance_scale": Infinity}'),
        model("sd", "guidance -Infinity", "guidance_scale", text='{"prompt": "a", "guidance_scale": -Infinity}'),
        model("sd", "guidance a string", "guidance_scale", json={"prompt": "a", "guidance_scale": "high"}),
        model("sd", "unknown scheduler", "scheduler", json={"prompt": "a", "scheduler": "warp-drive"}),
        model("sd", "unknown field", "promt", json={"promt": "a"}),
        model("sd", "width not a multiple of 8", "width", json={"prompt": "a", "width": 100}),
        model("sd", "width over max_side", "width", json={"prompt": "a", "width": sd_limits["max_side"] + 8}),
        model(
            "sd",
            "size over max_pixels",
            "width",
            json={"prompt": "a", "width": sd_limits["max_side"], "height": sd_limits["max_side"]},
        ),
        model("sd", "height under min_side", "height", json={"prompt": "a", "height": 8}),
        model("sd", "negative seed", "seed", json={"prompt": "a", "seed": -1}),
        model("sd", "seed a boolean", "seed", json={"prompt": "a", "seed": True}),
        model(
            "sd",
            "negative_prompt count mismatch",
            "negative_prompt",
            json={"prompt": ["a", "b"], "negative_prompt": ["x"]},
        ),
        model("sd", "5000-digit integer", "body", text=f'{{"prompt": "a", "seed": {DIGITS_5000}}}'),
        model("sd", "JSON nested 100000 deep", "body", text=f'{{"prompt": {DEEP}}}'),
        # --- clip ----------------------------------------------------------------------------
        model("clip", "non-image bytes", "image", raw=b"this is not an image at all"),
        model("clip", "truncated PNG", "image", raw=truncated_png()),
        model("clip", "decompression bomb PNG (100000x100000)", "image", raw=BOMB, status=413),
        model("clip", "zero-size PNG", "image", json={"image": b64(png_header(0, 0))}),
        model(
            "clip", "image over max_image_side", "image", json={"image": b64(png_header(over_clip_side, 1))}, status=413
        ),
        model("clip", "GIF", "image", raw=gif()),
        model("clip", "image not base64", "image", json={"image": "!!! not base64 !!!"}),
        model("clip", "texts a string", "texts", json={"image": IMAGE, "texts": "cat"}),
        model("clip", "texts empty", "texts", json={"image": IMAGE, "texts": []}),
        model("clip", "empty text", "texts[0]", json={"image": IMAGE, "texts": [""]}),
        model(
            "clip",
            "too many texts",
            "texts",
            json={"image": IMAGE, "texts": [f"t{i}" for i in range(clip_limits["max_texts"] + 1)]},
        ),
        model(
            "clip",
            "text too long",
            "texts[0]",
            json={"image": IMAGE, "texts": ["x" * (clip_limits["max_text_length"] + 1)]},
        ),
        model("clip", "roi outside the image", "roi[0]", json={"image": IMAGE, "roi": [[0, 0, 65, 10]]}),
        model("clip", "unknown field", "text", json={"image": IMAGE, "text": ["a"]}),
        # --- sam -----------------------------------------------------------------------------
        model("sam", "missing image", "image", json={"roi": [[0, 0, 1, 1]]}),
        model("sam", "roi outside the image", "roi[0]", json={"image": IMAGE, "roi": [[10, 10, 80, 20]]}),
        model("sam", "roi NaN", "roi[0][0]", text=f'{{"image": "{IMAGE}", "roi": [[NaN, 0, 10, 10]]}}'),
        model(
            "sam", "roi 401-digit integer", "roi[0][2]", text=f'{{"image": "{IMAGE}", "roi": [[0, 0, {HUGE_INT}, 10]]}}'
        ),
        model(
            "sam", "too many boxes", "roi", json={"image": IMAGE, "roi": [[0, 0, 8, 8]] * (sam_limits["max_boxes"] + 1)}
        ),
        model(
            "sam",
            "multimask over max_masks",
            "roi",
            json={"image": IMAGE, "roi": [[0, 0, 8, 8]] * too_many_sam_boxes, "multimask": True},
        ),
        model("sam", "point outside the image", "points[0]", json={"image": IMAGE, "points": [[100, 100]]}),
        model("sam", "point_labels without points", "point_labels", json={"image": IMAGE, "point_labels": [1]}),
        model(
            "sam", "point label 2", "point_labels[0]", json={"image": IMAGE, "points": [[1, 1]], "point_labels": [2]}
        ),
        model(
            "sam", "multimask a string", "multimask", json={"image": IMAGE, "roi": [[0, 0, 8, 8]], "multimask": "yes"}
        ),
        model(
            "sam", "image over max_image_side", "image", json={"image": b64(png_header(over_sam_side, 1))}, status=413
        ),
        model("sam", "image too elongated to resize", "image", json={"image": elongated_png(2048, 1)}),
        # --- depth ---------------------------------------------------------------------------
        model("depth", "empty body", "body", raw=b""),
        model("depth", "text/plain that is not JSON", "body", text="hello", content_type="text/plain"),
        model("depth", "application/json that is not JSON", "image", text="hello"),
        model("depth", "image a number", "image", json={"image": 12}),
        model("depth", "unknown field", "roi", json={"image": IMAGE, "roi": [[0, 0, 8, 8]]}),
        model("depth", "decompression bomb JPEG (65000x65000)", "image", raw=jpeg_declaring(65000, 65000), status=413),
        model("depth", "JPEG over max_image_side", "image", raw=jpeg_declaring(3000, 3000), status=413),
        # --- pose ----------------------------------------------------------------------------
        model("pose", "roi x2 <= x1", "roi[0]", json={"image": IMAGE, "roi": [[10, 10, 5, 20]]}),
        model("pose", "roi of 3 numbers", "roi[0]", json={"image": IMAGE, "roi": [[0, 0, 10]]}),
        model(
            "pose", "too many rois", "roi", json={"image": IMAGE, "roi": [[0, 0, 8, 8]] * (pose_limits["max_rois"] + 1)}
        ),
        model("pose", "roi Infinity", "roi[0][2]", text=f'{{"image": "{IMAGE}", "roi": [[0, 0, Infinity, 10]]}}'),
        model("pose", "data URL with garbage", "image", json={"image": "data:image/png;base64,@@@@"}),
        model("pose", "TIFF", "image", raw=tiff()),
        model("pose", "truncated PNG as base64", "image", json={"image": b64(truncated_png())}),
        # --- pipeline: the model and the workflow --------------------------------------------
        *pipeline("invalid JSON", "body", text='{"image": '),
        *pipeline("neither prompt nor image", "prompt", json={}),
        *pipeline("both prompt and image", "prompt", json={"prompt": "a", "image": IMAGE}),
        *pipeline("empty prompt", "prompt", json={"prompt": ""}),
        *pipeline("image a number", "image", json={"image": 5}),
        *pipeline("decompression bomb", "image", json={"image": b64(BOMB)}, status=413),
        *pipeline("unknown prior", "priors[0]", json={"image": IMAGE, "priors": ["normals"]}),
        *pipeline("too many texts", "texts", json={"image": IMAGE, "texts": [f"t{i}" for i in range(101)]}),
        *pipeline("roi outside the image", "roi[0]", json={"image": IMAGE, "roi": [[0, 0, 100, 100]]}),
        *pipeline("generation field without prompt", "steps", json={"image": IMAGE, "steps": 10}),
        *pipeline("guidance NaN", "guidance_scale", text='{"prompt": "a", "guidance_scale": NaN}'),
        *pipeline(
            "guidance a 401-digit integer", "guidance_scale", text=f'{{"prompt": "a", "guidance_scale": {HUGE_INT}}}'
        ),
        *pipeline("unknown field", "colour", json={"image": IMAGE, "colour": "red"}),
        # sd refuses these: the pipeline answers sd's 4xx, naming its stage, before any analysis
        *pipeline("negative steps (sd refuses)", "generate: steps", json={"prompt": "a", "steps": -1}),
        *pipeline("unknown scheduler (sd refuses)", "generate: scheduler", json={"prompt": "a", "scheduler": "warp"}),
    ]


GOOD: dict[str, tuple[str, dict[str, Any]]] = {
    "sd": ("/predictions/sd", {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 1}),
    "clip": ("/predictions/clip", {"image": IMAGE, "texts": ["a", "b"]}),
    "sam": ("/predictions/sam", {"image": IMAGE, "roi": [[4, 4, 40, 40]]}),
    "depth": ("/predictions/depth", {"image": IMAGE}),
    "pose": ("/predictions/pose", {"image": IMAGE}),
    "pipeline": ("/predictions/pipeline", {"image": IMAGE, "texts": ["a", "b"]}),
    "pipeline (workflow)": ("/wfpredict/pipeline", {"image": IMAGE, "texts": ["a", "b"]}),
}


def send(server, case: Case) -> requests.Response:
    if case.json is not None:
        return server.post("inference", case.path, json=case.json, timeout=120)
    if case.text is not None:
        return server.post(
            "inference", case.path, data=case.text.encode(), timeout=120, headers={"Content-Type": case.content_type}
        )
    return server.post("inference", case.path, data=case.raw, timeout=120)


def problem(case: Case, response: requests.Response) -> str | None:
    """Why the answer is wrong, or None."""
    if case.workflow:
        if response.status_code < 400:
            return f"HTTP {response.status_code}, expected a non-2xx"
        if f"Error executing {case.field}" not in response.text:
            return f"HTTP {response.status_code} does not name node {case.field!r}: {response.text[:200]}"
        return None
    if response.status_code != case.status:
        return f"HTTP {response.status_code}, expected {case.status}: {response.text[:300]}"
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]}"
    if body.get("code") != case.status or not body.get("type"):
        return f"body lacks code/type: {body}"
    if not str(body.get("message", "")).startswith(f"{case.field}: "):
        return f"message does not start with {case.field!r}: {body.get('message')!r}"
    return None


def test_malformed_requests_get_a_4xx_naming_the_problem_and_restart_nothing(server):
    all_cases = cases()
    assert len(all_cases) >= 40
    assert {c.target for c in all_cases} >= {"sd", "clip", "sam", "depth", "pose", "pipeline", "pipeline (workflow)"}
    before = all_worker_pids(server)

    # bad requests run concurrently with good ones, so many share a batch with a good request
    work: list[tuple[str, Any]] = [("case", case) for case in all_cases]
    for i, name in enumerate(GOOD):
        for j in range(2):
            work.insert((i * 2 + j) * len(all_cases) // (2 * len(GOOD)), ("good", name))

    def run(item):
        kind, what = item
        if kind == "case":
            return kind, what, send(server, what)
        path, body = GOOD[what]
        return kind, what, server.post("inference", path, json=body, timeout=300)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(run, work))

    failures = []
    model_4xx = workflow_non_2xx = 0
    for kind, what, response in answers:
        if kind == "good":
            if response.status_code != 200:
                failures.append(f"good request to {what}: HTTP {response.status_code} {response.text[:200]}")
            continue
        why = problem(what, response)
        if why:
            failures.append(f"{what.target}: {what.name}: {why}")
        if what.workflow:
            workflow_non_2xx += response.status_code >= 400
        else:
            model_4xx += 400 <= response.status_code < 500

    after = all_worker_pids(server)
    restarts = sum(len(before[name] - after.get(name, set())) for name in before)
    to_models = sum(not c.workflow for c in all_cases)
    to_workflow = len(all_cases) - to_models
    print(
        f"\nbad input: {len(all_cases)} malformed requests beside {2 * len(GOOD)} good ones: "
        f"{model_4xx}/{to_models} to the models and /predictions/pipeline answered 4xx "
        f"({100 * model_4xx / to_models:.0f}%), {workflow_non_2xx}/{to_workflow} to /wfpredict/pipeline answered "
        f"non-2xx (the engine cannot answer 4xx); worker restarts: {restarts}"
    )
    for target in sorted({c.target for c in all_cases}):
        print(f"  {target:<22} {sum(c.target == target for c in all_cases)} cases")
    assert not failures, "\n".join(failures)
    assert after == before, f"workers restarted: {before} -> {after}"

    # and afterwards every model (and the workflow) still answers a good request
    for name, (path, body) in GOOD.items():
        response = server.post("inference", path, json=body, timeout=300)
        assert response.status_code == 200, f"{name}: {response.status_code} {response.text[:300]}"


def test_handler_errors_are_per_request_json_with_request_id(server):
    # the error body is the contract's {"code", "type", "message"} plus the request's id
    response = server.predict("sam", {"image": IMAGE, "roi": [[10, 10, 5, 20]]})
    assert response.status_code == 400
    body = response.json()
    assert body == {
        "request_id": response.headers["x-request-id"],
        "code": 400,
        "type": "InvalidInput",
        "message": "roi[0]: x2 must be > x1",
    }
    assert response.headers["content-type"].startswith("application/json")


def test_body_over_max_request_size_is_refused_by_torchserve(server):
    """Over config.properties' max_request_size TorchServe itself answers 413 before any handler;
    just under it the body reaches the handler, which names the problem. Nothing restarts."""
    limit = int(properties()["max_request_size"])
    before = all_worker_pids(server)
    over = b'{"image": "' + b"A" * (limit + 1) + b'"}'
    for path in ("/predictions/clip", "/predictions/pipeline", "/wfpredict/pipeline"):
        try:
            response = server.post(
                "inference", path, data=over, timeout=120, headers={"Content-Type": "application/json"}
            )
        except requests.ConnectionError as exc:  # a server may also close the connection mid-upload
            raise AssertionError(f"{path}: no HTTP answer to an oversized body: {exc}") from None
        assert response.status_code == 413, f"{path}: {response.status_code} {response.text[:200]}"
    # just under the limit: TorchServe passes it on, and the handler refuses it as a bad image
    under = b'{"image": "' + b"A" * (limit - 1024) + b'"}'
    response = server.post(
        "inference", "/predictions/clip", data=under, timeout=120, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["message"].startswith("image: "), response.text[:300]
    assert server.get("inference", "/ping").json()["status"] == "Healthy"
    assert all_worker_pids(server) == before
    assert server.predict("clip", {"image": IMAGE}).status_code == 200
