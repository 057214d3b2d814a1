"""Command line: ``python -m client pipeline "a red bicycle" --out outputs``.

Reads TorchServe's key file (``--key-file``, ``$TS_KEY_FILE`` or ./key_file.json) for its tokens and
saves what a person wants to see in ``--out``: images, mask overlays with CLIP labels, depth
colormaps, pose skeletons, and each JSON response. REST by default; ``--grpc`` calls TorchServe's
gRPC APIs instead (every command but ``pipeline --workflow``, which has no gRPC call).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import ApiError, BaseClient, Client
from .render import b64_image, overlay_masks, save_interpret, save_json, save_pipeline
from .rest import drop_none


def _image_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="a PNG or JPEG file")


def _json_arg(value: str):
    return json.loads(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inference address")
    parser.add_argument(
        "--management-url",
        default="http://127.0.0.1:8081",
        help="management address (over gRPC too: token rotation is REST-only)",
    )
    parser.add_argument("--grpc", action="store_true", help="use TorchServe's gRPC APIs instead of REST")
    parser.add_argument("--grpc-host", default="127.0.0.1")
    parser.add_argument("--grpc-inference-port", type=int, default=7070)
    parser.add_argument("--grpc-management-port", type=int, default=7071)
    parser.add_argument("--key-file", default=None, help="TorchServe's key_file.json")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="where pictures and JSON go")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="text -> image (sd)")
    generate.add_argument("prompt")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--steps", type=int)
    generate.add_argument("--width", type=int)
    generate.add_argument("--height", type=int)
    generate.add_argument("--negative-prompt")
    generate.add_argument("--stream", action="store_true", help="show denoising progress")
    generate.add_argument(
        "--model-version",
        help="one of sd's versions (a fine-tune: scripts/deploy_version.sh); default: the default version",
    )
    generate.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="TYPE=FILE",
        help="a ControlNet control image (depth, pose or canny), e.g. depth=depth_control.png; repeat for several",
    )
    generate.add_argument(
        "--control-scale",
        action="append",
        default=[],
        metavar="TYPE=SCALE",
        help="that control's conditioning scale (0-2), e.g. depth=0.8",
    )

    concepts = commands.add_parser("concepts", help="image + texts -> CLIP concept scores")
    _image_arg(concepts)
    concepts.add_argument("--texts", nargs="+")
    concepts.add_argument("--roi", type=_json_arg, help='boxes as JSON, e.g. "[[0,0,100,100]]"')

    segment = commands.add_parser("segment", help="image (+ boxes/points) -> masks (sam)")
    _image_arg(segment)
    segment.add_argument("--roi", type=_json_arg)
    segment.add_argument("--points", type=_json_arg)
    segment.add_argument("--point-labels", type=_json_arg)

    for name in ("depth", "pose"):
        _image_arg(commands.add_parser(name, help=f"image -> {name} (and its ControlNet control image)"))

    canny = commands.add_parser("canny", help="image -> Canny edge map, a control image for generate (local)")
    _image_arg(canny)
    canny.add_argument("--low", type=int, help="hysteresis low threshold (default: ControlNet's)")
    canny.add_argument("--high", type=int, help="hysteresis high threshold (default: ControlNet's)")

    caption = commands.add_parser("caption", help="image -> a caption (BLIP)")
    _image_arg(caption)
    caption.add_argument("--prompt", help='a start the caption continues, e.g. "a photograph of"')
    caption.add_argument("--max-new-tokens", type=int)
    caption.add_argument("--num-beams", type=int)

    pipeline = commands.add_parser("pipeline", help="prompt or image -> generate, analyze, segment (+ priors)")
    pipeline.add_argument("prompt", nargs="?")
    pipeline.add_argument("--image", type=Path, help="analyze this image instead of generating one")
    pipeline.add_argument("--texts", nargs="+")
    pipeline.add_argument("--roi", type=_json_arg)
    pipeline.add_argument("--priors", nargs="+", choices=["depth", "pose"])
    pipeline.add_argument("--seed", type=int)
    pipeline.add_argument("--steps", type=int, help="denoising steps of the generation")
    pipeline.add_argument("--width", type=int)
    pipeline.add_argument("--height", type=int)
    pipeline.add_argument("--workflow", action="store_true", help="use /wfpredict/pipeline (the workflow; REST only)")
    pipeline.add_argument("--stream", action="store_true", help="show each stage as it finishes")
    pipeline.add_argument("--name", default="pipeline", help="file name prefix in --out")

    interpret = commands.add_parser(
        "interpret", help="image -> caption + priors -> new images from them, ranked by CLIP"
    )
    _image_arg(interpret)
    interpret.add_argument("--caption", help="use this caption instead of BLIP's (it is sd's prompt)")
    interpret.add_argument("--priors", nargs="+", choices=["depth", "pose", "canny"])
    interpret.add_argument(
        "--mode",
        choices=["each", "combined"],
        help="each: one ControlNet per prior; combined: all priors in one MultiControlNet",
    )
    interpret.add_argument("--samples", type=int, help="samples per prior (each) or in all (combined)")
    interpret.add_argument(
        "--scale",
        nargs="+",
        default=[],
        metavar="PRIOR=SCALE",
        help="ControlNet conditioning scale per prior, e.g. depth=0.8",
    )
    interpret.add_argument(
        "--prior-image",
        nargs="+",
        default=[],
        metavar="PRIOR=FILE",
        help="use this control image for a prior instead of computing it",
    )
    interpret.add_argument("--seed", type=int)
    interpret.add_argument("--steps", type=int, help="denoising steps of each generation")
    interpret.add_argument("--width", type=int)
    interpret.add_argument("--height", type=int)
    interpret.add_argument("--sd-version", help="generate with this version of sd (a fine-tune); default: sd's default")
    interpret.add_argument("--stream", action="store_true", help="show each stage as it finishes")
    interpret.add_argument("--name", default="interpret", help="file name prefix in --out")

    upscale = commands.add_parser("upscale", help="image -> the same image 4x larger (the x4 upscaler)")
    _image_arg(upscale)
    upscale.add_argument("--prompt", help="what the image shows (the upscaler is text-guided)")
    upscale.add_argument("--steps", type=int)
    upscale.add_argument("--noise-level", type=int, help="noise added to the input first (0-350)")
    upscale.add_argument("--seed", type=int)

    interpolate = commands.add_parser("interpolate", help="two seeds (and prompts) -> the frames between, and a GIF")
    interpolate.add_argument("--seeds", type=int, nargs=2, required=True, metavar=("START", "END"))
    interpolate.add_argument("--prompts", nargs=2, metavar=("START", "END"))
    interpolate.add_argument("--frames", type=int, required=True)
    interpolate.add_argument("--steps", type=int)
    interpolate.add_argument("--width", type=int)
    interpolate.add_argument("--height", type=int)
    interpolate.add_argument("--frame-ms", type=int, default=120, help="GIF frame duration")
    interpolate.add_argument("--name", default="interpolation", help="file name prefix in --out")

    commands.add_parser("models", help="list registered models")
    scale = commands.add_parser("scale", help="set a model's workers")
    scale.add_argument("model")
    scale.add_argument("min_workers", type=int)
    scale.add_argument("max_workers", type=int, nargs="?")

    args = parser.parse_args(argv)
    if args.command == "pipeline" and args.grpc and args.workflow:
        parser.error("TorchServe has no gRPC call for workflows: drop --grpc to use --workflow")
    if args.command == "pipeline" and args.stream and args.workflow:
        parser.error("the workflow forwards only the first chunk of a stream: drop --workflow to use --stream")
    client: BaseClient
    if args.grpc:
        from .grpc_client import GrpcClient

        client = GrpcClient(
            args.grpc_host,
            args.grpc_inference_port,
            args.grpc_management_port,
            key_file=args.key_file,
            management_url=args.management_url,
        )
    else:
        client = Client(args.url, args.management_url, key_file=args.key_file)
    try:
        return _run(client, args)
    except ApiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _progress(text: str) -> None:
    """One status line, rewritten in place on a terminal."""
    print(f"\r{text}", end="", file=sys.stderr, flush=True)


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The request fields named ``names`` that the command line gave (argparse leaves the others None)."""
    return drop_none({name: getattr(args, name) for name in names})


def _run(client: BaseClient, args: argparse.Namespace) -> int:
    out: Path = args.out
    if args.command == "generate":
        options = _given(args, "seed", "steps", "width", "height", "negative_prompt")
        if args.control:
            from .rest import control_entries

            scales = {kind: float(value) for kind, value in _pairs(args.control_scale, "--control-scale")}
            images = {kind: Path(path) for kind, path in _pairs(args.control, "--control")}
            try:
                options["control"] = control_entries(images, scales)
            except ValueError as error:
                print(f"error: --control-scale: {error}", file=sys.stderr)
                return 2
        elif args.control_scale:
            print("error: --control-scale needs a --control of the same type", file=sys.stderr)
            return 2
        if args.stream:
            result = _follow(
                client.generate_stream(args.prompt, version=args.model_version, **options),
                "step",
                lambda e: f"denoising step {e['step']}/{e['steps']}",
            )
            if result is None:
                return 1
        else:
            result = client.generate(args.prompt, version=args.model_version, **options)
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(result["images"]):
            path = out / f"generated_{result['seeds'][i]}.png"
            b64_image(image).save(path)
            print(path)
        save_json(result, out / "generate.json")
    elif args.command == "concepts":
        result = client.concepts(args.image, args.texts, args.roi)
        print(f"{result['max_confidence_concept']} ({max(result['confidence_scores']):.3f})")
        print(save_json(result, _mkdir(out) / "concepts.json"))
    elif args.command == "segment":
        result = client.segment(args.image, roi=args.roi, points=args.points, point_labels=args.point_labels)
        from PIL import Image

        picture = overlay_masks(Image.open(args.image), result["masks"], boxes=result.get("boxes"))
        picture.save(_mkdir(out) / "segments.png")
        print(out / "segments.png")
        print(save_json(result, out / "segment.json"))
    elif args.command in ("depth", "pose"):
        result = client.depth(args.image) if args.command == "depth" else client.pose(args.image)
        picture = b64_image(result["colormap"] if args.command == "depth" else result["overlay"])
        picture.save(_mkdir(out) / f"{args.command}.png")
        print(out / f"{args.command}.png")
        if "control_image" in result:  # what `generate --control depth=...` (or pose=) takes
            b64_image(result["control_image"]).save(out / f"{args.command}_control.png")
            print(out / f"{args.command}_control.png")
        print(save_json(result, out / f"{args.command}.json"))
    elif args.command == "canny":
        from PIL import Image

        from handlers.common.edges import canny_edges

        thresholds = drop_none({"low": args.low, "high": args.high})
        canny_edges(Image.open(args.image), **thresholds).save(_mkdir(out) / "canny_control.png")
        print(out / "canny_control.png")
    elif args.command == "caption":
        result = client.caption(args.image, args.prompt, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
        print(result["caption"])
        print(save_json(result, _mkdir(out) / "caption.json"))
    elif args.command == "pipeline":
        if (args.prompt is None) == (args.image is None):
            print("error: give a prompt or --image, not both", file=sys.stderr)
            return 2
        options = _given(args, "texts", "roi", "priors", "seed", "steps", "width", "height")
        if args.stream:
            result = _follow(
                client.pipeline_stream(prompt=args.prompt, image=args.image, **options),
                "stage",
                lambda e: f"stage {e['stage']} done",
            )
            if result is None:
                return 1
        else:
            result = client.pipeline(prompt=args.prompt, image=args.image, workflow=args.workflow, **options)
        for path in save_pipeline(result, out, args.name):
            print(path)
    elif args.command == "interpret":
        options = _given(args, "caption", "priors", "mode", "samples", "seed", "steps", "width", "height", "sd_version")
        if args.scale:
            options["scales"] = {prior: float(value) for prior, value in _pairs(args.scale, "--scale")}
        if args.prior_image:
            options["prior_images"] = {prior: Path(path) for prior, path in _pairs(args.prior_image, "--prior-image")}
        if args.stream:
            result = _follow(
                client.interpret_stream(args.image, **options), "stage", lambda e: f"stage {e['stage']} done"
            )
            if result is None:
                return 1
        else:
            result = client.interpret(args.image, **options)
        from PIL import Image

        caption = result["caption"]
        print(f"caption{' (edited)' if caption['edited'] else ''}: {caption['text']}")
        best = result["samples"][result["best"]]
        print(
            f"best: sample {result['best']} ({'+'.join(best['priors'])}, seed {best['seed']}): "
            f"caption {best['scores']['caption']:.3f}, source {best['scores']['source']:.3f}"
        )
        for path in save_interpret(result, Image.open(args.image), out, args.name):
            print(path)
    elif args.command == "upscale":
        options = _given(args, "prompt", "steps", "noise_level", "seed")
        result = client.upscale(args.image, **options)
        path = _mkdir(out) / f"{args.image.stem}_x4.png"
        b64_image(result["image"]).save(path)
        print(path)
    elif args.command == "interpolate":
        options = _given(args, "steps", "width", "height")
        result = client.interpolate(args.seeds, args.frames, args.prompts, **options)
        frames = [b64_image(image).convert("RGB") for image in result["images"]]
        _mkdir(out)
        for i, frame in enumerate(frames):
            frame.save(out / f"{args.name}_{i:02d}.png")
        gif = out / f"{args.name}.gif"
        frames[0].save(gif, save_all=True, append_images=frames[1:], duration=args.frame_ms, loop=0)
        print(f"{len(frames)} frames in {out}/{args.name}_NN.png")
        print(gif)
    elif args.command == "models":
        for model in client.models():
            print(f"{model['modelName']}\t{model['modelUrl']}")
    elif args.command == "scale":
        client.scale(args.model, args.min_workers, args.max_workers)
        model = client.describe(args.model)
        print(f"{args.model}: {len(model['workers'])} workers (min {model['minWorkers']}, max {model['maxWorkers']})")
    return 0


def _follow(events, progress_key: str, describe) -> dict | None:
    """Show each progress event on one line; the stream's last event (the result), or None."""
    result = None
    for event in events:
        if progress_key in event:
            _progress(describe(event))
        else:
            result = event
    print(file=sys.stderr)
    if result is None:
        print("error: the stream ended without a result", file=sys.stderr)
    return result


def _pairs(values: list[str], option: str) -> list[tuple[str, str]]:
    """``["depth=0.8", ...]`` -> ``[("depth", "0.8"), ...]``."""
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"error: {option} takes PRIOR=VALUE, got {value!r}")
        pairs.append((name, rest))
    return pairs


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
