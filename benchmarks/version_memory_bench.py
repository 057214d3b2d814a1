"""The memory cost of a second ``sd`` version (printed figures, not tests), beside the alternative.

    .venv/bin/python benchmarks/version_memory_bench.py [--profiles tiny arch]

For each profile, in one run:

1. a LoRA fine-tune of one step (``scripts/finetune.sh``: only the adapter matters here, not its quality);
2. a TorchServe serving ``sd`` (one worker), then ``scripts/deploy_version.sh`` registering the adapter
   as a second version beside it (its own worker): each worker's RSS and PSS;
3. the alternative, several adapters in one worker: a process that loads ``sd`` the way the handler does
   and then the same adapter with diffusers' ``load_lora_weights(adapter_name=...)``, its RSS before
   and after.

Each worker and the process generate once before they are measured (arch: 128 px, one step, the cheap
setting): the weights are memory-mapped from their safetensors files, so only what a request touched
is resident. A deployed version references the base's weight files, so the two workers map the same
files; PSS splits those shared pages between them.

The server's PSS growth on deploying is what a version costs; the ratio "second worker ÷ first
worker" (both measured after the deploy) says it in units of the base model; the adapter's
in-process growth says what the alternative costs. All are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchlib
import psutil
from benchlib import REPO, WEIGHTS, build_store, ensure_weights, log, process_memory, start_server

# what the in-worker alternative does, in a fresh process: sd as the handler loads it, then one adapter
ADAPTER_IN_PROCESS = """
import json, sys, psutil, torch
from diffusers import StableDiffusionPipeline
torch.set_num_threads(2)
me = psutil.Process()
def mib(): return me.memory_full_info().rss / 2**20
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
def touch():
    pipe("a red bicycle", num_inference_steps=1, width=int(sys.argv[3]), height=int(sys.argv[3]))
touch()
base = mib()
pipe.load_lora_weights(sys.argv[2], adapter_name="second")
touch()
print(json.dumps({"base_rss_mib": base, "with_adapter_rss_mib": mib()}))
"""


def finetune(profile: str, work: Path) -> dict[str, Any]:
    data = benchlib_dataset(work / "dataset")
    flags = ["--data", str(data), "--profile", profile, "--name", "bench", "--steps", "1", "--batch", "1"]
    flags += ["--sample-every", "0", "--sample-steps", "1", "--held-out", "1"]
    if profile == "arch":
        flags += ["--resolution", "256"]  # the cheap setting: 512 px adds minutes and nothing to memory
    result = subprocess.run(
        [str(REPO / "scripts" / "finetune.sh"), *flags],
        capture_output=True,
        text=True,
        env={**os.environ, "DATA_DIR": str(work / "data")},
    )
    if result.returncode != 0:
        raise SystemExit(f"{profile}: finetune failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def benchlib_dataset(root: Path) -> Path:
    from finetune_bench import dataset

    return dataset(root, count=3, side=256)


def worker_memory(server: Any, model: str) -> dict[str, float]:
    pids = benchlib.worker_pids(server, model)
    if len(pids) != 1:
        raise RuntimeError(f"{model}: expected one worker, found {sorted(pids)}")
    return process_memory(psutil.Process(pids.pop()))


def deploy(server: Any, data_dir: Path, name: str, version: str) -> str:
    env = {
        **os.environ,
        "TS_CONFIG": str(server.config_path),
        "TS_KEY_FILE": str(server.key_file),
        "MODEL_STORE": str(server.model_store),
        "DATA_DIR": str(data_dir),
    }
    result = subprocess.run(
        [str(REPO / "scripts" / "deploy_version.sh"), name, version],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=1800,
    )
    if result.returncode != 0:
        raise SystemExit(f"deploy_version.sh failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def adapter_in_process(profile: str, data_dir: Path) -> dict[str, float]:
    side = "128" if profile == "arch" else "64"
    adapter = next(data_dir.glob("mlruns/**/adapter/pytorch_lora_weights.safetensors"))
    result = subprocess.run(
        [sys.executable, "-c", ADAPTER_IN_PROCESS, str(WEIGHTS / profile / "sd"), str(adapter.parent), side],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise SystemExit(f"the in-process adapter load failed:\n{result.stderr[-3000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "adapter_mib": adapter.stat().st_size / 2**20}


def generate_once(server: Any, model: str, profile: str) -> None:
    """One plain generation, so the worker has touched the weights it uses (they are memory-mapped from
    the safetensors files: an idle worker's RSS does not count them). arch: 128 px and one step."""
    cheap = {"width": 128, "height": 128, "steps": 1} if profile == "arch" else {"steps": 2}
    benchlib.Caller(server).ok(f"/predictions/{model}", {"prompt": "a red bicycle", "seed": 1, **cheap})


def measure(profile: str) -> dict[str, Any]:
    ensure_weights(profile, ["sd", "clip"])  # clip: the fine-tune's evaluation scores with it
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log(f"{profile}: a one-step fine-tune")
        summary = finetune(profile, work)
        store = build_store(f"version-memory-{profile}", profile, ["sd"])
        server = start_server(f"version-memory-{profile}", store)
        try:
            benchlib.register(server, "sd")
            generate_once(server, "sd", profile)
            first = worker_memory(server, "sd")
            total_before = benchlib.server_memory(server)["pss_mib"]
            log(f"{profile}: deploying the adapter as a second version")
            version = deploy(server, work / "data", "bench", str(summary["version"]))
            generate_once(server, f"sd/{version}", profile)
            second = worker_memory(server, f"sd/{version}")
            first_after = worker_memory(server, "sd")
            total_after = benchlib.server_memory(server)["pss_mib"]
        finally:
            server.stop()
        log(f"{profile}: the alternative, the adapter loaded into one process")
        alternative = adapter_in_process(profile, work / "data")
    weights = sum(f.stat().st_size for f in (WEIGHTS / profile / "sd").rglob("*.safetensors")) / 2**20
    return {
        "profile": profile,
        "sd_weights_on_disk_mib": round(weights),
        "default_worker": {k: round(v) for k, v in first.items()},
        "default_worker_after_deploy": {k: round(v) for k, v in first_after.items()},
        "second_version_worker": {k: round(v) for k, v in second.items()},
        # measured at the same moment: PSS splits the pages the two workers share (libraries) between them
        "second_version_pss_over_default_pss": round(second["pss_mib"] / first_after["pss_mib"], 2),
        "server_pss_growth_mib": round(total_after - total_before),
        "adapter_in_one_worker_growth_mib": round(alternative["with_adapter_rss_mib"] - alternative["base_rss_mib"]),
        "adapter_file_mib": round(alternative["adapter_mib"], 1),
        "one_process_base_rss_mib": round(alternative["base_rss_mib"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="+", default=["tiny", "arch"])
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for profile in args.profiles:
        print(json.dumps(measure(profile)), flush=True)


if __name__ == "__main__":
    main()
