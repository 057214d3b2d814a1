"""How the light models find the server they run in (its addresses and key file).

TorchServe workers inherit the frontend's environment: ``scripts/serve.sh`` (and the tests) export
``TS_CONFIG_FILE`` and ``TS_KEY_FILE``, so the pipeline calls the same server on whatever ports it
was configured with. The pipeline's model-config.yaml may name other addresses instead.

Under KServe (scripts/kserve.sh) each model is its own InferenceService: ``MODEL_URLS`` (a JSON
object, model -> cluster URL, in the pipeline's InferenceService) says where each model is, and the
models are called in the protocol this deployment speaks, the ``TS_SERVICE_ENVELOPE`` KServe sets
(handlers/common/envelopes.py). The stage code is the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client import ApiError, Client
from handlers.common.envelopes import answer_from, request_for
from handlers.model_settings import CallerSettings
from handlers.settings import read_properties

from .stages import ModelCaller, client_caller


def model_client(settings: CallerSettings) -> Client:
    properties: dict[str, str] = {}
    config_file = os.environ.get("TS_CONFIG_FILE")
    if config_file and Path(config_file).is_file():
        properties = read_properties(Path(config_file))
    inference = settings.inference_address or properties.get("inference_address") or "http://127.0.0.1:8080"
    management = settings.management_address or properties.get("management_address") or "http://127.0.0.1:8081"
    key_file = os.environ.get("TS_KEY_FILE") or settings.key_file or "key_file.json"
    return Client(url=inference, management_url=management, key_file=key_file)


class EnvelopedModels:
    """:meth:`predict` as :class:`client.Client` offers it, to models at their own URLs in a KServe protocol."""

    def __init__(self, default: Client, urls: Mapping[str, str], protocol: str | None):
        self.default = default
        self.protocol = protocol
        # TorchServe's token is off inside KServe's pods (scripts/kserve_manifests.py): no key file
        self.clients = {model: Client(url=url, management_url=url, key_file=os.devnull) for model, url in urls.items()}

    def predict(self, model: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        path, enveloped = request_for(self.protocol, model, body)
        answer = self.clients.get(model, self.default).call(
            "inference", "POST", path, json=enveloped, **({"timeout": timeout} if timeout else {})
        )
        try:
            return answer_from(self.protocol, answer)
        except ValueError as exc:  # a 2xx that is not the protocol's answer: the model's side failed
            raise ApiError(502, {"message": f"{model}: {exc}"}, path) from None


def pipeline_caller(settings: CallerSettings) -> ModelCaller:
    client = model_client(settings)
    urls = json.loads(os.environ.get("MODEL_URLS") or "{}")
    protocol = os.environ.get("TS_SERVICE_ENVELOPE") or None
    if urls or protocol:
        return client_caller(EnvelopedModels(client, urls, protocol))
    return client_caller(client)
