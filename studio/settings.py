"""The studio's settings: studio/studio.yaml, typed, read once at start.

The same rules as the handlers' settings (handlers/common/settings.py): frozen, closed (an unknown
key such as ``max_upload`` fails at start, naming it), strict, and no defaults in code: every key is
written in the yaml. The base class is restated here rather than imported because importing
``handlers.common`` loads torch (seconds and half a gigabyte), which a web page never needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_CONFIG = Path(__file__).with_name("studio.yaml")
# the priors interpret offers, in the order the page shows them
PRIORS = ("depth", "pose", "canny")
PriorType = Literal["depth", "pose", "canny"]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TorchServeSettings(Settings):
    config_properties: str | None
    inference_url: str | None
    management_url: str | None
    key_file: str | None
    health_timeout_s: float = Field(gt=0)
    call_timeout_s: float = Field(gt=0)
    stream_idle_timeout_s: float = Field(gt=0)


class Limits(Settings):
    max_upload_bytes: int = Field(gt=0)
    max_name_chars: int = Field(gt=0)
    max_active_runs: int = Field(ge=1)
    max_sd_versions: int = Field(ge=1)
    max_drafts: int = Field(ge=1)


class InterpretLimits(BaseModel):
    """The part of interpret's ``handler.limits`` the form checks before a run (the rest interpret checks)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)
    max_image_side: int = Field(gt=0)
    max_image_pixels: int = Field(gt=0)
    max_caption_length: int = Field(ge=1)
    max_samples: int = Field(ge=1)
    max_control_scale: float = Field(ge=0)
    max_steps: int = Field(ge=1)


class CannyThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    low_threshold: int = Field(ge=0, le=255)
    high_threshold: int = Field(ge=0, le=255)


class InterpretView(BaseModel):
    """What the studio reads of models/interpret/model-config.yaml's ``handler:`` section: the request
    defaults the form proposes, the limits it checks first, and the canny thresholds it draws edges with."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)
    priors: list[PriorType] = Field(min_length=1)
    mode: Literal["each", "combined"]
    samples: int = Field(ge=1)
    canny: CannyThresholds
    limits: InterpretLimits


class EventSettings(Settings):
    heartbeat_s: float = Field(gt=0)


class StudioSettings(Settings):
    host: str
    port: int = Field(ge=0, le=65535)
    data_dir: str
    torchserve: TorchServeSettings
    interpret_config: str
    limits: Limits
    events: EventSettings

    # --- derived, not configured ---------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def torchserve_urls(self) -> tuple[str, str]:
        """(inference, management): the yaml's, else config.properties' addresses."""
        properties = (
            _read_properties(Path(self.torchserve.config_properties)) if self.torchserve.config_properties else {}
        )
        inference = self.torchserve.inference_url or properties.get("inference_address")
        management = self.torchserve.management_url or properties.get("management_address")
        if not inference or not management:
            raise SettingsError(
                "torchserve: no inference/management address (give inference_url and management_url, "
                f"or a config_properties file that has them; read {self.torchserve.config_properties})"
            )
        return inference, management

    def interpret(self) -> InterpretView:
        path = Path(self.interpret_config)
        try:
            section = (yaml.safe_load(path.read_text()) or {}).get("handler") or {}
            return InterpretView.model_validate(section)
        except (OSError, ValidationError) as exc:
            raise SettingsError(f"interpret_config: cannot read interpret's defaults from {path}: {exc}") from None

    def key_file(self) -> Path:
        return Path(self.torchserve.key_file or os.environ.get("TS_KEY_FILE") or "key_file.json")


class SettingsError(RuntimeError):
    """studio.yaml does not match :class:`StudioSettings`; the message names each key."""


def load_studio_settings(path: Path | str | None = None) -> StudioSettings:
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        values: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SettingsError(f"{path}: {exc.strerror}") from None
    try:
        return StudioSettings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: "
            f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in exc.errors()
        )
        raise SettingsError(f"{path}: {problems}") from None


def _read_properties(path: Path) -> dict[str, str]:
    """TorchServe's config.properties as a dict (the last value of a key wins), as workflows/connect.py reads it."""
    values = {}
    try:
        text = path.read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values
