"""Upscale seconds per output megapixel, and interpolation frames per second vs plain generation.

``python benchmarks/upscale_bench.py`` (both), ``--only upscale`` or ``--only interpolate``.

- **upscale**: the exact handler (handlers/upscaler.py) in-process, as the worker runs it
  (``Upscaler.handle`` with a real TorchServe ``Context``, tests/harness.py), on the ``arch``
  profile (the x4 upscaler's full-size architecture, random weights; built on first use with
  scripts/build_models.py, ~3.5 GB) at ``--steps`` steps, guided, for one input that fits a tile
  (``--side`` px) and one that is tiled (``--tiled-side`` px with ``--tile`` px tiles): seconds per
  output megapixel (the output is 4x each side). ``--upscale-profile tiny`` for the tiny profile.
- **interpolate**: tiny ``sd`` in-process: one ``interpolate`` request of ``--frames`` frames against
  plain requests making the same number of images (prompt lists of sd's max_prompts), at the same
  size and steps: images per second each, and their ratio.

Figures, not a test: printed (and the command that made them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import benchlib as bl  # puts tests/ and scripts/ on the path: harness, served_models)


def bench_upscale(profile: str, steps: int, side: int, tiled_side: int, tile: int, threads: int | None) -> None:
    from harness import png_b64, sample_image

    from handlers.upscaler import SCALE, Upscaler, tile_boxes

    bl.ensure_weights(profile, ["upscale"])
    overrides = {"torch_threads": threads} if threads else {}
    handler = bl.in_process_handler(Upscaler, "upscale", profile, **overrides)
    print(
        f"upscale ({profile} profile, {steps} steps, guidance {handler.settings.guidance_scale}, "
        f"torch threads {threads or 'default'}):"
    )
    bl.timed_batch(handler, [{"image": png_b64(sample_image(16, 16)), "steps": 1, "seed": 0}])  # warm-up
    for width, tile_side in ((side, None), (tiled_side, tile)):
        body: dict[str, Any] = {"image": png_b64(sample_image(width, width, seed=1)), "steps": steps, "seed": 1}
        if tile_side:
            body["tile"] = tile_side
        tiles = len(tile_boxes((width, width), tile_side or handler.settings.tile, handler.settings.tile_overlap))
        seconds, _ = bl.timed_batch(handler, [body])
        megapixels = (SCALE * width) ** 2 / 1e6
        print(
            f"  {width}x{width} -> {SCALE * width}x{SCALE * width} ({tiles} tile{'s' if tiles > 1 else ''}): "
            f"{seconds:8.1f} s, {seconds / megapixels:8.1f} s per output megapixel"
        )


def bench_interpolate(frames: int, steps: int, side: int, repeats: int) -> None:
    from handlers.text_to_image import TextToImage

    handler = bl.in_process_handler(TextToImage, "sd", "tiny")
    per_request = handler.settings.limits.max_prompts
    common = {"steps": steps, "width": side, "height": side}
    interpolate = [{"interpolate": {"seeds": [1, 2], "prompts": ["a cat", "a red car"], "frames": frames}, **common}]
    plain = [
        {"prompt": [f"a cat {i}" for i in range(per_request)], "seed": 3 + r * per_request, **common}
        for r in range(-(-frames // per_request))
    ]
    images_plain = per_request * len(plain)
    bl.timed_batch(handler, interpolate), bl.timed_batch(handler, plain)  # warm-up
    best_interpolate = best_plain = float("inf")
    for _ in range(repeats):  # alternating, best of each: the machine's load hits both
        best_interpolate = min(best_interpolate, bl.timed_batch(handler, interpolate)[0])
        best_plain = min(best_plain, bl.timed_batch(handler, plain)[0])
    interpolate_fps, plain_fps = frames / best_interpolate, images_plain / best_plain
    print(f"interpolate vs plain generation (tiny sd, {side}x{side}, {steps} steps, best of {repeats}):")
    print(f"  interpolate, {frames} frames in one request: {best_interpolate:6.2f} s, {interpolate_fps:6.2f} frames/s")
    print(
        f"  plain, {len(plain)} request(s) of {per_request} prompts ({images_plain} images) in one batch: "
        f"{best_plain:6.2f} s, {plain_fps:6.2f} images/s"
    )
    print(f"  ratio interpolate / plain: {interpolate_fps / plain_fps:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["upscale", "interpolate"])
    parser.add_argument("--upscale-profile", default="arch", choices=["tiny", "arch"])
    parser.add_argument("--steps", type=int, default=2, help="upscale steps")
    parser.add_argument("--side", type=int, default=64, help="input side of the one-tile upscale")
    parser.add_argument("--tiled-side", type=int, default=96, help="input side of the tiled upscale")
    parser.add_argument("--tile", type=int, default=64, help="tile side of the tiled upscale")
    parser.add_argument("--threads", type=int, help="torch threads of the upscale handler")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--sd-steps", type=int, default=4)
    parser.add_argument("--sd-side", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print("command: python benchmarks/upscale_bench.py " + " ".join(sys.argv[1:] if argv is None else argv))
    if args.only in (None, "interpolate"):
        bench_interpolate(args.frames, args.sd_steps, args.sd_side, args.repeats)
    if args.only in (None, "upscale"):
        bench_upscale(args.upscale_profile, args.steps, args.side, args.tiled_side, args.tile, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
