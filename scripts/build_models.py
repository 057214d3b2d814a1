"""Build model weights for one profile: ``python scripts/build_models.py --profile tiny``.

tiny: real architectures, tiny configs, random weights (seconds, offline; tests and demo).
arch: real architectures at full size, random weights (honest speed and memory figures).
pretrained: real weights from the Hugging Face hub (needs internet).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from profiles import BUILDERS  # noqa: E402

PROFILES = ("tiny", "arch", "pretrained")
_IGNORED_FILES = ["*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.ot", "flax_model*", "tf_model*", "*.tflite"]


def build_random(profile: str, name: str, root: Path) -> None:
    import torch

    torch.manual_seed(0)  # the same tiny weights on every machine, so failures reproduce
    BUILDERS[name].build(profile, root)


def download(name: str, root: Path) -> None:
    from huggingface_hub import snapshot_download

    for subdir, repo_id in BUILDERS[name].PRETRAINED.items():
        print(f"  downloading {repo_id} -> {root / subdir}", flush=True)
        try:
            snapshot_download(repo_id, local_dir=root / subdir, ignore_patterns=_IGNORED_FILES)
        except Exception as exc:  # offline: say so plainly instead of a 40-line traceback
            raise SystemExit(
                f"error: could not download {repo_id} ({type(exc).__name__}: {exc}).\n"
                "The pretrained profile needs internet access to the Hugging Face hub; "
                "use --profile tiny or arch offline.") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, required=True)
    parser.add_argument("--models", nargs="+", choices=sorted(BUILDERS), default=list(BUILDERS),
                        help="which models to build (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "model_store" / "weights",
                        help="weights root; each profile goes in <out>/<profile>/")
    parser.add_argument("--force", action="store_true", help="rebuild models that already exist")
    args = parser.parse_args(argv)

    root = args.out / args.profile
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for i, name in enumerate(args.models, 1):
        marker = root / f".{name}.done"
        if marker.exists() and not args.force:
            print(f"[{i}/{len(args.models)}] {name}: already built in {root} (--force to rebuild)", flush=True)
            continue
        print(f"[{i}/{len(args.models)}] {name}: building {args.profile} ...", flush=True)
        started = time.perf_counter()
        for subdir in BUILDERS[name].PRETRAINED:
            shutil.rmtree(root / subdir, ignore_errors=True)
        if args.profile == "pretrained":
            download(name, root)
        else:
            build_random(args.profile, name, root)
        marker.write_text(args.profile)
        print(f"[{i}/{len(args.models)}] {name}: done in {time.perf_counter() - started:.1f}s", flush=True)
    print(f"weights for profile '{args.profile}' are in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
