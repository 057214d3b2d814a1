"""Function nodes of the ``pipeline`` workflow (``/wfpredict/pipeline``): prepare -> analyze.

Each node is a TorchServe worker that receives a batch of requests and runs them in parallel
threads; the heavy lifting happens in the five registered models, called through the inference
API (weights resident once, queues shared). The engine drops a node's status code, so a bad
request is refused by raising: the client gets a non-2xx whose body carries the JSON error.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# in the .war, handlers/common, workflows and client travel as one zip (scripts/archive.sh)
_PACKAGES = Path(__file__).with_name("pipeline_packages.zip")
if _PACKAGES.is_file() and str(_PACKAGES) not in sys.path:
    sys.path.insert(0, str(_PACKAGES))

from handlers.common import InputError, ServerError, read_payload
from workflows.connect import pipeline_caller, pipeline_settings
from workflows.stages import PipelineRequest, Stages, analyze as analyze_stages, generate, parse_request

logger = logging.getLogger(__name__)

# the workflow archive carries no model-config.yaml for function nodes: defaults plus environment
_CONFIG: dict[str, Any] = {}
_POOL = ThreadPoolExecutor(max_workers=32)


# TorchServe 0.12's DagExecutor.invokeModel queues a node's job (ApiUtils.addRESTInferenceJob) and only
# THEN attaches the promise it waits on (RestJob.setResponsePromise). A node that answers in between
# has its answer dropped (RestJob.response: no channel, no promise yet) and the request waits out the
# node's timeout-ms (25 minutes). Under CPU load the engine thread can stall for milliseconds between
# those two calls while a fast node answers (prepare for an image-in request takes ~3 ms): seen as
# ~2% of /wfpredict requests never answered under tests/robustness load. A node therefore never
# answers sooner than this after it received its batch.
MIN_NODE_SECONDS = 0.25


def _batch(data: list[dict[str, Any]] | None, run_one) -> list[str] | None:
    if data is None:  # the engine calls every function node once with no data when it loads
        return None
    started = time.monotonic()
    try:
        results = list(_POOL.map(lambda row: _guarded(run_one, row), data))
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            # the only way to refuse through the engine: fail the node; the message is the JSON error
            raise RuntimeError(json.dumps(failures[0].body()))
        return results
    finally:
        time.sleep(max(0.0, MIN_NODE_SECONDS - (time.monotonic() - started)))


def _guarded(run_one, row: dict[str, Any]):
    try:
        return run_one(row)
    except (InputError, ServerError) as error:
        return error
    except Exception as error:  # a bug must still answer, not hang the workflow
        logger.exception("pipeline node failed")
        return ServerError(f"pipeline: {type(error).__name__}: {error}")


def prepare(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    """Validate the request (before any model runs) and generate the image when there is a prompt."""
    settings = pipeline_settings(_CONFIG)
    caller = pipeline_caller(_CONFIG)

    def run_one(row: dict[str, Any]) -> str:
        request = parse_request(read_payload(row), settings)
        stage = Stages(caller, settings)
        image, generated = generate(request, stage)
        return json.dumps({"request": dataclasses.asdict(request), "image": image, "generated": generated,
                           "timings": stage.timings})

    return _batch(data, run_one)


def analyze(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    """clip, sam and the priors on the prepared image, then clip on each region; the final response."""
    settings = pipeline_settings(_CONFIG)
    caller = pipeline_caller(_CONFIG)

    def run_one(row: dict[str, Any]) -> str:
        prepared = read_payload(row)
        request = PipelineRequest(**prepared["request"])
        stage = Stages(caller, settings)
        stage.timings.update(prepared.get("timings") or {})
        return json.dumps(analyze_stages(request, prepared["image"], prepared["generated"], stage))

    return _batch(data, run_one)
