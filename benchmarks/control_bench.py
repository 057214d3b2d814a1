"""The cost of control: ``python benchmarks/control_bench.py --profile tiny`` (or ``arch``).

Two figures, printed and written to benchmarks/results/control_<profile>.json (figures, not tests):

1. **time**: ``sd`` with one ControlNet (depth) ÷ ``sd`` alone, same prompt, size, steps, guidance
   and scheduler (the yaml's), one image per request. The exact handler code (handlers/text_to_image.py)
   in-process, as the worker runs it (``TextToImage.handle`` with a real TorchServe ``Context``,
   tests/harness.py), in alternating blocks so a drift in the machine's load hits both sides; each
   side's median. With guidance a ControlNet forward runs beside every UNet forward, so the ratio
   is about 1 + ControlNet cost / UNet cost (the ControlNet is the UNet's encoder half).
2. **memory** (``--memory``; meant for arch): the sd handler's resident set (RSS) loaded with no
   ControlNet and with all three (``control.types``), each in a fresh process, every weight read
   once (safetensors are memory-mapped: a weight joins the RSS when first read), after a gc: the
   growth ÷ the three ControlNets' weight bytes on disk. ~1 means each ControlNet's weights are
   resident once and SD's UNet, VAE and text encoder are shared, not copied (a second SD would
   show as ~+4 GB, a ratio near 2).

arch needs its weights: ``scripts/build_models.sh --profile arch --models sd`` (SD ~4.3 GB plus
three ControlNets ~1.45 GB each, fp32). On a CPU keep it cheap: the arch defaults below are
2 steps at 128x128.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import benchlib as bl
from benchlib import log

# (width, height, steps) per profile: tiny at its native 64x64 with a default-like step count; arch cheap
SETTINGS = {"tiny": (64, 64, 10), "arch": (128, 128, 2)}


def load(profile: str, threads: int | None, control_types: list[str] | None = None):
    from handlers.text_to_image import TextToImage

    overrides: dict[str, Any] = {"torch_threads": threads}
    if control_types is not None:
        overrides["control"] = {"types": control_types}
    return bl.in_process_handler(TextToImage, "sd", profile, batch_size=1, **overrides)


def timed(handler, body: dict[str, Any]) -> float:
    return bl.timed_batch(handler, [body])[0]


def time_figures(profile: str, rounds: int, threads: int | None) -> dict[str, Any]:
    width, height, steps = SETTINGS[profile]
    handler = load(profile, threads, ["depth"])
    control = bl.png_b64(bl.picture(width, height, seed=1))
    plain = {"prompt": "a dancer on a stage", "width": width, "height": height, "steps": steps, "seed": 7}
    controlled = {**plain, "control": [{"type": "depth", "image": control}]}
    timed(handler, plain), timed(handler, controlled)  # warm: first-call allocations and lazy inits
    times: dict[str, list[float]] = {"plain": [], "control": []}
    for _ in range(rounds):  # alternating: a drift in the shared machine's load hits both sides
        times["plain"].append(timed(handler, plain))
        times["control"].append(timed(handler, controlled))
    plain_s, control_s = statistics.median(times["plain"]), statistics.median(times["control"])
    return {
        "width": width,
        "height": height,
        "steps": steps,
        "guidance_scale": handler.default_guidance,
        "scheduler": handler.default_scheduler,
        "rounds": rounds,
        "plain_s": plain_s,
        "control_s": control_s,
        "ratio": control_s / plain_s,
        "samples": times,
    }


def touch_weights(handler) -> None:
    """Read every weight once. Safetensors load memory-mapped: a weight is resident (in RSS) only once
    something reads it, as the first request does; without this the figure would count almost nothing."""
    import torch

    modules = [handler.pipe.unet, handler.pipe.vae, handler.pipe.text_encoder, *handler.controlnets.values()]
    with torch.inference_mode():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.sum()


def rss_after_load(profile: str, types: list[str], threads: int | None) -> dict[str, Any]:
    """In a fresh process: the sd handler loaded with ``types``, every weight read once; its RSS in bytes."""
    code = (
        "import gc, json, sys, psutil; sys.path[:0] = [sys.argv[1]];"
        "import control_bench as cb;"
        "h = cb.load(sys.argv[2], None if sys.argv[3] == 'none' else int(sys.argv[3]), json.loads(sys.argv[4]));"
        "cb.touch_weights(h); gc.collect();"
        "print(json.dumps({'rss': psutil.Process().memory_info().rss, 'loaded': list(h.controlnets)}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(bl.BENCH), profile, str(threads or "none"), json.dumps(types)],
        capture_output=True,
        text=True,
        cwd=bl.REPO,
        timeout=3600,
    )
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_figures(profile: str, threads: int | None, types: list[str]) -> dict[str, Any]:
    from harness import model_config

    root = Path(model_config("sd", profile)["handler"]["weights_dir"]) / "controlnet"
    weight_bytes = sum(f.stat().st_size for kind in types for f in (root / kind).glob("*.safetensors"))
    without = rss_after_load(profile, [], threads)
    gc.collect()
    with_all = rss_after_load(profile, types, threads)
    growth = with_all["rss"] - without["rss"]
    return {
        "rss_without_bytes": without["rss"],
        "rss_with_bytes": with_all["rss"],
        "loaded": with_all["loaded"],
        "growth_bytes": growth,
        "controlnet_weight_bytes": weight_bytes,
        "ratio": growth / weight_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(SETTINGS), default="tiny")
    parser.add_argument("--rounds", type=int, default=5, help="timed requests per side")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--memory", action="store_true", help="also the RSS figure (fresh processes; arch: ~10 GB)")
    parser.add_argument(
        "--memory-types",
        nargs="+",
        default=["depth", "pose", "canny"],
        help="the ControlNets the memory figure loads (fewer: a smaller peak, ~1.45 GB each on arch)",
    )
    parser.add_argument("--no-time", action="store_true", help="skip the time figure")
    args = parser.parse_args(argv)

    bl.ensure_weights(args.profile, ["sd"])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report: dict[str, Any] = {"profile": args.profile, "machine": bl.machine()}
    if not args.no_time:
        figures = time_figures(args.profile, args.rounds, args.threads)
        report["time"] = figures
        log(
            f"[{args.profile}] {figures['width']}x{figures['height']}, {figures['steps']} steps, guidance "
            f"{figures['guidance_scale']}, {figures['scheduler']}: sd alone {figures['plain_s']:.3f} s, with one "
            f"ControlNet {figures['control_s']:.3f} s (medians of {figures['rounds']}): ratio {figures['ratio']:.2f}"
        )
    if args.memory:
        memory = memory_figures(args.profile, args.threads, args.memory_types)
        report["memory"] = memory
        gib = 2**30
        log(
            f"[{args.profile}] sd handler RSS: {memory['rss_without_bytes'] / gib:.2f} GiB without ControlNets, "
            f"{memory['rss_with_bytes'] / gib:.2f} GiB with {', '.join(memory['loaded'])}: growth "
            f"{memory['growth_bytes'] / gib:.2f} GiB for {memory['controlnet_weight_bytes'] / gib:.2f} GiB of "
            f"ControlNet weights: ratio {memory['ratio']:.2f}"
        )
    bl.write_json(bl.RESULTS / f"control_{args.profile}.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
