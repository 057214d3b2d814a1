"""KServe's request envelopes, opened and sealed where the handlers parse requests.

KServe starts TorchServe with ``TS_SERVICE_ENVELOPE=kserve`` (an InferenceService's protocolVersion
v1: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out) or ``kservev2`` (v2, the Open
Inference Protocol: ``{"inputs": [{"name", "shape", "datatype", "data"}]}`` in, ``{"outputs": [...]}``
out). TorchServe 0.12's own envelopes (``ts/torch_handler/request_envelope/kserve.py`` and
``kservev2.py``) open only the first request of a batch and answer with one response for the whole
batch, so as soon as two requests share a batch TorchServe answers every one of them 503 ``number of
batch response mismatched``; a body not in the protocol is a 503 ``Prediction failed``; and a
prediction comes back as a JSON string inside the JSON (tests/kserve/test_envelopes.py shows all three).

So the handlers open the envelopes themselves: :func:`take_over_torchserve_envelopes` (run when a
handler loads) makes those two envelope classes hand every request of the batch to a
:class:`~handlers.common.base.BatchHandler` unopened, noting the deployment's protocol on the
context; :class:`Envelopes` opens each request in that protocol (a malformed envelope is that
request's own 4xx, naming the field) and seals each answer in it. Every request keeps its own status
and its place in the batch, so batching works under KServe as it does on /predictions.

One request is one instance (v1) or one input (v2): TorchServe batches requests, not instances,
and gives each its own status; send several requests rather than several instances in one. A v1
instance is the model's JSON request, or a base64 image string (``{"image": ...}``); a v2 input is
``datatype: BYTES``, ``shape: [1]``, and ``data: [<the model's JSON request as text, or a base64
image>]``, answered by one BYTES output of the same name holding the JSON response as text (the
layout TorchServe's own kservev2 envelope uses). Streaming is refused: both protocols answer once.

:func:`request_for` and :func:`answer_from` are the calling side, for the pipeline's stages
(workflows/connect.py): the same protocol, written and read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import InputError
from .payload import json_type, read_payload, reject_unknown

V1 = "kserve"  # TS_SERVICE_ENVELOPE for KServe's protocolVersion v1
V2 = "kservev2"  # ... and for v2 (the Open Inference Protocol)
PROTOCOLS = (V1, V2)
# where the taken-over envelope notes the deployment's protocol for the handler
CONTEXT_KEY = "kserve_protocol"
V2_INPUT_NAME = "request"  # the one input (and output) the calling side sends


def take_over_torchserve_envelopes() -> None:
    """Make TorchServe's kserve and kservev2 envelopes pass each batch to our handlers unopened.

    TorchServe 0.12 wraps a handler's ``handle`` in the envelope named by ``service_envelope``
    (``ts.model_loader``) before the handler's ``initialize`` runs, and keeps the envelope's bound
    ``handle``; that calls ``self.parse_input`` and ``self.format_output`` on every batch, so
    replacing those two on the envelope classes reaches it. An envelope around anything but a
    BatchHandler keeps TorchServe's behaviour.
    """
    from ts.torch_handler.request_envelope.kserve import KServeEnvelope
    from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

    for envelope_class, protocol in ((KServeEnvelope, V1), (KServev2Envelope, V2)):
        if getattr(envelope_class.parse_input, "passes_batches_through", False):
            continue
        parse_input, format_output = envelope_class.parse_input, envelope_class.format_output

        def passed_input(self: Any, data: Any, _protocol: str = protocol, _original: Any = parse_input) -> Any:
            if not _wraps_batch_handler(self):
                return _original(self, data)
            setattr(self.context, CONTEXT_KEY, _protocol)
            return data

        def passed_output(self: Any, data: Any, _original: Any = format_output) -> Any:
            return data if _wraps_batch_handler(self) else _original(self, data)

        passed_input.passes_batches_through = True  # type: ignore[attr-defined]
        envelope_class.parse_input = passed_input
        envelope_class.format_output = passed_output


def _wraps_batch_handler(envelope: Any) -> bool:
    from .base import BatchHandler

    return isinstance(getattr(envelope._handle_fn, "__self__", None), BatchHandler)


class Envelopes:
    """One batch's envelopes in the deployment's protocol (none: TorchServe's own /predictions API)."""

    def __init__(self, context: Any):
        self.context = context
        self.protocol: str | None = getattr(context, CONTEXT_KEY, None)
        self._v2: dict[int, tuple[str | None, str]] = {}  # request index -> (its id, its input's name)

    def open(self, idx: int, row: Mapping[str, Any]) -> dict[str, Any]:
        """Request ``idx``'s payload, the model's own request; raise InputError naming the field."""
        # TorchServe routes KServe's :explain (v1) and /explain (v2) to the handler too, marked so
        if self.context.get_request_header(idx, "explain") == "True":
            raise InputError(
                "explain",
                "these models give no explanations: call :predict (v1) or /infer (v2)",
                code=404,
                kind="NotFound",
            )
        body = read_payload(row)
        if self.protocol is None:
            return body
        payload = self._open_v1(body) if self.protocol == V1 else self._open_v2(idx, body)
        if payload.get("stream"):
            raise InputError("stream", "is not available over KServe's protocols, which answer once")
        return payload

    def seal(self, idx: int, answer: dict[str, Any]) -> dict[str, Any]:
        """Request ``idx``'s successful answer in the protocol it came in (errors stay as they are)."""
        if self.protocol is None:
            return answer
        if self.protocol == V1:
            return {"predictions": [answer]}
        request_id, name = self._v2.get(idx, (None, V2_INPUT_NAME))
        manifest = getattr(self.context, "manifest", None) or {}
        model = manifest.get("model") or {}
        return {
            "id": request_id or self.context.get_request_id(idx),
            "model_name": model.get("modelName") or getattr(self.context, "model_name", None),
            "model_version": model.get("modelVersion"),
            "outputs": [
                {"name": name, "shape": [1], "datatype": "BYTES", "data": [json.dumps(answer, separators=(",", ":"))]}
            ],
        }

    # --- v1: {"instances": [request]} ---------------------------------------------------------
    @staticmethod
    def _open_v1(body: dict[str, Any]) -> dict[str, Any]:
        if "instances" not in body:
            raise InputError("instances", 'is required: a KServe v1 request is {"instances": [<request>]}')
        reject_unknown(body, ("instances",))
        return _instance(_only_one(body["instances"], "instances", "request"), "instances[0]")

    # --- v2: {"inputs": [{"name", "shape": [1], "datatype": "BYTES", "data": [request]}]} ---------
    def _open_v2(self, idx: int, body: dict[str, Any]) -> dict[str, Any]:
        if "inputs" not in body:
            raise InputError(
                "inputs",
                'is required: a KServe v2 request is {"inputs": [{"name", "shape": [1], '
                '"datatype": "BYTES", "data": [<request>]}]}',
            )
        reject_unknown(body, ("id", "inputs", "outputs", "parameters"))
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise InputError("id", f"must be a string, got {json_type(request_id)}")
        item = _only_one(body["inputs"], "inputs", "input")
        if not isinstance(item, dict):
            raise InputError("inputs[0]", f"must be an object, got {json_type(item)}")
        reject_unknown(item, ("name", "shape", "datatype", "data", "parameters"))
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InputError("inputs[0].name", "is required (a non-empty string)")
        if item.get("datatype") != "BYTES":
            raise InputError(
                "inputs[0].datatype", f"must be BYTES (the request as JSON text), got {item.get('datatype')!r}"
            )
        if item.get("shape") != [1]:
            raise InputError("inputs[0].shape", f"must be [1] (one request), got {item.get('shape')!r}")
        data = item.get("data")
        if not isinstance(data, list) or len(data) != 1:
            raise InputError("inputs[0].data", "must be a list holding one element, the request")
        self._v2[idx] = (request_id, name)
        element = data[0]
        if isinstance(element, str) and element.lstrip()[:1] == "{":
            try:
                return read_payload({"body": element})
            except InputError as err:  # invalid JSON text: name where it is
                raise InputError("inputs[0].data[0]", err.problem) from None
        return _instance(element, "inputs[0].data[0]")


def _only_one(items: Any, field: str, noun: str) -> Any:
    """The one element of an envelope's list: KServe's protocols allow several per request, but
    TorchServe batches requests itself, each with its own status."""
    if not isinstance(items, list):
        raise InputError(field, f"must be a list holding one {noun}, got {json_type(items)}")
    if len(items) != 1:
        raise InputError(
            field,
            f"has {len(items)} {field}; send one per request (TorchServe batches requests, each with its own status)",
        )
    return items[0]


def _instance(value: Any, field: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        return {"image": value}
    raise InputError(field, f"must be the model's JSON request or a base64 image string, got {json_type(value)}")


# --- the calling side ----------------------------------------------------------------------------


def request_for(protocol: str | None, model: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The inference path and body that send ``payload`` to ``model`` in ``protocol``."""
    if protocol == V1:
        return f"/v1/models/{model}:predict", {"instances": [payload]}
    if protocol == V2:
        return f"/v2/models/{model}/infer", {
            "inputs": [
                {
                    "name": V2_INPUT_NAME,
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [json.dumps(payload, separators=(",", ":"))],
                }
            ]
        }
    return f"/predictions/{model}", payload


def answer_from(protocol: str | None, body: Any) -> dict[str, Any]:
    """The model's own response inside a protocol's answer; ValueError when it is not one."""
    try:
        if protocol == V1:
            answer = body["predictions"][0]
        elif protocol == V2:
            answer = json.loads(body["outputs"][0]["data"][0])
        else:
            answer = body
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"not a KServe {protocol} answer: {type(exc).__name__}: {exc}") from None
    if not isinstance(answer, dict):
        raise ValueError(
            f"expected a JSON object inside the {protocol or 'TorchServe'} answer, got {json_type(answer)}"
        )
    return answer
