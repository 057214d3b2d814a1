"""Shared by the KServe tests: the manifests and storage layouts scripts/kserve.sh writes (tiny profile)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_kserve_sh(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / "kserve.sh"), "--out", str(out), *args],
                          capture_output=True, text=True)


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
