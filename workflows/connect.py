"""How pipeline workers find the server they run in: its addresses and its key file.

TorchServe workers inherit the frontend's environment: ``scripts/serve.sh`` (and the tests) export
``TS_CONFIG_FILE`` and ``TS_KEY_FILE``, so the pipeline calls the same server on whatever ports it
was configured with. A model-config.yaml ``handler:`` section may name them instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from client import Client
from handlers.common import ImageLimits

from .stages import ModelCaller, PipelineSettings, client_caller


def read_properties(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def model_client(config: Mapping[str, Any]) -> Client:
    properties: dict[str, str] = {}
    config_file = os.environ.get("TS_CONFIG_FILE") or config.get("ts_config")
    if config_file and Path(config_file).is_file():
        properties = read_properties(Path(config_file))
    inference = config.get("inference_address") or properties.get("inference_address", "http://127.0.0.1:8080")
    management = config.get("management_address") or properties.get("management_address", "http://127.0.0.1:8081")
    key_file = os.environ.get("TS_KEY_FILE") or config.get("key_file") or "key_file.json"
    return Client(url=inference, management_url=management, key_file=key_file)


def pipeline_settings(config: Mapping[str, Any]) -> PipelineSettings:
    limits = dict(config.get("limits") or {})
    defaults = PipelineSettings()
    return PipelineSettings(
        timeouts={**defaults.timeouts, **(config.get("stage_timeouts") or {})},
        max_texts=int(limits.get("max_texts", defaults.max_texts)),
        max_rois=int(limits.get("max_rois", defaults.max_rois)),
        image_limits=ImageLimits.from_config(limits),
    )


def pipeline_caller(config: Mapping[str, Any]) -> ModelCaller:
    return client_caller(model_client(config))
