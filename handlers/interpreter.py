"""``interpret``: a picture -> its priors -> new images generated from them, ranked by CLIP.

A light model like ``pipeline`` (no weights): it runs the stage functions of workflows/interpret.py,
which call ``caption``, ``depth``, ``pose``, ``sd`` (with ``control``) and ``clip`` through the
inference API, so interpreter traffic shares each model's batching queue and workers and no second
copy of any weights is loaded. Over REST and gRPC ``Predictions``; with ``"stream": true`` it sends
``{"stage", "result"}`` for the caption, each prior and the scored samples, then the response.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from handlers.common import InputError, ServerError
from handlers.common.base import Batch, BatchHandler, Result
from handlers.model_settings import InterpretSettings
from workflows.connect import pipeline_caller
from workflows.interpret import InterpretRequest, parse_request, run_interpret

logger = logging.getLogger(__name__)


class Interpreter(BatchHandler):
    model_label = "interpret"
    settings: InterpretSettings

    def load(self, context: Any) -> None:
        # the pipeline's caller: this server's inference API, or the models' URLs under KServe
        self.call = pipeline_caller(self.settings)
        # one thread per request of a batch (TorchServe's batch size): each mostly waits on the models
        self.requests_pool = ThreadPoolExecutor(max_workers=int(context.system_properties["batch_size"]))

    def parse(self, payload: dict[str, Any]) -> InterpretRequest:
        return parse_request(payload, self.settings)

    def infer(self, requests: list[InterpretRequest], batch: Batch) -> list[Result]:
        futures = [
            self.requests_pool.submit(self._run, request, batch, position) for position, request in enumerate(requests)
        ]
        return [future.result() for future in futures]

    def _run(self, request: InterpretRequest, batch: Batch, position: int) -> Result:
        def send_event(stage: str, result: Any) -> None:
            batch.send(position, {"stage": stage, "result": result})

        try:
            return run_interpret(request, self.call, self.settings, send_event if request.stream else None)
        except (InputError, ServerError) as error:
            return error
        except Exception as exc:  # answered here: re-running a batch of whole interpretations one by one would not help
            logger.exception("interpret failed")
            return self.server_error(exc)
