"""The project explains itself: its README, docs and code cite only files in the repo, and every
repo path the README or docs/architecture.md names exists."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/architecture.md", "benchmarks/README.md"]
# a path-looking token: a top-level folder of the repo, then more path
PATH = re.compile(
    r"`((?:handlers|workflows|client|scripts|models|tests|benchmarks|docs|training|studio|deploy)"
    r"/[\w./<>*-]*)`"
)


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [REPO / line for line in out.splitlines() if line]


def test_nothing_outside_tests_cites_the_design_document_a_user_does_not_have():
    offenders = []
    for path in tracked_files():
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith("tests/") or (
            path.suffix not in {".py", ".md", ".sh", ".yaml", ".yml", ".html", ".properties", ".toml"}
            and path.name != "Makefile"
        ):
            continue
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "DESIGN" in line or "../shared" in line:
                offenders.append(f"{relative}:{number}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)


def generated(name: str) -> bool:
    """A path git ignores (built or written at run time: benchmarks/results/, model_store/...)."""
    return subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO).returncode == 0


@pytest.mark.parametrize("doc", DOCS)
def test_every_repo_path_a_document_names_exists(doc):
    missing = []
    for match in PATH.finditer((REPO / doc).read_text()):
        name = match.group(1).rstrip(".,)")
        if any(mark in name for mark in "<>*"):  # a pattern such as models/<name>/, not a file
            continue
        if not (REPO / name).exists() and not generated(name):
            missing.append(name)
    assert not missing, f"{doc} names paths that do not exist: {missing}"
