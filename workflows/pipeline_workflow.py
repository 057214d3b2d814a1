"""Function nodes of the ``pipeline`` workflow (``/wfpredict/pipeline``): prepare -> analyze.

Each node is a TorchServe worker that receives a batch of requests and runs them in parallel
threads; the heavy lifting happens in the five registered models, called through the inference
API (weights resident once, queues shared). The engine drops a node's status code, so a bad
request is refused by raising: the client gets a non-2xx whose body carries the JSON error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from handlers.common import InputError, ServerError, read_payload
from handlers.common.compat import MIN_WORKFLOW_NODE_SECONDS
from handlers.model_settings import PipelineSettings
from handlers.settings import read_handler_settings
from workflows.connect import pipeline_caller
from workflows.stages import PipelineRequest, Stages, generate, parse_request
from workflows.stages import analyze as analyze_stages

logger = logging.getLogger(__name__)

_POOL = ThreadPoolExecutor(max_workers=32)


@functools.cache
def _settings() -> PipelineSettings:
    # scripts/archive.sh puts the rendered models/pipeline/model-config.yaml beside this file in the
    # .war: the nodes enforce the same limits as the `pipeline` model, from the same file
    return read_handler_settings(PipelineSettings, Path(__file__).with_name("model-config.yaml"))


def _batch(data: list[dict[str, Any]] | None, run_one: Callable[[int, dict[str, Any]], str]) -> list[str] | None:
    if data is None:  # the engine calls every function node once with no data when it loads
        return None
    started = time.monotonic()
    try:
        results = list(_POOL.map(lambda idx, row: _guarded(run_one, idx, row), range(len(data)), data))
        failures = [r for r in results if not isinstance(r, str)]
        if failures:
            # the only way to refuse through the engine: fail the node; the message is the JSON error
            raise RuntimeError(json.dumps(failures[0].body()))
        return [r for r in results if isinstance(r, str)]
    finally:
        time.sleep(max(0.0, MIN_WORKFLOW_NODE_SECONDS - (time.monotonic() - started)))


def _guarded(
    run_one: Callable[[int, dict[str, Any]], str], idx: int, row: dict[str, Any]
) -> str | InputError | ServerError:
    try:
        return run_one(idx, row)
    except (InputError, ServerError) as error:
        return error
    except Exception as error:  # a bug must still answer, not hang the workflow
        logger.exception("pipeline node failed")
        return ServerError(f"pipeline: {type(error).__name__}: {error}")


def prepare(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    """Validate the request (before any model runs) and generate the image when there is a prompt."""
    settings = _settings()
    caller = pipeline_caller(settings)

    def run_one(idx: int, row: dict[str, Any]) -> str:
        request = parse_request(read_payload(row), settings)
        stage = Stages(caller, settings)
        image, generated = generate(request, stage)
        # The engine gives every node job an id of its own and never shows a node the id the frontend
        # gave the client's request: the answer carries the id of this workflow request's first job.
        return json.dumps(
            {
                "request_id": context.get_request_id(idx),
                "request": dataclasses.asdict(request),
                "image": image,
                "generated": generated,
                "timings": stage.timings,
            }
        )

    return _batch(data, run_one)


def analyze(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    """clip, sam and the priors on the prepared image, then clip on each region; the final response."""
    settings = _settings()
    caller = pipeline_caller(settings)

    def run_one(idx: int, row: dict[str, Any]) -> str:
        prepared = read_payload(row)
        request = PipelineRequest(**prepared["request"])
        stage = Stages(caller, settings)
        stage.timings.update(prepared.get("timings") or {})
        response = analyze_stages(request, prepared["image"], prepared["generated"], stage)
        return json.dumps({"request_id": prepared["request_id"], **response})

    return _batch(data, run_one)
