"""Each workaround in handlers/common/compat.py checks the behaviour it works around, on the installed
libraries: when an upgrade changes one, its test here fails and says which workaround can go."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import ts
from harness import ensure_tiny_weights, make_context
from PIL import Image

from handlers.common import compat

TS_JAR = Path(ts.__file__).parent / "frontend" / "model-server.jar"


def jar_class(name: str) -> bytes:
    with zipfile.ZipFile(TS_JAR) as jar:
        return jar.read(f"org/pytorch/serve/{name}.class")


def test_torchserve_is_the_version_the_workarounds_were_written_for():
    # the frontend behaviours below (DagExecutor's promise race, GRPCJob's header, the REST-only
    # url_path header) are in Java: a new frontend means re-checking compat.py line by line
    assert ts.__version__ == "0.12.0"


def test_the_workers_final_response_carries_no_stream_header_unless_a_chunk_set_it():
    # mark_final_grpc_response exists because ts 0.12's encoder leaves ts_stream_next unset on a
    # response that streamed nothing, while the gRPC frontend (GRPCJob) dereferences it
    from ts.protocol.otf_message_handler import create_predict_response

    context = make_context("compat", {"handler": {}}, batch_size=1)
    context.request_ids = {0: "r0"}
    from ts.context import RequestProcessor

    context.request_processor = [RequestProcessor({})]
    create_predict_response(["{}"], context.request_ids, "ok", 200, context)
    assert "ts_stream_next" not in context.get_response_headers(0)
    assert b"ts_stream_next" in jar_class("job/GRPCJob")


def test_only_rest_requests_carry_the_url_path_header():
    # is_grpc_request tells the transports apart by the url_path header the REST handler adds
    assert b"url_path" in jar_class("http/api/rest/InferenceRequestHandler")
    assert b"url_path" not in jar_class("job/GRPCJob")


def test_the_workflow_engine_still_attaches_its_promise_after_queueing_the_job():
    # MIN_WORKFLOW_NODE_SECONDS: DagExecutor.invokeModel queues the node's job, then sets its promise
    code = jar_class("ensemble/DagExecutor")
    assert b"addRESTInferenceJob" in code and b"setResponsePromise" in code
    assert compat.MIN_WORKFLOW_NODE_SECONDS > 0


def test_ts_add_time_refuses_units_other_than_ms_and_s():
    from ts.metrics.metric_cache_errors import MetricsCacheValueError

    metrics = make_context("compat", {"handler": {}}).metrics
    with pytest.raises(MetricsCacheValueError):
        metrics.add_time("StepsPerSecondTest", 1.0, unit="StepsPerSecond")
    compat.add_metric(metrics, "StepsPerSecondTest", 1.0, "StepsPerSecond")  # the gauge path works


def test_a_metric_unit_the_frontend_would_drop_is_refused():
    assert compat.metric_unit_is_valid("StepsPerSecond") and not compat.metric_unit_is_valid("steps/s")
    with pytest.raises(ValueError, match="dropped"):
        compat.add_metric(object(), "x", 1.0, "steps/s")


def test_pillow_refuses_uint16_fromarray_with_mode_i16():
    array = np.array([[0, 1], [65535, 256]], dtype=np.uint16)
    with pytest.raises((TypeError, ValueError)):
        Image.fromarray(array, mode="I;16")
    image = compat.uint16_image(array)
    assert image.mode == "I;16" and np.array_equal(np.asarray(image), array)


def test_transformers_clip_features_are_a_model_output_not_a_tensor():
    import torch
    from transformers import CLIPModel

    root = ensure_tiny_weights("clip")
    model = CLIPModel.from_pretrained(root / "clip").eval()
    size = model.config.vision_config.image_size
    with torch.inference_mode():
        features = model.get_image_features(pixel_values=torch.zeros(1, 3, size, size))
    assert not isinstance(features, torch.Tensor)
    assert compat.pooled_features(features).shape == (1, model.config.projection_dim)


def test_torchvision_does_not_import_beside_the_cpu_torch():
    with pytest.raises(Exception):  # noqa: B017  (ImportError, or a RuntimeError from a CUDA wheel)
        import torchvision  # noqa: F401
    assert compat.torchvision_nms() is None
