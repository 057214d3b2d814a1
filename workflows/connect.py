"""How the pipeline finds the server it runs in (its addresses and key file) and its settings.

TorchServe workers inherit the frontend's environment: ``scripts/serve.sh`` (and the tests) export
``TS_CONFIG_FILE`` and ``TS_KEY_FILE``, so the pipeline calls the same server on whatever ports it
was configured with. The pipeline's model-config.yaml may name other addresses instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from client import Client
from handlers.common import load_settings

from .stages import ModelCaller, PipelineSettings, client_caller


def read_properties(path: Path) -> dict[str, str]:
    """A Java properties file (TorchServe's config.properties) as a dict; the last value of a key wins."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def load_pipeline_settings(model_config: Path) -> PipelineSettings:
    """The ``handler:`` section of a rendered models/pipeline/model-config.yaml (the workflow's nodes
    read the copy inside the .war; the model's worker gets the same section from TorchServe)."""
    section = (yaml.safe_load(model_config.read_text()) or {}).get("handler") or {}
    return load_settings(PipelineSettings, section)


def model_client(settings: PipelineSettings) -> Client:
    properties: dict[str, str] = {}
    config_file = os.environ.get("TS_CONFIG_FILE")
    if config_file and Path(config_file).is_file():
        properties = read_properties(Path(config_file))
    inference = settings.inference_address or properties.get("inference_address") or "http://127.0.0.1:8080"
    management = settings.management_address or properties.get("management_address") or "http://127.0.0.1:8081"
    key_file = os.environ.get("TS_KEY_FILE") or settings.key_file or "key_file.json"
    return Client(url=inference, management_url=management, key_file=key_file)


def pipeline_caller(settings: PipelineSettings) -> ModelCaller:
    return client_caller(model_client(settings))
