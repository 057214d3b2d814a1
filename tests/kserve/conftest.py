"""Shared by the KServe tests: the manifests and storage layouts scripts/kserve.sh writes (tiny profile)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from server import loopback_addresses

REPO = Path(__file__).resolve().parents[2]


def run_kserve_sh(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "scripts" / "kserve.sh"), "--out", str(out), *args], capture_output=True, text=True
    )


@pytest.fixture(scope="session")
def kserve_out(tmp_path_factory) -> Path:
    """``scripts/kserve.sh --out DIR`` for every served model, as an operator runs it."""
    from harness import ensure_tiny_weights
    from served_models import weighted_models

    ensure_tiny_weights(*weighted_models())
    out = tmp_path_factory.mktemp("kserve")
    result = run_kserve_sh(out)
    assert result.returncode == 0, result.stderr
    return out


# The models the envelope tests serve: two analyzers and the pipeline that calls them (image in)
LOCAL_MODELS = ("clip", "sam", "pipeline")


@pytest.fixture(scope="session")
def local_layouts(tmp_path_factory) -> Path:
    """The storage layouts of :data:`LOCAL_MODELS` with each config and archive naming its own layout
    (``DIR/storage/<name>``) where a pod has ``/mnt/models``, so the pods' TorchServe runs here."""
    from harness import ensure_tiny_weights

    ensure_tiny_weights("clip", "sam")
    out = tmp_path_factory.mktemp("kserve-local")
    result = run_kserve_sh(out, "--mount-at-layout", *LOCAL_MODELS)
    assert result.returncode == 0, result.stderr
    return out


def kserve_env(ports: dict[str, int], envelope: str | None) -> dict[str, str]:
    """What KServe's runtime sets (TS_SERVICE_ENVELOPE), and loopback ports through TS_* variables
    (enable_envvars_config=true), as an operator overrides a generated config."""
    # TorchServe reads a config key from the environment as TS_ and the key in capitals
    env = {f"TS_{key.upper()}": value for key, value in loopback_addresses(ports).items()}
    if envelope:
        env["TS_SERVICE_ENVELOPE"] = envelope
    return env
