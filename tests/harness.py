"""Run a handler in-process with a real TorchServe ``Context`` (no server): for unit tests."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "model_store" / "weights"
_TS_METRICS_YAML = Path(__import__("ts").__file__).parent / "configs" / "metrics.yaml"


def ensure_tiny_weights(*models: str) -> Path:
    """Build the tiny profile for ``models`` if it is not there yet (seconds, offline)."""
    root = WEIGHTS / "tiny"
    missing = [m for m in models if not (root / f".{m}.done").exists()]
    if missing:
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "build_models.py"), "--profile", "tiny", "--models", *missing],
            check=True,
        )
    return root


def model_config(name: str, profile: str = "tiny", **handler_overrides: Any) -> dict[str, Any]:
    """models/<name>/model-config.yaml as archive.sh renders it for ``profile``, plus overrides."""
    from render_model_config import deep_merge, render

    config = render(REPO / "models" / name / "model-config.yaml", profile, WEIGHTS)
    config["handler"] = deep_merge(config["handler"], handler_overrides)
    return config


def make_context(name: str, config: dict[str, Any], batch_size: int = 8) -> Context:
    metrics = MetricsCacheYamlImpl(str(_TS_METRICS_YAML))
    metrics.initialize_cache()
    return Context(
        name,
        str(REPO),
        {"model": {"modelName": name}},
        batch_size,
        None,
        "0.12.0",
        metrics=metrics,
        model_yaml_config=config,
    )


def load_handler(handler_class: type, name: str, **handler_overrides: Any):
    ensure_tiny_weights(name)
    handler = handler_class()
    handler.initialize(make_context(name, model_config(name, **handler_overrides)))
    return handler


def run_batch(handler: Any, bodies: list[Any]) -> list[tuple[int, dict[str, Any]]]:
    """Send one batch (each body a dict, or raw bytes) through ``handler.handle``; (status, json) each."""
    context = handler.context
    context.request_ids = {i: f"req-{i}" for i in range(len(bodies))}
    context.request_processor = [RequestProcessor({}) for _ in bodies]
    context.metrics.set_request_ids(context.request_ids)
    outputs = handler.handle([{"body": body} for body in bodies], context)
    assert len(outputs) == len(bodies)
    return [(context.get_response_status(i)[0], json.loads(out)) for i, out in enumerate(outputs)]


def assert_names_the_field(status: int, error: dict[str, Any], field: str, message: str | None = None) -> None:
    """A handler's refusal of one request: a 4xx in the JSON error shape, its message naming ``field``
    first and, where ``message`` is given, starting with it."""
    assert 400 <= status < 500, error
    assert error["code"] == status and error["type"] in ("InvalidInput", "LimitExceeded")
    assert error["message"].startswith(f"{field}: "), error
    if message:
        assert error["message"].startswith(message), error


def sample_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def png_b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
