"""Render models/<name>/model-config.yaml for one profile: what goes into the archive.

A model's yaml may carry ``profile_overrides: {<profile>: {...}}``, deep-merged over the rest for
that profile (e.g. the tiny profile's random weights predict meaningless mask-quality scores, so
its quality filters are off). ``handler.weights_dir`` is set to the profile's weights.

``--workflow SPEC OUT`` also renders a workflow spec (workflows/pipeline.yaml holds only the DAG):
its node workers, batching and timeout come from the same model-config.yaml, so the `pipeline`
model and the workflow are sized by one file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
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


def workflow_spec(dag_spec: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The DAG of ``dag_spec`` with its function nodes sized as the model's config sizes the model."""
    spec = yaml.safe_load(dag_spec.read_text())
    spec["models"] = {
        "min-workers": config["minWorkers"],
        "max-workers": config["minWorkers"],  # the engine starts min-workers; one holds batchSize requests
        "batch-size": config["batchSize"],
        "max-batch-delay": config["maxBatchDelay"],
        "retry-attempts": 0,  # a retried node would re-submit work the models already did
        "timeout-ms": int(config["responseTimeout"]) * 1000,
    }
    return spec


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("profile")
    parser.add_argument("weights_root", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--workflow", nargs=2, type=Path, metavar=("DAG_SPEC", "OUT"))
    args = parser.parse_args(argv)
    config = render(args.source, args.profile, args.weights_root)
    args.target.write_text(yaml.safe_dump(config, sort_keys=False))
    if args.workflow:
        dag_spec, out = args.workflow
        out.write_text(yaml.safe_dump(workflow_spec(dag_spec, config), sort_keys=False))
    print(config["handler"]["module"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
