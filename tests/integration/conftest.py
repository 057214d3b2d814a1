"""One real TorchServe per test session, serving every model on the tiny profile."""
from __future__ import annotations

import subprocess

import pytest

from harness import REPO, ensure_tiny_weights
from server import TorchServe

MODELS = sorted(p.parent.name for p in (REPO / "models").glob("*/model-config.yaml"))


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """Archives of every model in a private store (named model_store, as allowed_urls expects)."""
    store = tmp_path_factory.mktemp("ts") / "model_store"
    ensure_tiny_weights(*(m for m in MODELS if m != "pipeline"))  # the pipeline has no weights
    result = subprocess.run([str(REPO / "scripts" / "archive.sh"), "--profile", "tiny", "--store", str(store),
                             *MODELS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return store


@pytest.fixture(scope="session")
def server(model_store, tmp_path_factory):
    ts = TorchServe(tmp_path_factory.mktemp("run"), model_store).start()
    try:
        for name in MODELS:
            ts.register(name)
        if (model_store / "pipeline.war").exists():
            ts.register("pipeline", workflow=True)
        yield ts
    finally:
        ts.stop()
