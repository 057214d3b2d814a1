"""Build model weights for one profile: ``python scripts/build_models.py --profile tiny``.

tiny: real architectures, tiny configs, random weights (seconds, offline; tests and demo).
arch: real architectures at full size, random weights (honest speed and memory figures).
pretrained: real weights from the Hugging Face hub, through the local Hugging Face cache
  (``HF_HUB_CACHE``): what the cache lacks is downloaded into it, then linked into place. With
  ``HF_HUB_OFFLINE=1`` nothing is downloaded: an air-gapped machine with a populated cache builds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from profiles import BUILDERS  # scripts/ is on sys.path: it is this script's own directory

REPO = Path(__file__).resolve().parent.parent

PROFILES = ("tiny", "arch", "pretrained")
_IGNORED_FILES = ["*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.ot", "flax_model*", "tf_model*", "*.tflite"]


def build_random(profile: str, name: str, root: Path) -> None:
    import torch

    torch.manual_seed(0)  # the same tiny weights on every machine, so failures reproduce
    BUILDERS[name].build(profile, root)


def download(name: str, root: Path) -> None:
    """Each of the model's hub repos, from the Hugging Face cache, into ``root/<subdir>``.

    ``snapshot_download`` without ``local_dir`` fills the cache with what it lacks and returns the
    cached snapshot's folder; offline (``HF_HUB_OFFLINE=1``) it downloads nothing and returns the
    snapshot the cache already holds for ``refs/main``. (With ``local_dir`` it would never read the
    cache offline.) The files are then hard-linked from the cache, so the weights take no second
    copy on disk and survive a cache clean-up, or copied where the cache is on another filesystem.
    """
    from huggingface_hub import constants, snapshot_download

    for subdir, repo_id in BUILDERS[name].PRETRAINED.items():
        try:
            snapshot = Path(snapshot_download(repo_id, ignore_patterns=_IGNORED_FILES))
        except Exception as exc:  # not cached and no hub: say so plainly instead of a 40-line traceback
            offline = " (HF_HUB_OFFLINE is set: nothing is downloaded)" if constants.HF_HUB_OFFLINE else ""
            raise SystemExit(
                f"error: {repo_id} is not in the Hugging Face cache at {constants.HF_HUB_CACHE}{offline} and could "
                f"not be downloaded ({type(exc).__name__}: {exc}).\n"
                "The pretrained profile needs the hub, or a cache that already holds every repo it names "
                "(scripts/profiles/*.py, PRETRAINED); use --profile tiny or arch without either."
            ) from None
        count = link_snapshot(snapshot, root / subdir)
        print(f"  {repo_id}: {count} files from {snapshot} -> {root / subdir}", flush=True)


def link_snapshot(snapshot: Path, target: Path) -> int:
    """Hard-link (or copy) a cached snapshot's files, less ``_IGNORED_FILES``, into ``target``."""
    from huggingface_hub.utils import filter_repo_objects

    entries = sorted(path for path in snapshot.rglob("*") if path.is_file() or path.is_symlink())
    broken = [path for path in entries if not path.exists()]  # a snapshot's files are links into ../blobs
    if broken:
        raise SystemExit(
            f"error: the cached snapshot {snapshot} is damaged: {broken[0]} points at a missing blob; "
            "delete the repo from the cache and build again"
        )
    names = list(
        filter_repo_objects([path.relative_to(snapshot).as_posix() for path in entries], ignore_patterns=_IGNORED_FILES)
    )
    if not names:
        raise SystemExit(f"error: the cached snapshot {snapshot} holds no usable files")
    for name in names:
        source, dest = (snapshot / name).resolve(), target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            os.link(source, dest)
        except OSError:  # the cache is on another filesystem, or hard links are not allowed there
            shutil.copyfile(source, dest)
    return len(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, required=True)
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(BUILDERS),
        default=list(BUILDERS),
        help="which models to build (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "model_store" / "weights",
        help="weights root; each profile goes in <out>/<profile>/",
    )
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
