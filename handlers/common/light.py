"""What a light model's handler is: ``pipeline`` and ``interpret`` hold no weights; each request runs
stage functions (workflows/) that call the other models through the inference API.

A subclass names its two stage functions, :attr:`parse_request` and :attr:`run_request`. Not
exported from ``handlers.common``: it imports workflows/, which imports ``handlers.common``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from handlers.common.base import Batch, BatchHandler, Result, ServerError
from handlers.common.errors import InputError
from handlers.model_settings import CallerSettings
from workflows.connect import pipeline_caller
from workflows.stages import ModelCaller, StageCallback

logger = logging.getLogger(__name__)


class LightModelHandler(BatchHandler):
    settings: CallerSettings
    # workflows' parse_request(payload, settings) and run_*(request, call, settings, on_stage)
    parse_request: Callable[[dict[str, Any], Any], Any]
    run_request: Callable[[Any, ModelCaller, Any, StageCallback | None], dict[str, Any]]

    def load(self, context: Any) -> None:
        # this server's inference API, or the models' URLs under KServe
        self.call = pipeline_caller(self.settings)
        # one thread per request of a batch (TorchServe's batch size): each mostly waits on the models
        self.requests_pool = ThreadPoolExecutor(max_workers=int(context.system_properties["batch_size"]))

    def parse(self, payload: dict[str, Any]) -> Any:
        return type(self).parse_request(payload, self.settings)

    def infer(self, requests: list[Any], batch: Batch) -> list[Result]:
        futures = [
            self.requests_pool.submit(self._run, request, batch, position) for position, request in enumerate(requests)
        ]
        return [future.result() for future in futures]

    def _run(self, request: Any, batch: Batch, position: int) -> Result:
        def send_stage(stage: str, result: Any) -> None:
            batch.send(position, {"stage": stage, "result": result})

        try:
            return type(self).run_request(request, self.call, self.settings, send_stage if request.stream else None)
        except (InputError, ServerError) as error:
            return error
        except Exception as exc:  # answered here: re-running a batch of whole runs one by one would not help
            logger.exception("%s failed", self.model_label)
            return self.server_error(exc)
