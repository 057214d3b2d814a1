"""Render models/<name>/model-config.yaml for one profile: what goes into the archive.

A model's yaml may carry ``profile_overrides: {<profile>: {...}}``, deep-merged over the rest for
that profile (e.g. the tiny profile's random weights predict meaningless mask-quality scores, so
its quality filters are off). ``handler.weights_dir`` is set to the profile's weights.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def render(source: Path, profile: str, weights_root: Path) -> dict[str, Any]:
    config = yaml.safe_load(source.read_text())
    overrides = (config.pop("profile_overrides", None) or {}).get(profile) or {}
    config = deep_merge(config, overrides)
    handler = config.setdefault("handler", {})
    if handler.get("weights"):
        weights = weights_root / profile / handler["weights"]
        if not weights.is_dir():
            raise SystemExit(f"error: no weights at {weights}: run scripts/build_models.sh --profile {profile} first")
        # scripts/kserve.sh: the server reads the weights from another root (a pod's /mnt/models/weights)
        served_root = os.environ.get("SERVED_WEIGHTS_ROOT")
        served = Path(served_root) / profile / handler["weights"] if served_root else weights.resolve()
        handler["weights_dir"] = str(served)
    handler["profile"] = profile
    return config


def main(argv: list[str]) -> int:
    source, profile, weights_root, target = argv
    config = render(Path(source), profile, Path(weights_root))
    Path(target).write_text(yaml.safe_dump(config, sort_keys=False))
    handler = config["handler"]
    print(handler["module"], *handler.get("packages", []))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
