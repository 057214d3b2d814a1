"""``pipeline``: the workflow's stages served as a model, with the three things the engine lacks.

TorchServe 0.12's workflow engine drops a node's status code, has no gRPC, and forwards only the
first chunk of a stream. This light model (no weights) runs the same stage functions and answers
a bad request with a real 4xx, works over gRPC ``Predictions``, and with ``"stream": true`` sends
each stage's result as it finishes. The five models are called through the inference API, so
pipeline traffic shares their batching queues and workers.
"""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ts.handler_utils.utils import send_intermediate_predict_response

from handlers.common import BatchHandler, InputError, Result, ServerError
from workflows.connect import pipeline_caller, pipeline_settings
from workflows.stages import PipelineRequest, parse_request, run_pipeline


class Pipeline(BatchHandler):
    model_label = "pipeline"

    def load(self, context: Any) -> None:
        self.settings = pipeline_settings(self.config)
        self.call = pipeline_caller(self.config)
        # one thread per request of a batch: each mostly waits on the models it calls
        self.requests_pool = ThreadPoolExecutor(max_workers=int(context.system_properties.get("batch_size") or 16))
        self.send_lock = threading.Lock()

    def parse(self, payload: dict[str, Any]) -> PipelineRequest:
        return parse_request(payload, self.settings)

    def infer(self, requests: list[PipelineRequest]) -> list[Result]:
        futures = [self.requests_pool.submit(self._run, request, idx)
                   for request, idx in zip(requests, self.batch_indices)]
        return [future.result() for future in futures]

    def _run(self, request: PipelineRequest, idx: int) -> Result:
        on_stage = (lambda name, result: self._send_event(idx, name, result)) if request.stream else None
        try:
            return run_pipeline(request, self.call, self.settings, on_stage)
        except (InputError, ServerError) as error:
            return error

    def _send_event(self, idx: int, stage: str, result: dict[str, Any]) -> None:
        event = json.dumps({"stage": stage, "result": result}, separators=(",", ":"))
        with self.send_lock:  # one socket back to the frontend, shared by the batch's threads
            send_intermediate_predict_response({idx: event}, {idx: self.context.get_request_id(idx)},
                                               "Intermediate Prediction success", 200, self.context)
