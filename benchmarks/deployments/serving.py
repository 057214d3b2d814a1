"""What every stack of the deployment comparison serves, and with which settings: one place.

* :func:`serving_plan`: per model, the batch size, batch delay, workers and torch threads every
  stack uses, read from ``models/<name>/model-config.yaml`` as scripts/archive.sh renders it
  (``batchSize``, ``maxBatchDelay``, ``minWorkers``, ``responseTimeout``, ``handler.torch_threads``);
  the benchmark's only override is the torch thread count (``--tiny-threads``, as the tiny
  deployment of benchmarks/run.py uses). A thread count the yaml leaves to torch is written out as
  the host's cores, and TorchServe's archives get the same number, so no stack runs on a default.
  The benchmark writes the plan to a JSON file and every peer server reads that file
  (``DEPLOY_PLAN``), so no stack has settings of its own.
* :class:`ModelRunner`: a model's handler class, initialised and called through a real
  ``ts.context.Context`` exactly as tests/harness.py does (``handle()`` on a batch), so each stack
  runs the same parse -> one forward per batch -> per-request status code.
* :class:`PipelineRunner`: workflows/stages.py's ``parse_request`` + ``run_pipeline`` with the
  stack's own :class:`~workflows.stages.ModelCaller` (its handles / endpoints to the models).

Runs inside each peer's virtual environment (venvs.py), with the repository on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PIPELINE = "pipeline"


def pipeline_models() -> list[str]:
    """The models the pipeline's stages call (one stage timeout each in its settings), in the
    project's registration order (scripts/served_models.py)."""
    from served_models import weighted_models

    from handlers.model_settings import PIPELINE_CALLS

    return [name for name in weighted_models() if name in PIPELINE_CALLS]


def pipeline_settings(profile: str) -> Any:
    """models/pipeline/model-config.yaml's ``handler:`` section, rendered for ``profile``, as the
    pipeline model's worker reads it."""
    from harness import model_config

    from handlers.common import load_settings
    from handlers.model_settings import PipelineSettings

    return load_settings(PipelineSettings, model_config(PIPELINE, profile)["handler"])


@dataclass(frozen=True)
class Serving:
    """How one model is served, by every stack."""

    batch_size: int
    max_batch_delay_ms: int
    workers: int
    response_timeout_s: int
    torch_threads: int | None  # None for the pipeline (no model of its own)


def serving_plan(profile: str, models: list[str], threads: int | None) -> dict[str, Any]:
    """``{"profile", "models", "serving": {name: Serving}}`` for ``models`` (plus ``pipeline`` when served)."""
    from harness import model_config

    serving = {}
    for name in models:
        config = model_config(name, profile)
        serving[name] = asdict(
            Serving(
                batch_size=int(config.get("batchSize", 1)),
                max_batch_delay_ms=int(config.get("maxBatchDelay", 100)),
                workers=int(config.get("minWorkers", 1)),
                response_timeout_s=int(config.get("responseTimeout", 120)),
                # unset in the yaml: torch's default, which is the host's cores in a TorchServe worker; peers
                # get it explicitly (Ray and BentoML workers would otherwise start with OMP_NUM_THREADS=1)
                torch_threads=(threads or config["handler"].get("torch_threads") or os.cpu_count() or 1)
                if name != PIPELINE
                else None,
            )
        )
    return {"profile": profile, "models": list(models), "serving": serving}


def write_plan(path: Path, plan: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2))
    return path


def read_plan() -> dict[str, Any]:
    """The plan the benchmark wrote for this server (``DEPLOY_PLAN``)."""
    plan = json.loads(Path(os.environ["DEPLOY_PLAN"]).read_text())
    plan["serving"] = {name: Serving(**value) for name, value in plan["serving"].items()}
    return plan


def handler_class(module_name: str) -> type:
    # the Flask peer's lookup: one BatchHandler subclass per handlers/<module>.py
    from peer_flask import handler_class as find

    return find(module_name)


class ModelRunner:
    """One model's handler, called one batch at a time (a handler is not re-entrant)."""

    def __init__(self, name: str, profile: str, serving: Serving):
        from harness import make_context, model_config

        self.name = name
        self.serving = serving
        config = model_config(name, profile)
        if serving.torch_threads:
            config["handler"]["torch_threads"] = serving.torch_threads
        self.handler = handler_class(config["handler"]["module"])()
        self.handler.initialize(make_context(name, config, batch_size=serving.batch_size))
        self.lock = threading.Lock()

    def run(self, bodies: list[Any]) -> list[tuple[int, dict[str, Any]]]:
        """``handle()`` on one batch (each body a dict or the request's raw JSON bytes): (status, json) each."""
        from harness import run_batch

        with self.lock:
            if self.serving.torch_threads:
                import torch

                # intra-op threads belong to the calling thread: set them in the one running the
                # batch, as a TorchServe worker's handler sets them in its worker (peer_flask does the same)
                torch.set_num_threads(self.serving.torch_threads)
            return run_batch(self.handler, bodies)


def load_runners(plan: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, ModelRunner]:
    import time

    runners = {}
    for name in plan["models"]:
        if name == PIPELINE:
            continue
        started = time.perf_counter()
        runners[name] = ModelRunner(name, plan["profile"], plan["serving"][name])
        log(f"{name} ({plan['profile']}) loaded in {time.perf_counter() - started:.1f}s")
    return runners


class PipelineRunner:
    """The pipeline's stage functions with a stack's own way of calling the models."""

    def __init__(self, profile: str, call: Callable[[str, dict[str, Any], float], dict[str, Any]]):
        self.settings = pipeline_settings(profile)
        self.call = call
        self.count = 0
        self.count_lock = threading.Lock()

    def run(self, payload: Any) -> tuple[int, dict[str, Any]]:
        from handlers.common import InputError, ServerError
        from workflows.stages import parse_request, run_pipeline

        with self.count_lock:
            self.count += 1
            request_id = f"{PIPELINE}-{self.count}"
        try:
            if isinstance(payload, (bytes, bytearray, str)):
                try:
                    payload = json.loads(payload)
                except ValueError:
                    raise InputError("body", "is not valid JSON") from None
            if not isinstance(payload, dict):
                raise InputError("body", "expected a JSON object")
            result = run_pipeline(parse_request(payload, self.settings), self.call, self.settings)
            return 200, {"request_id": request_id, **result}
        except (InputError, ServerError) as error:
            return error.code, error.body()


def stage_failure(status: int, body: Any, model: str) -> Exception:
    """workflows.stages.StageFailure for a model's non-200 answer."""
    from workflows.stages import StageFailure

    message = body.get("message") if isinstance(body, dict) else None
    return StageFailure(status, message or f"{model}: HTTP {status}")


# --- Triton's wire format (peer_pytriton.py and the benchmark's client) -------------------------
def v2_request(body: Any) -> dict[str, Any]:
    """A KServe v2 inference request carrying one JSON body as a BYTES tensor."""
    text = body.decode() if isinstance(body, (bytes, bytearray)) else json.dumps(body)
    return {"inputs": [{"name": "body", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}


def v2_answer(answer: dict[str, Any]) -> tuple[int, dict[str, Any], int]:
    """(status, json, batch size) from a KServe v2 inference answer of these models."""
    outputs = {output["name"]: output["data"] for output in answer["outputs"]}
    return int(outputs["status"][0]), json.loads(outputs["response"][0]), int(outputs["batch_size"][0])
