"""Where and how a handler runs: device, dtype, its model-config.yaml section, its weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def select_device(context: Any) -> torch.device:
    """The GPU TorchServe assigned to this worker, else the CPU."""
    properties = getattr(context, "system_properties", None) or {}
    gpu_id = properties.get("gpu_id")
    if torch.cuda.is_available() and gpu_id is not None:
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


def select_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """fp16 on CUDA (half the memory, tensor cores), fp32 on CPU where fp16 is slow; overridable."""
    if requested:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[requested]
    return torch.float16 if device.type == "cuda" else torch.float32


def handler_config(context: Any) -> dict[str, Any]:
    """The ``handler:`` section of the model's model-config.yaml."""
    yaml_config = getattr(context, "model_yaml_config", None) or {}
    return dict(yaml_config.get("handler") or {})


def model_dir(context: Any) -> Path:
    properties = getattr(context, "system_properties", None) or {}
    return Path(properties.get("model_dir") or ".")


def weights_dir(context: Any, key: str = "weights_dir") -> Path:
    """A weights directory named in model-config.yaml; relative paths are taken from the archive.

    ``scripts/archive.sh`` writes the absolute path of ``model_store/weights/<profile>/<model>``
    here, so the same handler loads tiny, arch or pretrained weights without knowing which.
    """
    configured = handler_config(context).get(key)
    if not configured:
        raise RuntimeError(f"model-config.yaml has no handler.{key}: archive the model with scripts/archive.sh")
    path = Path(os.path.expandvars(str(configured)))
    if not path.is_absolute():
        path = model_dir(context) / path
    if not path.is_dir():
        raise RuntimeError(f"weights not found at {path}: run scripts/build_models.sh --profile <profile> first")
    return path


def configure_threads(threads: int | None) -> None:
    """Intra-op threads per worker; several workers each using every core only thrash."""
    if threads:
        torch.set_num_threads(threads)
