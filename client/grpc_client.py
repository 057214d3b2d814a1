"""gRPC transport for image-interpreter: TorchServe's InferenceAPIsService and ManagementAPIsService.

The endpoint methods (generate, concepts, segment, depth, pose, pipeline) are the REST client's,
inherited from :class:`client.rest.BaseClient`; this module only moves bytes. The stubs are
generated from the installed TorchServe's protos by ``scripts/gen_grpc_stubs.sh`` (``make setup``).

- Tokens: the ``authorization: Bearer <token>`` metadata, from TorchServe's key file. A refused token
  (``PERMISSION_DENIED`` "Token Authorization failed ...") is refreshed and the call retried once,
  as the REST client does: re-read the key file and, holding the API key, rotate over REST (TorchServe
  has no gRPC token API, so ``management_url`` names the REST management address for that).
- Errors raise :class:`client.ApiError` with the HTTP status the server meant and the JSON body.
  TorchServe 0.12 sends a handler's 4xx/5xx over gRPC as status OK with the handler's
  ``{"code", "type", "message"}`` body as the prediction: that body is raised with its ``code``.
  A non-OK gRPC status (unknown model, no worker, a refused token, ...) is mapped from its code
  (``HTTP_STATUS``), or taken from a JSON error in its details when there is one.
- There is no gRPC workflow call: ``pipeline(workflow=True)`` raises NotImplementedError; use REST.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from .auth import KeyFile, is_grpc_token_refusal
from .events import JsonStream
from .rest import ApiError, BaseClient

try:
    from google.protobuf import empty_pb2

    from .stubs import inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc
except ImportError as exc:  # pragma: no cover - depends on the checkout's state
    raise ImportError(
        f"the gRPC stubs are missing or stale ({exc}): run 'make setup' or "
        "scripts/gen_grpc_stubs.sh to generate client/stubs/"
    ) from exc

# gRPC status -> the HTTP status TorchServe would have answered over REST (when the details carry
# no handler error with its own code)
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INTERNAL": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

# responses carry masks, depth maps and generated images: no client-side cap (the server has one)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class GrpcClient(BaseClient):
    """The gRPC transport: inference on ``inference_port``, management on ``management_port``."""

    transport = "gRPC"

    def __init__(
        self,
        host: str = "127.0.0.1",
        inference_port: int = 7070,
        management_port: int = 7071,
        key_file: Path | str | None = None,
        management_url: str | None = None,
        token: str | None = None,
        timeout: float = 600,
    ):
        self.host = host
        # rotating an expired token needs TorchServe's REST management API (no gRPC equivalent)
        self.management_url = (management_url or f"http://{host}:8081").rstrip("/")
        self.keys = KeyFile(key_file, self.management_url)
        self.fixed_token = token
        self.timeout = timeout
        self._inference_channel = grpc.insecure_channel(f"{host}:{inference_port}", options=CHANNEL_OPTIONS)
        self._management_channel = grpc.insecure_channel(f"{host}:{management_port}", options=CHANNEL_OPTIONS)
        self.inference = inference_pb2_grpc.InferenceAPIsServiceStub(self._inference_channel)
        self.management = management_pb2_grpc.ManagementAPIsServiceStub(self._management_channel)

    def close(self) -> None:
        self._inference_channel.close()
        self._management_channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- transport ----------------------------------------------------------------------------
    def _metadata(self, kind: str) -> tuple[str | None, list[tuple[str, str]]]:
        token = self.fixed_token or self.keys.token(kind)
        return token, [("authorization", f"Bearer {token}")] if token else []

    def _with_token_retry(self, kind: str, start: Callable[[list[tuple[str, str]]], Any]) -> Any:
        """``start(metadata)`` with the current token; on a token refusal refresh (re-read/rotate)
        and start once more. Other RpcErrors propagate."""
        for attempt in (1, 2):
            token, metadata = self._metadata(kind)
            try:
                return start(metadata)
            except grpc.RpcError as error:
                if attempt == 2 or self.fixed_token or not is_grpc_token_refusal(error):
                    raise
                self.keys.refresh(kind, token)
        raise AssertionError("unreachable")

    def call(
        self, kind: str, method: Callable[..., Any], request: Any, where: str, timeout: float | None = None
    ) -> Any:
        """A unary call, retried once after a token refusal."""
        try:
            return self._with_token_retry(
                kind, lambda metadata: method(request, metadata=metadata, timeout=timeout or self.timeout)
            )
        except grpc.RpcError as error:
            raise api_error(error, where) from None

    def call_stream(
        self, kind: str, method: Callable[..., Any], request: Any, where: str, timeout: float | None = None
    ) -> Iterator[Any]:
        """A server-streaming call; a refusal arrives with the first message, so that one is retried."""

        def start(metadata: list[tuple[str, str]]) -> tuple[Any, Any]:
            responses = method(request, metadata=metadata, timeout=timeout or self.timeout)
            return responses, next(responses, None)

        try:
            responses, first = self._with_token_retry(kind, start)
        except grpc.RpcError as error:
            raise api_error(error, where) from None
        if first is None:
            return
        try:
            yield first
            yield from responses
        except grpc.RpcError as error:
            raise api_error(error, where) from None
        finally:
            responses.cancel()  # a consumer that stops early ends the call (no-op once it is done)

    # --- inference ------------------------------------------------------------------------------
    def predict(
        self, model: str, body: dict[str, Any] | None = None, raw: bytes | None = None, timeout: float | None = None
    ) -> Any:
        request = _predictions_request(model, body, raw)
        reply = self.call("inference", self.inference.Predictions, request, f"Predictions({model})", timeout)
        return _check_and_decode(reply, f"Predictions({model})")

    def stream(self, model: str, body: dict[str, Any], timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """StreamPredictions: each intermediate response, then the final one, as JSON objects."""
        where = f"StreamPredictions({model})"
        request = _predictions_request(model, {**body, "stream": True}, None)
        events = JsonStream()  # one event per message; several in one, or one split, are fine too
        for reply in self.call_stream("inference", self.inference.StreamPredictions, request, where, timeout):
            for event in events.feed(_check(reply, where)):
                raise_in_band_error(event, where)
                yield event

    def ping(self) -> dict[str, Any]:
        reply = self.call("inference", self.inference.Ping, empty_pb2.Empty(), "Ping")
        return _json_or_text(reply.health, "status")

    # --- management -----------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        reply = self.call(
            "management", self.management.ListModels, management_pb2.ListModelsRequest(limit=1000), "ListModels"
        )
        return json.loads(reply.msg)["models"]

    def describe(self, model: str) -> dict[str, Any]:
        return self._describe(model, "")[0]

    def every_version(self, model: str) -> list[dict[str, Any]]:
        return self._describe(model, "all")

    def _describe(self, model: str, version: str) -> list[dict[str, Any]]:
        """DescribeModel: ``version`` "" is the default, "all" every version."""
        reply = self.call(
            "management",
            self.management.DescribeModel,
            management_pb2.DescribeModelRequest(model_name=model, model_version=version),
            f"DescribeModel({model}{'/' + version if version else ''})",
        )
        return json.loads(reply.msg)

    def scale(self, model: str, min_workers: int, max_workers: int | None = None) -> dict[str, Any]:
        """ScaleWorker, synchronous: returns once the workers are up (or gone)."""
        request = management_pb2.ScaleWorkerRequest(
            model_name=model,
            min_worker=min_workers,
            max_worker=max_workers if max_workers is not None else min_workers,
            synchronous=True,
        )
        reply = self.call("management", self.management.ScaleWorker, request, f"ScaleWorker({model})")
        return _json_or_text(reply.msg, "status")


def _predictions_request(model: str, body: dict[str, Any] | None, raw: bytes | None) -> Any:
    data = raw if raw is not None else json.dumps(body if body is not None else {}).encode("utf-8")
    name, _, version = model.partition("/")  # "name/version" addresses one version (client.rest.versioned)
    return inference_pb2.PredictionsRequest(model_name=name, model_version=version, input={"body": data})


def _check(reply: Any, where: str) -> bytes:
    """A response's bytes; a response that carries an error status (StreamPredictions2) raises."""
    if reply.HasField("status") and reply.status.code != 0:
        name = next((code.name for code in grpc.StatusCode if code.value[0] == reply.status.code), "UNKNOWN")
        body = _error_body(reply.status.message)
        raise ApiError(_http_status(name, body), body, where, grpc_code=name)
    return reply.prediction


def _check_and_decode(reply: Any, where: str) -> Any:
    data = _check(reply, where)
    try:
        value = json.loads(data)
    except ValueError:
        return data  # not JSON (a handler answering bytes): as the REST client gives its text
    raise_in_band_error(value, where)
    return value


def raise_in_band_error(value: Any, where: str) -> None:
    """TorchServe 0.12 answers a handler's 4xx/5xx over gRPC with status OK and the error as the
    prediction (GRPCJob.response ignores the status code): such a body is raised as the REST client
    would, with the handler's code as ``status``."""
    if (
        isinstance(value, dict)
        and isinstance(value.get("code"), int)
        and 400 <= value["code"] <= 599
        and isinstance(value.get("message"), str)
        and "type" in value
        and set(value) <= {"request_id", "code", "type", "message"}
    ):
        raise ApiError(value["code"], value, where, grpc_code="OK")


def api_error(error: grpc.RpcError, where: str) -> ApiError:
    """A failed call as :class:`ApiError`: the handler's JSON error when the details carry one."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    name = code.name if code is not None else "UNKNOWN"
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    body = _error_body(details or "")
    return ApiError(_http_status(name, body), body, where, grpc_code=name)


# TorchServe appends the Java exception's class to a status description ("Model not found: x\n
# org.pytorch.serve.archive.model.ModelNotFoundException"); it says what REST would have answered
_EXCEPTION_LINE = re.compile(r"\n?\s*((?:org\.pytorch|java)\.[\w.$]*(?:Exception|Error))\s*$")
EXCEPTION_STATUS = {
    "ModelNotFoundException": 404,
    "ModelVersionNotFoundException": 404,
    "BadRequestException": 400,
    "ConflictStatusException": 409,
    "RequestTimeoutException": 408,
    "ServiceUnavailableException": 503,
}


def _error_body(details: str) -> dict[str, Any]:
    """The first JSON object in the status details, else ``{"message", "type"?}`` from its text."""
    start = details.find("{")
    if start >= 0:
        try:
            body, _ = json.JSONDecoder().raw_decode(details[start:])
            if isinstance(body, dict) and "message" in body:
                return body
        except ValueError:
            pass
    match = _EXCEPTION_LINE.search(details)
    if match:
        return {"type": match.group(1).rsplit(".", 1)[-1], "message": details[: match.start()].strip()}
    return {"message": details.strip()}


def _http_status(grpc_name: str, body: dict[str, Any]) -> int:
    code = body.get("code")
    if isinstance(code, int) and 400 <= code <= 599:
        return code
    return EXCEPTION_STATUS.get(str(body.get("type")), HTTP_STATUS.get(grpc_name, 500))


def _json_or_text(text: str, key: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {key: text}
    return value if isinstance(value, dict) else {key: value}
