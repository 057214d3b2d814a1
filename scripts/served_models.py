"""The models this deployment serves: every folder models/<name>/ holding a model-config.yaml.

The one list: scripts/lib.sh (archive, serve), the weight builders, the tests and the benchmarks all
read it from here. Models with weights come first, then the light models that only call the others
(``handler.weights: null``, such as ``pipeline``), so a server registers what they call before them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def served_models(repo: Path = REPO) -> list[str]:
    """Model names in registration order: those with weights (alphabetical), then the callers."""
    heavy, light = [], []
    for config in sorted((repo / "models").glob("*/model-config.yaml")):
        handler = (yaml.safe_load(config.read_text()) or {}).get("handler") or {}
        (heavy if handler.get("weights") else light).append(config.parent.name)
    return heavy + light


def weighted_models(repo: Path = REPO) -> list[str]:
    """The served models that have weights of their own (what scripts/build_models.py builds)."""
    return [name for name in served_models(repo) if _has_weights(repo, name)]


def _has_weights(repo: Path, name: str) -> bool:
    handler = (yaml.safe_load((repo / "models" / name / "model-config.yaml").read_text()) or {}).get("handler") or {}
    return bool(handler.get("weights"))


if __name__ == "__main__":
    print("\n".join(served_models()))
