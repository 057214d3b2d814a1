import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "tests", REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# models/<name>/model-config.yaml: every model the server registers (the five models and `pipeline`)
MODELS = sorted(p.parent.name for p in (REPO / "models").glob("*/model-config.yaml"))


# One real TorchServe per test session, serving every model on the tiny profile, shared by
# tests/integration and tests/robustness (unit tests never request it, so never start it).

@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """Archives of every model in a private store (named model_store, as allowed_urls expects)."""
    from harness import ensure_tiny_weights

    store = tmp_path_factory.mktemp("ts") / "model_store"
    ensure_tiny_weights(*(m for m in MODELS if m != "pipeline"))  # the pipeline has no weights
    result = subprocess.run([str(REPO / "scripts" / "archive.sh"), "--profile", "tiny", "--store", str(store),
                             *MODELS], capture_output=True, text=True)
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
