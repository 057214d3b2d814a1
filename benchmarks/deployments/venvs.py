"""One virtual environment per peer stack, made by the benchmark: ``.venvs/<peer>/`` (gitignored).

ray, bentoml and pytriton pin conflicting packages, so each gets its own environment with
``torch==2.13.0`` (the CPU wheel the project is built against), the project's requirements.txt
without the lines only TorchServe's tooling, the client's gRPC stubs or the tests need
(``PROJECT_EXCLUDE``; ``torchserve`` itself stays: the handlers run through a real
``ts.context.Context``), and ``requirements-<peer>.txt`` (whose line for a package the project also pins replaces the
project's). An environment is rebuilt when any of
those files changes (a stamp holds their hash).

    python benchmarks/deployments/venvs.py ray bentoml pytriton   # make them ahead of a run
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENVS = HERE / ".venvs"
PEERS_WITH_VENV = ("ray", "bentoml", "pytriton")
TORCH_PIN = "torch==2.13.0"
# archivers, grpcio(-tools): TorchServe tooling and the client's stubs; mlflow: fine-tuning runs only;
# pytest, flask, ruff, mypy, types-*: tests, lint, the Flask peer
PROJECT_EXCLUDE = {
    "mlflow",
    "torch",
    "torch-model-archiver",
    "torch-workflow-archiver",
    "grpcio",
    "grpcio-tools",
    "pytest",
    "flask",
    "ruff",
    "mypy",
    "types-pyyaml",
    "types-requests",
}


def requirement_lines(peer: str) -> list[str]:
    """What goes into ``peer``'s environment, one requirement a line."""
    own = _lines(HERE / f"requirements-{peer}.txt")
    overridden = {_name(line) for line in own}  # a peer's line replaces the project's pin of that package
    project = [line for line in _lines(REPO / "requirements.txt") if _name(line) not in PROJECT_EXCLUDE | overridden]
    return [TORCH_PIN, *project, *own]


def _lines(path: Path) -> list[str]:
    return [line for line in (raw.split("#", 1)[0].strip() for raw in path.read_text().splitlines()) if line]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def _stamp(peer: str) -> str:
    # pyproject.toml's presence, not its text: lint settings change often and do not touch the venv
    editable = "editable" if (REPO / "pyproject.toml").exists() else ""
    return hashlib.sha256("\n".join([*requirement_lines(peer), editable]).encode()).hexdigest()[:16]


def ready(peer: str) -> bool:
    stamp = VENVS / peer / ".installed"
    return python(peer).exists() and stamp.exists() and stamp.read_text().strip() == _stamp(peer)


def ensure(peer: str, log=print) -> Path:
    """The environment's python, creating or updating the environment first (minutes, once)."""
    if ready(peer):
        return python(peer)
    root = VENVS / peer
    log(f"venv {peer}: installing into {root.relative_to(REPO)} (once; hundreds of MB)")
    started = time.perf_counter()
    if not python(peer).exists():
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    requirements = root / "requirements.txt"
    requirements.write_text("\n".join(requirement_lines(peer)) + "\n")
    pip_log = root / "pip.log"
    with open(pip_log, "w") as out:
        result = subprocess.run(
            [str(python(peer)), "-m", "pip", "install", "--progress-bar", "off", "-r", str(requirements)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    if result.returncode != 0:
        tail = pip_log.read_text()[-2000:]
        raise RuntimeError(f"pip install for {peer} failed (see {pip_log}):\n{tail}")
    if (REPO / "pyproject.toml").exists():
        # the project's own packages (handlers, workflows, client), as make setup installs them
        editable = subprocess.run(
            [str(python(peer)), "-m", "pip", "install", "--no-deps", "-e", str(REPO)], capture_output=True, text=True
        )
        if editable.returncode != 0:
            raise RuntimeError(f"pip install -e . for {peer} failed:\n{editable.stderr[-2000:]}")
    (root / ".installed").write_text(_stamp(peer) + "\n")
    log(f"venv {peer}: ready in {time.perf_counter() - started:.0f}s")
    return python(peer)


def peer_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a peer's server runs in. The project's packages are installed in the venv
    (``pip install -e .``; before pyproject.toml existed, the repo root on PYTHONPATH); PYTHONPATH
    adds what is not a package: tests/ (the harness), scripts/ (the config renderer, the model
    list), benchmarks/ (peer_flask's handler lookup) and this folder (serving.py)."""
    paths = [str(REPO / "tests"), str(REPO / "scripts"), str(REPO / "benchmarks"), str(HERE)]
    if not (REPO / "pyproject.toml").exists():
        paths.insert(0, str(REPO))
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


if __name__ == "__main__":
    for name in sys.argv[1:] or PEERS_WITH_VENV:
        print(ensure(name))
