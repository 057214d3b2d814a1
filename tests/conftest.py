import subprocess
from pathlib import Path

import pytest
from served_models import (  # scripts/served_models.py (pytest.ini puts scripts/ on the path)
    served_models,
    weighted_models,
)

REPO = Path(__file__).resolve().parent.parent

# every model the server registers, in registration order (the light `pipeline` after what it calls)
MODELS = served_models()


# One real TorchServe per test session, serving every model on the tiny profile, shared by
# tests/integration and tests/robustness (unit tests never request it, so never start it).


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """Archives of every model in a private store (named model_store, as allowed_urls expects)."""
    from harness import ensure_tiny_weights

    store = tmp_path_factory.mktemp("ts") / "model_store"
    ensure_tiny_weights(*weighted_models())
    result = subprocess.run(
        [str(REPO / "scripts" / "archive.sh"), "--profile", "tiny", "--store", str(store), *MODELS],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return store


@pytest.fixture(scope="session")
def server(model_store, tmp_path_factory):
    from server import TorchServe

    ts = TorchServe(tmp_path_factory.mktemp("run"), model_store).start()
    try:
        for name in MODELS:
            ts.register(name)
        if (model_store / "pipeline.war").exists():
            ts.register("pipeline", workflow=True)
        yield ts
    finally:
        ts.stop()
