"""The shape every handler shares: parse each request, run the model once on the batch, encode.

A request that fails validation gets its own 4xx (``context.set_response_status`` with its index)
and never reaches the model; the rest of the batch runs as one forward pass. If that forward pass
raises, the batch is retried one request at a time, so an unexpected failure costs one request a
5xx instead of failing every request that happened to share its batch.

A handler's settings are the class it annotates ``settings`` with (``settings: SdSettings``), read
once from its model-config.yaml; what
:meth:`BatchHandler.infer` needs of the batch (each request's index in TorchServe's batch, a way to
send a stream event) arrives as its ``batch`` argument, never as handler state.
"""

from __future__ import annotations

import abc
import json
import logging
import threading
import time
import typing
from pathlib import Path
from typing import Any

from handlers.settings import HandlerSettings, load_settings

from .compat import add_metric, mark_final_grpc_response
from .envelopes import Envelopes, take_over_torchserve_envelopes
from .errors import InputError, error_body
from .runtime import configure_threads, handler_config, select_device, select_dtype

logger = logging.getLogger(__name__)

BATCH_SIZE_HEADER = "x-batch-size"


class ServerError(Exception):
    """A request that failed on the server's side (a model crash, an upstream stage): a 5xx."""

    def __init__(self, message: str, code: int = 500, kind: str = "InternalServerError"):
        super().__init__(message)
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.kind, str(self))


Result = dict[str, Any] | InputError | ServerError


class Batch:
    """The parsed requests' place in TorchServe's batch: ``indices[i]`` is request i's index, and
    :meth:`send` streams an intermediate response (a chunk of the HTTP stream, or a gRPC
    ``StreamPredictions`` message) to request i."""

    def __init__(self, context: Any, indices: list[int]):
        self.context = context
        self.indices = list(indices)
        self._send_lock = threading.Lock()

    def subset(self, positions: list[int]) -> Batch:
        return Batch(self.context, [self.indices[p] for p in positions])

    def request_id(self, position: int) -> str:
        return self.context.get_request_id(self.indices[position])

    def send(self, position: int, event: dict[str, Any]) -> None:
        idx = self.indices[position]
        context = self.context
        if getattr(context, "cl_socket", None) is None:  # in-process (unit tests): no frontend to send to
            return
        from ts.handler_utils.utils import send_intermediate_predict_response

        context.set_response_content_type(idx, "application/json")
        with self._send_lock:  # one socket back to the frontend, shared by a batch's threads
            send_intermediate_predict_response(
                {idx: json.dumps(event, separators=(",", ":"))},
                {idx: context.get_request_id(idx)},
                "Intermediate Prediction success",
                200,
                context,
            )


class BatchHandler(abc.ABC):
    """Subclass per model: annotate :attr:`settings` with the model's settings class; implement :meth:`load`,
    :meth:`parse`, :meth:`infer`."""

    model_label = "model"
    settings: HandlerSettings

    def __init__(self) -> None:
        self.initialized = False
        self.context: Any = None

    @classmethod
    def settings_type(cls) -> type[HandlerSettings]:
        """The class the subclass annotates :attr:`settings` with: the one place it is declared."""
        return typing.get_type_hints(cls)["settings"]

    # --- what a model implements -------------------------------------------------------------
    @abc.abstractmethod
    def load(self, context: Any) -> None:
        """Load weights from :func:`handlers.common.runtime.weights_dir` onto ``self.device``."""

    @abc.abstractmethod
    def parse(self, payload: dict[str, Any]) -> Any:
        """Validate one request; raise :class:`InputError` naming the field."""

    @abc.abstractmethod
    def infer(self, requests: list[Any], batch: Batch) -> list[Result]:
        """Run the model once for all parsed requests; one result (or error) per request, in order."""

    # --- what load() uses --------------------------------------------------------------------
    def pretrained_model(self, model_class: Any, path: Path) -> Any:
        """``model_class`` from the directory ``path`` with the library's own ``from_pretrained``, in
        this worker's dtype, on its device, in eval mode."""
        return model_class.from_pretrained(path, dtype=self.dtype).to(self.device).eval()

    def pretrained(self, processor_class: Any, model_class: Any, path: Path) -> tuple[Any, Any]:
        """The processor and the model saved together in ``path`` (the model as :meth:`pretrained_model`)."""
        return processor_class.from_pretrained(path), self.pretrained_model(model_class, path)

    # --- TorchServe entry points -------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        self.context = context
        self.settings = load_settings(self.settings_type(), handler_config(context))
        self.device = select_device(context)
        self.dtype = select_dtype(self.device, self.settings.dtype)
        configure_threads(self.settings.torch_threads)
        take_over_torchserve_envelopes()  # KServe's protocols are opened per request (envelopes.py)
        started = time.perf_counter()
        self.load(context)
        logger.info(
            "%s loaded on %s (%s) in %.1fs", self.model_label, self.device, self.dtype, time.perf_counter() - started
        )
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        self.context = context
        started = time.perf_counter()
        results: list[Result | None] = [None] * len(data)
        parsed: list[tuple[int, Any]] = []
        envelopes = Envelopes(context)
        for idx, row in enumerate(data):
            try:
                parsed.append((idx, self.parse(envelopes.open(idx, row))))
            except InputError as err:
                results[idx] = err
        if parsed:
            batch = Batch(context, [idx for idx, _ in parsed])
            outputs = self.infer_isolating_failures([request for _, request in parsed], batch)
            for (idx, _), output in zip(parsed, outputs):
                results[idx] = output
        responses = [self._respond(context, idx, result, len(data), envelopes) for idx, result in enumerate(results)]
        self._record_batch(context, len(data), len(parsed), time.perf_counter() - started)
        return responses

    # --- helpers for subclasses ----------------------------------------------------------------
    def add_metric(self, name: str, value: float, unit: str = "count") -> None:
        """A custom metric on the metrics port (model_metrics_auto_detect=true): a counter for
        ``count``, a gauge otherwise (``ms``, ``s``, ``StepsPerSecond``); see compat.add_metric."""
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        try:
            add_metric(metrics, name, value, unit)
        except Exception:  # a metrics hiccup must never fail an inference
            logger.debug("metric %s not recorded", name, exc_info=True)

    def infer_isolating_failures(self, requests: list[Any], batch: Batch) -> list[Result]:
        """:meth:`infer`; if it raises for several requests, each is retried alone, so only the
        failing one gets a 5xx. A handler that splits a batch into groups calls it per group
        (:meth:`infer_in_groups`)."""
        try:
            outputs = self.infer(requests, batch)
            if len(outputs) != len(requests):
                raise RuntimeError(f"infer returned {len(outputs)} results for {len(requests)} requests")
            return outputs
        except Exception as exc:
            if len(requests) == 1:
                logger.exception("%s inference failed", self.model_label)
                return [self.server_error(exc)]
            logger.exception("%s batch of %d failed; retrying one by one", self.model_label, len(requests))
            return [
                self.infer_isolating_failures([request], batch.subset([position]))[0]
                for position, request in enumerate(requests)
            ]

    def infer_in_groups(self, requests: list[Any], batch: Batch, groups: list[list[int]]) -> list[Result]:
        """Each group (positions in ``requests``) through :meth:`infer_isolating_failures` on its own, so
        a failing group cannot fail the others; the results in request order."""
        results: list[Result] = [None] * len(requests)  # type: ignore[list-item]
        for positions in groups:
            outputs = self.infer_isolating_failures([requests[p] for p in positions], batch.subset(positions))
            for position, output in zip(positions, outputs):
                results[position] = output
        return results

    def server_error(self, exc: Exception) -> ServerError:
        """The 5xx for an exception a forward raised; out of memory is 507, so a client can retry smaller."""
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return ServerError(f"{self.model_label} ran out of memory: {exc}", code=507, kind="InsufficientStorage")
        return ServerError(f"{self.model_label} inference failed: {type(exc).__name__}: {exc}")

    # --- internals -----------------------------------------------------------------------------
    def _respond(self, context: Any, idx: int, result: Result | None, batch_size: int, envelopes: Envelopes) -> str:
        if isinstance(result, (InputError, ServerError)):
            body = result.body()
            context.set_response_status(result.code, str(result), idx)
        else:
            body = result or {}
        context.set_response_content_type(idx, "application/json")
        context.set_response_header(idx, BATCH_SIZE_HEADER, str(batch_size))
        mark_final_grpc_response(context, idx)
        answer = {"request_id": context.get_request_id(idx), **body}
        if not isinstance(result, (InputError, ServerError)):  # a refusal is answered as TorchServe answers it
            answer = envelopes.seal(idx, answer)
        return json.dumps(answer, separators=(",", ":"))

    def _record_batch(self, context: Any, size: int, valid: int, seconds: float) -> None:
        self.add_metric("BatchSize", size)
        self.add_metric("RejectedRequests", size - valid)
        self.add_metric("HandlerLatency", seconds * 1000.0, unit="ms")
