"""Typed settings: a model's ``handler:`` section of its model-config.yaml, read once at load.

The yaml is the only place a default lives: a settings class declares each key's type and bounds
and no value, so a key missing from the yaml, a key the class does not know (a typo such as
``max_roi``) or a value of the wrong type fails when the worker loads, naming the key, instead of
being ignored or replaced by a number written somewhere in code.

This module and handlers/model_settings.py import no torch, so the studio (a web page) reads
interpret's settings with the same classes the worker does, without loading a model library.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Keys of the ``handler:`` section that scripts/archive.sh reads or writes (which handler module,
# which weights, the rendered weights path and profile): deployment, not settings.
DEPLOYMENT_KEYS = ("module", "weights", "weights_dir", "profile")


class Settings(BaseModel):
    """Frozen, closed, strict: ``steps: "25"`` or ``max_rois: 2.5`` is an error, not a coercion."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ImageLimits(Settings):
    """What every image a handler decodes must fit, checked from the header before decoding."""

    max_image_side: int = Field(gt=0)
    max_image_pixels: int = Field(gt=0)


class HandlerSettings(Settings):
    """What every handler's section has: its threads and dtype (null: the device's choice)."""

    torch_threads: int | None = Field(ge=1)
    dtype: str | None = Field(pattern="^(float32|float16|bfloat16)$")


class SettingsError(RuntimeError):
    """A settings file that does not match its settings class; the message names each key."""


SettingsT = TypeVar("SettingsT", bound=Settings)


def load_settings(cls: type[SettingsT], section: Mapping[str, Any], where: str = "handler") -> SettingsT:
    """A model-config.yaml's ``section`` (found at ``where``) as ``cls``; deployment keys are left out."""
    values = {key: value for key, value in section.items() if key not in DEPLOYMENT_KEYS}
    return validate_settings(cls, values, where, source="model-config.yaml")


def read_handler_settings(cls: type[SettingsT], model_config: Path) -> SettingsT:
    """The ``handler:`` section of the model-config.yaml file ``model_config`` as ``cls``."""
    section = (yaml.safe_load(model_config.read_text()) or {}).get("handler") or {}
    return load_settings(cls, section)


def validate_settings(cls: type[SettingsT], values: Any, where: str, source: str) -> SettingsT:
    """``values`` (read from the file ``source``, at ``where`` in it) as ``cls``; raises SettingsError
    naming ``source`` and each key that is unknown, missing or of the wrong type."""
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(_describe(where, error) for error in exc.errors())
        raise SettingsError(f"{source}: {problems}") from None


def _describe(where: str, error: Any) -> str:
    key = ".".join([part for part in (where, *(str(part) for part in error["loc"])) if part]) or "(top)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: missing (every setting is written in the yaml; there are no defaults in code)"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def read_properties(path: Path) -> dict[str, str]:
    """TorchServe's config.properties (a Java properties file) as a dict; the last value of a key wins."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values
