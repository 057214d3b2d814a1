"""GPU figures, for whoever holds a CUDA GPU: ``python benchmarks/gpu.py`` (about 5-10 minutes).

- SD v1.4 (arch weights: the real UNet/VAE/text encoder, random weights; or ``--profile pretrained``)
  at 512x512, 50 steps, guidance 7.5, the weights' own scheduler (PNDM), fp16 with PyTorch's SDPA
  attention (diffusers' default ``AttnProcessor2_0``), then with the UNet ``torch.compile``d
  (``mode="max-autotune"``, channels-last, as diffusers' "Accelerated PyTorch 2.0" guide), at
  batch 1 and 4 (``num_images_per_prompt``): seconds per call;
- SAM ViT-H image encoder (``facebook/sam-vit-huge`` geometry, 1024x1024), fp16: ms per image at
  batch 1 and 4;
- CLIP ViT-B/32 image tower, fp16, batch 64: images per second.

The published anchors (SD v1.4, 512x512, 50 steps, batch 1) are printed beside the results. These
are the models alone, as diffusers' guide measured them; the ``sd`` handler adds per-image guidance
forwards when ``exact_seeds`` is on (the batch-invariance guarantee of docs/architecture.md §7).

Without CUDA it says so and exits 0 (nothing to measure). ``--allow-cpu --profile tiny`` runs the
same code on the CPU with tiny weights, to check the script itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
from benchlib import Figure, figure, log

ANCHORS = [
    ("A100, SD v1.4 512x512 50 steps fp16 + SDPA, batch 1", "1.59 s"),
    ("A100, ... + torch.compile", "1.07 s"),
    ("H100 PCIe, ... + torch.compile", "1.11 s"),
]


def cuda_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a requirement
        return False, f"torch is not importable ({exc})"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU visible"
        return False, f"CUDA is not available (torch {torch.__version__}: {build})"
    return True, torch.cuda.get_device_name(0)


def timed(fn: Callable[[], Any], device, repeats: int, warmup: int = 1) -> list[float]:
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return times


def bench_sd(
    root: Path, device, dtype, side: int, steps: int, batches: list[int], repeats: int, compile_unet: bool
) -> dict[str, Any]:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        root / "sd", dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    attention = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    results: dict[str, Any] = {"attention": attention, "side": side, "steps": steps}

    def run(batch: int) -> None:
        generator = torch.Generator("cpu").manual_seed(0)
        pipe(
            "a photo of an astronaut riding a horse on mars",
            height=side,
            width=side,
            num_inference_steps=steps,
            num_images_per_prompt=batch,
            generator=generator,
            output_type="pil",
        )

    with torch.inference_mode():
        for batch in batches:
            log(f"gpu: sd eager (SDPA), batch {batch}")
            results[f"eager_b{batch}_s"] = timed(lambda: run(batch), device, repeats)
    if compile_unet:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)
        with torch.inference_mode():
            for batch in batches:
                log(f"gpu: sd compiled, batch {batch} (the first call compiles: minutes)")
                started = time.perf_counter()
                run(batch)
                results[f"compile_b{batch}_first_call_s"] = time.perf_counter() - started
                results[f"compile_b{batch}_s"] = timed(lambda: run(batch), device, repeats, warmup=0)
    return results


def bench_sam(root: Path, device, dtype, batches: list[int], repeats: int) -> dict[str, Any]:
    import torch
    from transformers import SamModel

    model = SamModel.from_pretrained(root / "sam", dtype=dtype).to(device).eval()
    side = model.config.vision_config.image_size
    results: dict[str, Any] = {"input": f"{side}x{side}", "hidden_size": model.config.vision_config.hidden_size}
    with torch.inference_mode():
        for batch in batches:
            pixels = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
            log(f"gpu: sam image encoder, batch {batch}")
            times = timed(lambda: model.get_image_embeddings(pixels), device, repeats)
            results[f"b{batch}_ms_per_image"] = [1000 * t / batch for t in times]
    return results


def bench_clip(root: Path, device, dtype, batch: int, repeats: int) -> dict[str, Any]:
    import torch
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(root / "clip", dtype=dtype).to(device).eval()
    side = model.config.vision_config.image_size
    pixels = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
    log(f"gpu: clip image tower, batch {batch}")
    with torch.inference_mode():
        times = timed(lambda: model.get_image_features(pixel_values=pixels), device, repeats)
    return {"batch": batch, "images_per_s": [batch / t for t in times]}


def run(
    quick: bool = False, profile: str = "arch", allow_cpu: bool = False, compile_on_cpu: bool = False
) -> list[Figure]:
    import torch

    available, reason = cuda_available()
    if not available and not allow_cpu:
        raise SystemExit(f"gpu.py: {reason}; nothing to measure")
    device = torch.device("cuda" if available else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    bl.ensure_weights(profile, ["sd", "sam", "clip"])
    root = bl.WEIGHTS / profile
    repeats = 2 if quick else 3
    tiny = profile == "tiny"
    side, steps = (64, 4) if tiny else (512, 50)
    batches = [1, 4]
    watch = bl.CpuWatch()
    release = torch.cuda.empty_cache if device.type == "cuda" else (lambda: None)
    sd = bench_sd(
        root, device, dtype, side, steps, batches, repeats, compile_unet=device.type == "cuda" or compile_on_cpu
    )
    release()
    sam = bench_sam(root, device, dtype, batches, repeats)
    release()
    clip = bench_clip(root, device, dtype, 8 if tiny else 64, repeats + 2)
    busy = watch.stop()
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (script check only)"
    best = min
    figures = []
    for batch in batches:
        eager = best(sd[f"eager_b{batch}_s"])
        figures.append(
            figure(
                f"6-sd-b{batch}",
                f"SD v1.4 {profile} {side}x{side} {steps} steps, {dtype_name(dtype)} + SDPA, batch {batch}, {name}",
                eager,
                "s",
                details=sd,
                busy=busy,
            )
        )
        if f"compile_b{batch}_s" in sd:
            compiled = best(sd[f"compile_b{batch}_s"])
            figures.append(
                figure(
                    f"6-sdc-b{batch}",
                    f"... + torch.compile (max-autotune), batch {batch}",
                    compiled,
                    "s",
                    details={"speedup": eager / compiled},
                    busy=busy,
                    note=f"{eager / compiled:.2f}x over SDPA alone",
                )
            )
    for batch in batches:
        figures.append(
            figure(
                f"6-sam-b{batch}",
                f"SAM {'ViT-H' if not tiny else 'tiny'} image encoder, batch {batch}, {name}",
                best(sam[f"b{batch}_ms_per_image"]),
                "ms/image",
                details=sam,
                busy=busy,
            )
        )
    figures.append(
        figure(
            "6-clip",
            f"CLIP {'ViT-B/32' if not tiny else 'tiny'} image tower, batch {clip['batch']}, {name}",
            max(clip["images_per_s"]),
            "images/s",
            details=clip,
            busy=busy,
        )
    )
    return figures


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="arch", choices=["tiny", "arch", "pretrained"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run on the CPU anyway (with --profile tiny: a check of this script)"
    )
    parser.add_argument(
        "--compile-on-cpu", action="store_true", help="with --allow-cpu: also the torch.compile path (slow)"
    )
    args = parser.parse_args(argv)
    print("Published anchors (diffusers' 'Accelerated PyTorch 2.0' guide):")
    for what, value in ANCHORS:
        print(f"  {what}: {value}")
    available, reason = cuda_available()
    if not available and not args.allow_cpu:
        print(
            f"\ngpu.py: {reason}. Nothing measured; run this on a machine with a CUDA GPU "
            f"(after `make setup` with a CUDA build of torch and `scripts/build_models.sh --profile arch`)."
        )
        return 0
    figures = run(quick=args.quick, profile=args.profile, allow_cpu=args.allow_cpu, compile_on_cpu=args.compile_on_cpu)
    print()
    for fig in figures:
        print(fig.line())
    bl.write_json(bl.RESULTS / "gpu.json", {"machine": bl.machine(), "anchors": ANCHORS, "figures": figures})
    print(f"results: {bl.RESULTS / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
