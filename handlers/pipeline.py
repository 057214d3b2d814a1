"""``pipeline``: the workflow's stages served as a model, with the three things the engine lacks.

TorchServe 0.12's workflow engine drops a node's status code, has no gRPC, and forwards only the
first chunk of a stream. This light model (no weights) runs the same stage functions and answers
a bad request with a real 4xx, works over gRPC ``Predictions``, and with ``"stream": true`` sends
each stage's result as it finishes. The five models are called through the inference API, so
pipeline traffic shares their batching queues and workers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from handlers.common import InputError, ServerError
from handlers.common.base import Batch, BatchHandler, Result
from handlers.model_settings import PipelineSettings
from workflows.connect import pipeline_caller
from workflows.stages import PipelineRequest, parse_request, run_pipeline


class Pipeline(BatchHandler):
    model_label = "pipeline"
    settings: PipelineSettings

    def load(self, context: Any) -> None:
        self.call = pipeline_caller(self.settings)
        # one thread per request of a batch (TorchServe's batch size): each mostly waits on the models
        self.requests_pool = ThreadPoolExecutor(max_workers=int(context.system_properties["batch_size"]))

    def parse(self, payload: dict[str, Any]) -> PipelineRequest:
        return parse_request(payload, self.settings)

    def infer(self, requests: list[PipelineRequest], batch: Batch) -> list[Result]:
        futures = [
            self.requests_pool.submit(self._run, request, batch, position) for position, request in enumerate(requests)
        ]
        return [future.result() for future in futures]

    def _run(self, request: PipelineRequest, batch: Batch, position: int) -> Result:
        def send_stage(name: str, result: dict[str, Any]) -> None:
            batch.send(position, {"stage": name, "result": result})

        try:
            return run_pipeline(request, self.call, self.settings, send_stage if request.stream else None)
        except (InputError, ServerError) as error:
            return error
