"""Settings: every model-config.yaml loads into its typed settings, and a wrong key fails at load, naming it."""

from pathlib import Path

import pytest
import yaml
from render_model_config import deep_merge, render
from served_models import served_models

from handlers.common import SettingsError, load_settings
from handlers.model_settings import (
    ClipSettings,
    DepthSettings,
    InterpretSettings,
    PipelineSettings,
    PoseSettings,
    SamSettings,
    SdSettings,
)

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {
    "clip": ClipSettings,
    "depth": DepthSettings,
    "pose": PoseSettings,
    "sam": SamSettings,
    "sd": SdSettings,
    "pipeline": PipelineSettings,
}


def handler_section(name: str, profile: str = "tiny") -> dict:
    config = yaml.safe_load((REPO / "models" / name / "model-config.yaml").read_text())
    overrides = (config.pop("profile_overrides", None) or {}).get(profile) or {}
    return deep_merge(config, overrides)["handler"]


def handler_class(name: str) -> type:
    """The one class TorchServe finds in the model's handler module."""
    from importlib import import_module

    from ts.utils.util import list_classes_from_module

    [cls] = list_classes_from_module(import_module(f"handlers.{handler_section(name)['module']}"))
    return cls


@pytest.mark.parametrize("name", served_models())
def test_every_served_models_yaml_loads_into_its_handlers_settings(name):
    loaded = load_settings(handler_class(name).settings_type(), handler_section(name))
    assert loaded.model_config["frozen"] and loaded.model_config["extra"] == "forbid"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_mistyped_key_fails_at_load_naming_it(name):
    section = handler_section(name)
    section["limits"] = {**section["limits"], "max_image_sid": 1}
    with pytest.raises(SettingsError, match=r"handler\.limits\.max_image_sid: unknown key"):
        load_settings(SETTINGS[name], section)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_missing_key_fails_at_load_naming_it_there_is_no_default_in_code(name):
    section = handler_section(name)
    limits = dict(section["limits"])
    removed = next(iter(limits))
    del limits[removed]
    with pytest.raises(SettingsError, match=rf"handler\.limits\.{removed}: missing"):
        load_settings(SETTINGS[name], {**section, "limits": limits})


@pytest.mark.parametrize("name, cls", [("pipeline", PipelineSettings), ("interpret", InterpretSettings)])
def test_stage_timeouts_name_every_called_model_and_no_other(name, cls):
    section = handler_section(name)
    timeouts = dict(section["stage_timeouts"])
    first = next(iter(timeouts))
    assert load_settings(cls, section).stage_timeouts == {model: float(s) for model, s in timeouts.items()}
    with pytest.raises(SettingsError, match=rf"handler\.stage_timeouts: .*{first}x: unknown model"):
        load_settings(cls, {**section, "stage_timeouts": {**timeouts, f"{first}x": 5}})
    del timeouts[first]
    with pytest.raises(SettingsError, match=rf"handler\.stage_timeouts: .*{first}: missing"):
        load_settings(cls, {**section, "stage_timeouts": timeouts})
    with pytest.raises(SettingsError, match=rf"handler\.stage_timeouts\.{first}: Input should be greater than 0"):
        load_settings(cls, {**section, "stage_timeouts": {**section["stage_timeouts"], first: 0}})


def test_a_wrong_type_fails_at_load():
    section = handler_section("sd")
    with pytest.raises(SettingsError, match=r"handler\.steps: Input should be a valid integer"):
        load_settings(SdSettings, {**section, "steps": "25"})


def test_settings_are_frozen():
    loaded = load_settings(SdSettings, handler_section("sd"))
    with pytest.raises(Exception, match="frozen"):
        loaded.steps = 3  # type: ignore[misc]


def test_the_workflow_spec_is_sized_from_the_pipelines_yaml(tmp_path):
    from render_model_config import workflow_spec

    config = render(REPO / "models" / "pipeline" / "model-config.yaml", "tiny", REPO / "model_store" / "weights")
    spec = workflow_spec(REPO / "workflows" / "pipeline.yaml", config)
    assert spec["models"]["timeout-ms"] == config["responseTimeout"] * 1000
    assert spec["models"]["batch-size"] == config["batchSize"]
    assert spec["dag"] == {"prepare": ["analyze"]}
