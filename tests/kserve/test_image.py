"""deploy/kserve/Dockerfile against what KServe's runtime runs in it (no image is built here).

No container engine runs on these machines, so the image itself is untested; these tests check
what can be checked without one: the image starts TorchServe as KServe's kserve-torchserve runtime
(``../shared/kserve/kserve-torchserve.yaml``, else ``$KSERVE_RUNTIME``) asks, its entry point keeps
that TorchServe in the foreground, every file it copies is in the build context, and the manifests
name it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

DOCKERFILE = REPO / "deploy" / "kserve" / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "kserve" / "entrypoint.sh"


def runtime_args() -> list[str]:
    shared = REPO.parent / "shared" / "kserve" / "kserve-torchserve.yaml"
    path = shared if shared.is_file() else Path(os.environ.get("KSERVE_RUNTIME", ""))
    if not path.is_file():
        pytest.fail(f"KServe's kserve-torchserve runtime is neither at {shared} nor at $KSERVE_RUNTIME")
    runtime = yaml.safe_load(path.read_text())
    (container,) = runtime["spec"]["containers"]
    return container["args"]


def instructions() -> list[tuple[str, str]]:
    lines, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            lines.append((keyword.upper(), rest))
            pending = ""
    return lines


def test_the_image_runs_what_the_runtime_runs_and_copies_only_what_exists():
    steps = instructions()
    cmd = json.loads(next(rest for keyword, rest in steps if keyword == "CMD"))
    assert cmd == runtime_args()  # the same command whether KServe passes its args or not
    assert next(rest for keyword, rest in steps if keyword == "FROM").startswith("python:3.11")
    assert any("openjdk-17-jre-headless" in rest for keyword, rest in steps if keyword == "RUN")
    ignore = (REPO / "deploy" / "kserve" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for keyword, rest in steps:
        if keyword == "COPY":
            source = rest.split()[0]
            assert (REPO / source).exists(), source
            assert source in allowed, f"{source} is outside the build context (Dockerfile.dockerignore)"
    requirements = (REPO / "requirements.txt").read_text()
    assert "kserve" not in requirements.lower()  # the serving image needs no KServe SDK


def test_the_entry_point_keeps_torchserve_in_the_foreground(tmp_path):
    """A stand-in ``torchserve`` prints the arguments the entry point gives it."""
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    fake = tmp_path / "torchserve"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    given = subprocess.run([str(ENTRYPOINT), *runtime_args()], env=env, capture_output=True, text=True, check=True)
    assert given.stdout.split() == [*runtime_args()[1:], "--foreground"]
    again = subprocess.run(
        [str(ENTRYPOINT), "torchserve", "--start", "--foreground"], env=env, capture_output=True, text=True, check=True
    )
    assert again.stdout.split() == ["--start", "--foreground"]
    other = subprocess.run([str(ENTRYPOINT), "echo", "hello"], capture_output=True, text=True, check=True)
    assert other.stdout == "hello\n"


def test_the_manifests_name_the_image_at_the_projects_version(kserve_out):
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for path in (kserve_out / "inferenceservices").glob("*.yaml"):
        model = yaml.safe_load(path.read_text())["spec"]["predictor"]["model"]
        assert model["image"] == f"image-interpreter-predictor:{version}", path.name
