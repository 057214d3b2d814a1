"""KServe's request envelopes against the real TorchServe, configured as KServe configures it.

One TorchServe per envelope (``TS_SERVICE_ENVELOPE=kserve``, then ``kservev2``, as KServe's runtime
sets it from an InferenceService's protocolVersion), started on the config.properties that
scripts/kserve.sh generates, its addresses moved to free loopback ports through ``TS_*`` variables
(the config has enable_envvars_config=true). A pod serves one model; to start one server rather
than three, the test serves clip, sam and pipeline together: clip's generated config with the three
generated ``model_snapshot`` entries joined, and a model store holding the three generated archives.
Nothing is registered: the snapshot loads them. The pipeline finds clip and sam through
``MODEL_URLS`` as it does in a cluster.

The last test shows why the handlers open the envelopes themselves: TorchServe 0.12's own envelopes
answer every request of a batch of two or more with 503.
"""

from __future__ import annotations

import json
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import LOCAL_MODELS, kserve_env
from harness import png_b64, sample_image
from server import TorchServe

from handlers.common.envelopes import V1, V2

IMAGE = png_b64(sample_image(96, 64, seed=3))


def joined_config(layouts: Path) -> str:
    """clip's generated config.properties, its model_snapshot and load_models naming every local model."""
    snapshots = {}
    for name in LOCAL_MODELS:
        for line in (layouts / "storage" / name / "config" / "config.properties").read_text().splitlines():
            if line.startswith("model_snapshot="):
                snapshots.update(json.loads(line.split("=", 1)[1])["models"])
    joined = {"name": "startup.cfg", "modelCount": len(snapshots), "models": snapshots}
    lines = []
    for line in (layouts / "storage" / "clip" / "config" / "config.properties").read_text().splitlines():
        if line.startswith("model_snapshot="):
            line = "model_snapshot=" + json.dumps(joined, separators=(",", ":"))
        elif line.startswith("load_models="):
            line = "load_models=" + ",".join(f"{name}.mar" for name in LOCAL_MODELS)
        lines.append(line)
    return "\n".join(lines) + "\n"


def wait_until_ready(ts: TorchServe, names: tuple[str, ...], timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(any(w["status"] == "READY" for w in ts.describe(name)["workers"]) for name in names):
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{names} not ready after {timeout}s: see {ts.run_dir}")


@pytest.fixture(scope="module", params=[V1, V2])
def pod(request, local_layouts, tmp_path_factory):
    envelope = request.param
    store = tmp_path_factory.mktemp(f"store-{envelope}")
    for name in LOCAL_MODELS:
        (store / f"{name}.mar").symlink_to(local_layouts / "storage" / name / "model-store" / f"{name}.mar")
    ts = TorchServe(
        tmp_path_factory.mktemp(f"pod-{envelope}"), store, config_text=joined_config(local_layouts), snapshots=True
    )
    ts.env.update(kserve_env(ts.ports, envelope))
    # where the pipeline's stages call clip and sam: this server, in this protocol
    ts.env["MODEL_URLS"] = json.dumps({name: ts.url("inference") for name in ("clip", "sam")})
    ts.start()
    try:
        wait_until_ready(ts, LOCAL_MODELS)
        yield ts, envelope
    finally:
        ts.stop()


def send(ts: TorchServe, envelope: str, model: str, body: dict[str, Any]) -> requests.Response:
    path = f"/v1/models/{model}:predict" if envelope == V1 else f"/v2/models/{model}/infer"
    return ts.post("inference", path, json=body)


def enveloped(envelope: str, request: dict[str, Any], name: str = "request") -> dict[str, Any]:
    """One model request in the protocol, as a KServe client writes it."""
    if envelope == V1:
        return {"instances": [request]}
    return {"inputs": [{"name": name, "shape": [1], "datatype": "BYTES", "data": [json.dumps(request)]}]}


def opened(envelope: str, response: requests.Response, name: str = "request") -> dict[str, Any]:
    """The model's answer inside the protocol's answer, checking the protocol's shape on the way."""
    assert response.status_code == 200, response.text
    body = response.json()
    if envelope == V1:
        assert list(body) == ["predictions"] and len(body["predictions"]) == 1
        answer = body["predictions"][0]
        assert isinstance(answer, dict)  # an object, not TorchServe's JSON text inside JSON
        return answer
    assert set(body) == {"id", "model_name", "model_version", "outputs"} and body["model_version"] == "1.0"
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (name, "BYTES", [1])
    return json.loads(output["data"][0])


def test_clip_and_sam_answer_in_the_protocol(pod):
    ts, envelope = pod
    request = {"image": IMAGE, "texts": ["cat", "dog"]}
    answer = opened(envelope, send(ts, envelope, "clip", enveloped(envelope, request)))
    assert answer["concepts"] == ["cat", "dog"] and abs(sum(answer["confidence_scores"]) - 1) < 1e-4
    masks = opened(envelope, send(ts, envelope, "sam", enveloped(envelope, {"image": IMAGE, "roi": [[8, 8, 60, 50]]})))
    assert len(masks["masks"]) == len(masks["iou_scores"]) == 1 and masks["boxes"]
    if envelope == V2:  # v2 answers with the client's id (else TorchServe's request id) and the model's name
        body = {"id": "req-42", **enveloped(envelope, {"image": IMAGE, "texts": ["a", "b"]}, name="clip-in")}
        response = send(ts, envelope, "clip", body)
        assert opened(envelope, response, name="clip-in")["concepts"] == ["a", "b"]
        assert (response.json()["id"], response.json()["model_name"]) == ("req-42", "clip")
        assert send(ts, envelope, "clip", enveloped(envelope, request)).json()["id"] != "req-42"


def test_a_bare_image_instance_is_the_image_field(pod):
    ts, envelope = pod
    body = (
        {"instances": [IMAGE]}
        if envelope == V1
        else {"inputs": [{"name": "photo", "shape": [1], "datatype": "BYTES", "data": [IMAGE]}]}
    )
    answer = opened(envelope, send(ts, envelope, "clip", body), name="photo")
    assert len(answer["concepts"]) > 10  # the built-in vocabulary


def test_concurrent_requests_share_a_batch_and_each_gets_its_own_answer_and_status(pod):
    """Under TorchServe's own envelope every request of this batch would be a 503 (last test)."""
    ts, envelope = pod
    count = 8
    largest_batch = 0
    for _round in range(5):  # until the requests met in one batch (they arrive within clip's 20 ms batch delay)
        barrier = threading.Barrier(count)

        def one(i: int, barrier: threading.Barrier = barrier) -> tuple[int, requests.Response]:
            request = {"image": IMAGE, "texts": [f"thing {i}", "other"]}
            if i == 3:  # one bad request in the middle of the batch
                request["roi"] = [[40, 10, 20, 30]]
            barrier.wait()
            return i, send(ts, envelope, "clip", enveloped(envelope, request))

        with ThreadPoolExecutor(count) as pool:
            results = list(pool.map(one, range(count)))
        for i, response in results:
            if i == 3:
                assert response.status_code == 400, response.text
                assert response.json()["message"].startswith("roi[0]: x2 must be > x1")
            else:
                assert opened(envelope, response)["concepts"] == [f"thing {i}", "other"]
        largest_batch = max(int(response.headers["x-batch-size"]) for _, response in results)
        if largest_batch > 1:
            break
    assert largest_batch > 1, "the concurrent requests never shared a batch"


V1_REFUSALS = [
    ({"instance": [{"image": IMAGE}]}, "instances: is required"),
    ({"instances": {"image": IMAGE}}, "instances: must be a list"),
    ({"instances": [{"image": IMAGE}, {"image": IMAGE}]}, "instances: has 2 instances; send one per request"),
    ({"instances": [{"image": IMAGE}], "extra": 1}, "extra: unknown field"),
    ({"instances": [7]}, "instances[0]: must be the model's JSON request"),
    ({"instances": [{"image": IMAGE, "roi": [[10, 10, 5, 20]]}]}, "roi[0]: x2 must be > x1"),
    ({"instances": [{"image": IMAGE, "texts": "cat"}]}, "texts: must be a list of strings"),
    ({"instances": [{"image": IMAGE, "stream": True}]}, "stream: is not available over KServe's protocols"),
]


def v2(**item: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "request", "shape": [1], "datatype": "BYTES", "data": [json.dumps({"image": IMAGE})], **item}
        ]
    }


V2_REFUSALS = [
    ({"instances": [{"image": IMAGE}]}, "inputs: is required"),
    (v2(datatype="FP32"), "inputs[0].datatype: must be BYTES"),
    (v2(shape=[2]), "inputs[0].shape: must be [1]"),
    (v2(data=["{not json"]), "inputs[0].data[0]: invalid JSON"),
    (v2(data=[]), "inputs[0].data: must be a list holding one element"),
    (v2(name=""), "inputs[0].name: is required"),
    (v2(datatyp="BYTES"), "datatyp: unknown field"),
    ({**v2(), "id": 5}, "id: must be a string"),
    ({"inputs": [v2()["inputs"][0]] * 2}, "inputs: has 2 inputs; send one per request"),
    (v2(data=[json.dumps({"image": IMAGE, "roi": [[10, 10, 5, 20]]})]), "roi[0]: x2 must be > x1"),
]


def test_a_bad_request_gets_a_4xx_naming_the_field_and_the_worker_lives(pod):
    ts, envelope = pod
    pids = ts.worker_pids("clip")
    for body, message in V1_REFUSALS if envelope == V1 else V2_REFUSALS:
        response = send(ts, envelope, "clip", body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()
        assert set(error) == {"request_id", "code", "type", "message"} and error["code"] == 400
        assert error["message"].startswith(message), (message, error["message"])
    explain = "/v1/models/clip:explain" if envelope == V1 else "/v2/models/clip/explain"
    unexplained = ts.post("inference", explain, json=enveloped(envelope, {"image": IMAGE}))
    assert unexplained.status_code == 404 and unexplained.json()["message"].startswith("explain: ")
    # the deployment speaks its protocol on every route: a plain body is refused naming the envelope
    plain = ts.predict("clip", {"image": IMAGE})
    assert plain.status_code == 400 and plain.json()["message"].startswith("instances" if envelope == V1 else "inputs")
    assert ts.worker_pids("clip") == pids
    assert opened(envelope, send(ts, envelope, "clip", enveloped(envelope, {"image": IMAGE, "texts": ["x", "y"]})))


def test_the_pipeline_calls_the_models_in_the_deployments_protocol(pod):
    """clip and sam here accept only the deployment's protocol, so the pipeline's answer proves its
    stages spoke it (workflows/connect.py: MODEL_URLS and TS_SERVICE_ENVELOPE)."""
    ts, envelope = pod
    request = {"image": IMAGE, "texts": ["cat", "dog"]}
    answer = opened(envelope, send(ts, envelope, "pipeline", enveloped(envelope, request)))
    assert answer["clip_analysis"]["concepts"] == ["cat", "dog"]
    segmentation = answer["basic_segmentation"]
    assert len(segmentation["masks"]) == len(segmentation["segmented_regions"]) > 0
    assert set(answer["timings"]) >= {"concepts", "segment"} or set(answer["timings"]) >= {"analyze", "segment"}
    refused = send(ts, envelope, "pipeline", enveloped(envelope, {"image": IMAGE, "priors": ["depth", "smell"]}))
    assert refused.status_code == 400 and refused.json()["message"].startswith("priors[1]")


# --- TorchServe 0.12's own envelopes, in-process ---------------------------------------------------


def predict_through_torchserve(envelope_class: type, bodies: list[dict[str, Any]]) -> tuple[int, str]:
    """ts.service.Service.predict, as a worker runs it, on a handler wrapped in ``envelope_class``;
    the code and message TorchServe answers every request of the batch with."""
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.service import Service

    metrics = MetricsCacheYamlImpl(str(Path(__import__("ts").__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()

    def handle(data: list[Any], context: Any) -> list[str]:  # a handler answering each row it is given
        return [json.dumps({"echo": row}) for row in data]

    service = Service(
        "clip",
        ".",
        {"model": {"modelName": "clip", "modelVersion": "1.0"}},
        envelope_class(handle).handle,
        None,
        len(bodies),
        metrics_cache=metrics,
    )
    service.set_cl_socket(None)  # the frontend's socket; predict only stores it
    batch = [
        {
            "requestId": f"req-{i}".encode(),
            "headers": [],
            "parameters": [{"name": "body", "contentType": "application/json", "value": json.dumps(body).encode()}],
        }
        for i, body in enumerate(bodies)
    ]
    message = service.predict(batch)
    code, length = struct.unpack("!ii", message[:8])
    return code, message[8 : 8 + length].decode()


def test_torchserve_0_12_envelopes_answer_a_shared_batch_with_503():
    """Why handlers/common/envelopes.py exists: TorchServe's kserve and kservev2 envelopes open the
    first request of a batch only and return one response for the batch. When this test fails,
    TorchServe has fixed it and the take-over can go."""
    from ts.torch_handler.request_envelope.kserve import KServeEnvelope
    from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

    one_v1, one_v2 = {"instances": [{"image": "x"}]}, v2()
    assert predict_through_torchserve(KServeEnvelope, [one_v1]) == (200, "Prediction success")
    assert predict_through_torchserve(KServev2Envelope, [one_v2]) == (200, "Prediction success")
    shared = (503, "number of batch response mismatched")
    assert predict_through_torchserve(KServeEnvelope, [one_v1, one_v1]) == shared
    assert predict_through_torchserve(KServev2Envelope, [one_v2, one_v2]) == shared
