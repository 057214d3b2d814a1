"""Fine-tuning figures (printed, not tests): LoRA training steps per second and the peak RSS of a run,
on tiny and on arch at 256 px (CPU), each as a real ``scripts/finetune.sh`` process.

    .venv/bin/python benchmarks/finetune_bench.py [--profiles tiny arch] [--steps 20]

Each run trains on a small imagefolder dataset this script writes, records in a throw-away MLflow
store, and reports its own steps/s (timed around the optimizer steps only) and the process's peak
resident memory (ru_maxrss of the child). The machine's load is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def dataset(root: Path, count: int = 6, side: int = 256) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"a test picture {i}"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def run(profile: str, steps: int, resolution: int | None, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        data = dataset(Path(work) / "dataset")
        flags = [
            "--data",
            str(data),
            "--profile",
            profile,
            "--steps",
            str(steps),
            "--batch",
            str(batch),
            "--sample-every",
            "0",
            "--sample-steps",
            "1",
            "--held-out",
            "1",
        ]
        if resolution:
            flags += ["--resolution", str(resolution)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        result = subprocess.run(
            [str(REPO / "scripts" / "finetune.sh"), *flags],
            capture_output=True,
            text=True,
            env={**os.environ, "DATA_DIR": str(Path(work) / "data")},
        )
        wall = time.perf_counter() - started
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if result.returncode != 0:
            raise SystemExit(f"{profile}: finetune failed:\n{result.stderr[-3000:]}")
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        return {
            "profile": profile,
            "resolution": resolution or "native",
            "steps": steps,
            "batch": batch,
            "steps_per_second": summary["steps_per_second"],
            "wall_s": round(wall, 1),
            # ru_maxrss of children is the largest child so far: valid when it grew in this run
            "peak_rss_gib": round(max(peak_kib, before) / 2**20, 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="+", default=["tiny", "arch"])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores (figures under load are slower)")
    for profile in args.profiles:
        resolution = 256 if profile == "arch" else None
        steps = args.steps if profile == "tiny" else max(2, args.steps // 10)
        figures = run(profile, steps, resolution, batch=1 if profile == "arch" else 2)
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
