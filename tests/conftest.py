import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from served_models import (  # scripts/served_models.py (pytest.ini puts scripts/ on the path)
    served_models,
    weighted_models,
)

REPO = Path(__file__).resolve().parent.parent

# the shared assertion helpers, rewritten as a test module's asserts are: a failure shows its values
pytest.register_assert_rewrite("harness", "client_cli")

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


# Debian's Chromium driven by Playwright (Playwright's own browser download does not work here), and a
# picture: for the studio's tests and the fine-tune's side-by-side test.
@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from studio_harness import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed: apt-get install -y chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def picture() -> bytes:
    """A real photograph (scikit-image's astronaut), small: the tiny models take it in milliseconds."""
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()
