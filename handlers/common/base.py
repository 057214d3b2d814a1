"""The shape every handler shares: parse each request, run the model once on the batch, encode.

A request that fails validation gets its own 4xx (``context.set_response_status`` with its index)
and never reaches the model; the rest of the batch runs as one forward pass. If that forward pass
raises, the batch is retried one request at a time, so an unexpected failure costs one request a
5xx instead of failing every request that happened to share its batch.
"""
from __future__ import annotations

import abc
import json
import logging
import time
from typing import Any

from .errors import InputError, error_body
from .images import ImageLimits
from .payload import read_payload
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


class BatchHandler(abc.ABC):
    """Subclass per model: implement :meth:`load`, :meth:`parse` and :meth:`infer`."""

    model_label = "model"

    def __init__(self) -> None:
        self.initialized = False
        self.context: Any = None
        self.config: dict[str, Any] = {}
        self.limits: dict[str, Any] = {}
        self.batch_indices: list[int] = []

    # --- what a model implements -------------------------------------------------------------
    @abc.abstractmethod
    def load(self, context: Any) -> None:
        """Load weights from :func:`handlers.common.runtime.weights_dir` onto ``self.device``."""

    @abc.abstractmethod
    def parse(self, payload: dict[str, Any]) -> Any:
        """Validate one request; raise :class:`InputError` naming the field."""

    @abc.abstractmethod
    def infer(self, requests: list[Any]) -> list[Result]:
        """Run the model once for all parsed requests; one result (or error) per request, in order."""

    # --- TorchServe entry points -------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        self.context = context
        self.config = handler_config(context)
        self.limits = dict(self.config.get("limits") or {})
        self.image_limits = ImageLimits.from_config(self.limits)
        self.device = select_device(context)
        self.dtype = select_dtype(self.device, self.config)
        configure_threads(self.config)
        started = time.perf_counter()
        self.load(context)
        logger.info("%s loaded on %s (%s) in %.1fs", self.model_label, self.device, self.dtype,
                    time.perf_counter() - started)
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        self.context = context
        started = time.perf_counter()
        results: list[Result | None] = [None] * len(data)
        parsed: list[tuple[int, Any]] = []
        for idx, row in enumerate(data):
            try:
                parsed.append((idx, self.parse(read_payload(row))))
            except InputError as err:
                results[idx] = err
        if parsed:
            # the batch index of each parsed request, for handlers that answer per request (streams)
            self.batch_indices = [idx for idx, _ in parsed]
            outputs = self._infer_isolating_failures([request for _, request in parsed])
            for (idx, _), output in zip(parsed, outputs):
                results[idx] = output
        responses = [self._respond(context, idx, result, len(data)) for idx, result in enumerate(results)]
        self._record_batch(context, len(data), len(parsed), time.perf_counter() - started)
        return responses

    # --- helpers for subclasses ----------------------------------------------------------------
    def limit(self, name: str, default: int | float) -> int | float:
        return self.limits.get(name, default)

    def add_metric(self, name: str, value: float, unit: str = "count") -> None:
        """A custom metric on the metrics port (model_metrics_auto_detect=true): counters for
        ``count``, gauges otherwise (``ms``, ``s``, ``StepsPerSecond``). A unit is word characters
        only: the frontend's metric-line parser drops a line whose unit has ``/`` (``steps/s``)."""
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        try:
            if unit == "count":
                metrics.add_counter(name, value)
            elif unit in ("ms", "s"):
                metrics.add_time(name, value, unit=unit)
            else:  # add_time refuses any unit but ms and s
                from ts.metrics.metric_type_enum import MetricTypes

                metrics.add_metric(name, value, unit, metric_type=MetricTypes.GAUGE)
        except Exception:  # a metrics hiccup must never fail an inference
            logger.debug("metric %s not recorded", name, exc_info=True)

    # --- internals -----------------------------------------------------------------------------
    def _infer_isolating_failures(self, requests: list[Any]) -> list[Result]:
        try:
            outputs = self.infer(requests)
            if len(outputs) != len(requests):
                raise RuntimeError(f"infer returned {len(outputs)} results for {len(requests)} requests")
            return outputs
        except Exception as exc:
            if len(requests) == 1:
                logger.exception("%s inference failed", self.model_label)
                return [ServerError(f"{self.model_label} inference failed: {type(exc).__name__}: {exc}")]
            logger.exception("%s batch of %d failed; retrying one by one", self.model_label, len(requests))
            indices = self.batch_indices
            results = []
            for idx, request in zip(indices, requests):
                self.batch_indices = [idx]
                results.append(self._infer_isolating_failures([request])[0])
            self.batch_indices = indices
            return results

    def _respond(self, context: Any, idx: int, result: Result | None, batch_size: int) -> str:
        if isinstance(result, (InputError, ServerError)):
            body = result.body()
            context.set_response_status(result.code, str(result), idx)
        else:
            body = result or {}
        context.set_response_content_type(idx, "application/json")
        context.set_response_header(idx, BATCH_SIZE_HEADER, str(batch_size))
        if _is_grpc(context, idx) and "ts_stream_next" not in context.get_response_headers(idx):
            # TorchServe 0.12's gRPC StreamPredictions dereferences this header on every final
            # response: without it a refusal sent before any chunk (or a model that does not
            # stream) kills the worker. Unary gRPC ignores it; on REST "false" with no earlier
            # chunk would drop the HTTP headers, so REST is left alone.
            context.set_response_header(idx, "ts_stream_next", "false")
        return json.dumps({"request_id": context.get_request_id(idx), **body}, separators=(",", ":"))

    def _record_batch(self, context: Any, size: int, valid: int, seconds: float) -> None:
        self.add_metric("BatchSize", size)
        self.add_metric("RejectedRequests", size - valid)
        self.add_metric("HandlerLatency", seconds * 1000.0, unit="ms")


def _is_grpc(context: Any, idx: int) -> bool:
    # the frontend forwards HTTP headers (url_path, Host, ...) with REST requests only
    headers = context.get_all_request_header(idx) or {}
    return "url_path" not in headers and "Host" not in headers
