"""The studio's settings: studio/studio.yaml, typed, read once at start.

The same rules as the handlers' settings, with the same base class (handlers/settings.py): frozen,
closed (an unknown key such as ``max_upload`` fails at start, naming it), strict, and no defaults in
code: every key is written in the yaml. Interpret's defaults and limits, which the form proposes and
checks first, are read from its model-config.yaml with interpret's own class; neither module
imports torch, which a web page never needs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from handlers.model_settings import CONTROL_TYPES, InterpretSettings
from handlers.settings import Settings, SettingsError, read_handler_settings, read_properties, validate_settings

DEFAULT_CONFIG = Path(__file__).with_name("studio.yaml")
PRIORS = CONTROL_TYPES  # the priors interpret offers, in the order the page shows them


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


class EventSettings(Settings):
    """The run page's server-sent events: a heartbeat keeps an idle stream open through proxies."""

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
        properties: dict[str, str] = {}
        if self.torchserve.config_properties:
            with contextlib.suppress(OSError):  # the error below names the file
                properties = read_properties(Path(self.torchserve.config_properties))
        inference = self.torchserve.inference_url or properties.get("inference_address")
        management = self.torchserve.management_url or properties.get("management_address")
        if not inference or not management:
            raise SettingsError(
                "torchserve: no inference/management address (give inference_url and management_url, "
                f"or a config_properties file that has them; read {self.torchserve.config_properties})"
            )
        return inference, management

    def interpret(self) -> InterpretSettings:
        path = Path(self.interpret_config)
        try:
            return read_handler_settings(InterpretSettings, path)
        except (OSError, SettingsError) as exc:
            raise SettingsError(f"interpret_config: cannot read interpret's defaults from {path}: {exc}") from None

    def key_file(self) -> Path:
        return Path(self.torchserve.key_file or os.environ.get("TS_KEY_FILE") or "key_file.json")


def load_studio_settings(path: Path | str | None = None) -> StudioSettings:
    """studio.yaml (``path``, else the packaged one) as :class:`StudioSettings`; raises SettingsError."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        values: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SettingsError(f"{path}: {exc.strerror}") from None
    return validate_settings(StudioSettings, values, where="", source=str(path))


__all__ = ["PRIORS", "SettingsError", "StudioSettings", "load_studio_settings"]
