"""Every workaround for a library's behaviour, in one place, each naming the version it is for.

tests/unit/test_compat.py checks each behaviour against the installed library, so an upgrade that
changes it fails a test here instead of breaking a handler quietly. When one of those tests fails,
the workaround below it can go (or must change).

The client's own TorchServe workarounds (a refused token is 400 ``InvalidKeyException``, gRPC's
``PERMISSION_DENIED`` text) live in ``client/auth.py``: the client must import nothing of the server.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

# --- TorchServe 0.12 ----------------------------------------------------------------------------


def is_grpc_request(context: Any, idx: int) -> bool:
    """Whether request ``idx`` came over gRPC. TorchServe 0.12 forwards the HTTP headers
    (``url_path``, ``Host``, ...) with REST requests only; ``ts.context`` has no transport field."""
    headers = context.get_all_request_header(idx) or {}
    return "url_path" not in headers and "Host" not in headers


def mark_final_grpc_response(context: Any, idx: int) -> None:
    """TorchServe 0.12's gRPC ``StreamPredictions`` dereferences the ``ts_stream_next`` header on
    every final response: without it a refusal sent before any chunk (or a model that does not
    stream) kills the worker. Unary gRPC ignores it; on REST ``"false"`` with no earlier chunk would
    drop the HTTP headers, so only gRPC responses get it."""
    if is_grpc_request(context, idx) and "ts_stream_next" not in context.get_response_headers(idx):
        context.set_response_header(idx, "ts_stream_next", "false")


# TorchServe 0.12's DagExecutor.invokeModel queues a workflow node's job (ApiUtils.addRESTInferenceJob)
# and only THEN attaches the promise it waits on (RestJob.setResponsePromise). A node that answers in
# between has its answer dropped and the request waits out the node's timeout. Under CPU load the
# engine thread can stall for milliseconds between the two calls while a fast node answers (seen as
# ~2% of /wfpredict requests never answered under load), so a node never answers sooner than this.
MIN_WORKFLOW_NODE_SECONDS = 0.25


def metric_unit_is_valid(unit: str) -> bool:
    """TorchServe 0.12's frontend parses a metric line with a regex whose unit is ``\\w+``: a line
    whose unit has ``/`` (``steps/s``) is dropped without a word."""
    return unit.replace("_", "a").isalnum()


def add_metric(metrics: Any, name: str, value: float, unit: str) -> None:
    """A custom metric: a counter for ``count``, a timer for ``ms``/``s``, a gauge otherwise.
    ``ts.metrics``' ``add_time`` refuses any unit but ms and s (0.12), so other units go through
    ``add_metric`` with an explicit gauge type."""
    if not metric_unit_is_valid(unit):
        raise ValueError(f"metric unit {unit!r} would be dropped by TorchServe's frontend; use word characters")
    if unit == "count":
        metrics.add_counter(name, value)
    elif unit in ("ms", "s"):
        metrics.add_time(name, value, unit=unit)
    else:
        from ts.metrics.metric_type_enum import MetricTypes

        metrics.add_metric(name, value, unit, metric_type=MetricTypes.GAUGE)


# --- Pillow 12+ -----------------------------------------------------------------------------------


def uint16_image(array: np.ndarray) -> Image.Image:
    """A 16-bit grayscale image. Pillow 12 deprecated and 13 refuses ``fromarray(uint16, mode="I;16")``
    ("Invalid mode for data type"), and without a mode it makes a 32-bit ``I`` image: build it from bytes."""
    array = np.ascontiguousarray(array, dtype="<u2")
    return Image.frombuffer("I;16", (array.shape[1], array.shape[0]), array.tobytes(), "raw", "I;16", 0, 1)


# --- transformers 5 ------------------------------------------------------------------------------


def pooled_features(features: Any) -> Any:
    """transformers 5's ``CLIPModel.get_image_features``/``get_text_features`` return a model output
    (``pooler_output`` holds the projected embedding); 4.x returned the tensor itself."""
    import torch

    return features if isinstance(features, torch.Tensor) else features.pooler_output


# ViTPose's PIL image processor (transformers 5.23, VitPoseImageProcessorPil.affine_transform) guesses
# the layout of its (3, H, W) array with ``shape[0] < shape[1]``: an image 1 to 3 pixels high is taken
# for channels-last and fails ("mean must have W elements ..."), a 5xx for a legal image (found by
# tests/robustness/test_fuzz.py). Taller is safe.
VITPOSE_MIN_HEIGHT = 4


def vitpose_safe_image(image: Image.Image) -> Image.Image:
    """``image`` padded with black rows at the bottom to VITPOSE_MIN_HEIGHT: pixel coordinates (boxes,
    keypoints) are unchanged, and the boxes, inside the original image, never see the padding."""
    if image.height >= VITPOSE_MIN_HEIGHT:
        return image
    padded = Image.new(image.mode, (image.width, VITPOSE_MIN_HEIGHT))
    padded.paste(image, (0, 0))
    return padded


# --- torchvision on a CPU torch 2.13 --------------------------------------------------------------

_TORCHVISION_NMS: Any = None


def torchvision_nms() -> Any:
    """``torchvision.ops.nms`` where torchvision imports, else None. PyPI's torchvision wheels link
    CUDA and fail to import beside the CPU torch 2.13 wheel ("operator torchvision::nms does not
    exist"), so the project never requires it and falls back to its own NMS."""
    global _TORCHVISION_NMS
    if _TORCHVISION_NMS is None:
        try:
            from torchvision.ops import nms

            _TORCHVISION_NMS = nms
        except Exception:  # not installed, or a wheel that fails to load its CUDA libraries
            _TORCHVISION_NMS = False
    return _TORCHVISION_NMS or None
