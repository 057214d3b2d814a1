"""The ``pretrained`` profile from an offline Hugging Face cache: build, archive, serve, one request each.

No hub weights can be downloaded here, so the test writes a hub cache itself: the tiny profile's
weights (each builder's ``build("tiny", root)``, as ``scripts/build_models.py`` runs it) stored
under the REAL repo id of every directory a builder's ``PRETRAINED`` names (scripts/profiles/*.py),
in the hub cache's layout
(``models--<org>--<name>/{refs/main, blobs/<hash>, snapshots/<rev>/<file> -> ../../blobs/<hash>}``,
subfolders as the builders write them, which is as the hub repos hold them). Then, with
``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``: ``scripts/build_models.sh --profile
pretrained``, ``scripts/archive.sh --profile pretrained`` and a real TorchServe on those archives,
answering one real request per model. Every repo id, subfolder and file name the pretrained path
expects is then read the way an air-gapped site reads its populated cache.

The cache is driven by the builders alone: a new model (or a new directory in a builder's
``PRETRAINED``) joins this test once its ``build("tiny", root)`` writes that directory. A model
with no entry in ``REQUESTS`` gets ``{"image": <png>}``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from harness import png_b64, sample_image
from PIL import Image
from server import TorchServe

REPO = Path(__file__).resolve().parents[2]
SERVED = sorted(p.parent.name for p in (REPO / "models").glob("*/model-config.yaml"))
IMAGE = png_b64(sample_image(64, 48))


def _image(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def _check_sd(body: dict[str, Any]) -> None:
    assert body["seeds"] == [3] and _image(body["images"][0]).size[0] >= 64


def _check_clip(body: dict[str, Any]) -> None:
    assert body["concepts"] == ["a cat", "a dog"] and abs(sum(body["confidence_scores"]) - 1) < 1e-4


def _check_sam(body: dict[str, Any]) -> None:
    assert len(body["masks"]) == 1 and _image(body["masks"][0]).size == (64, 48)


def _check_depth(body: dict[str, Any]) -> None:
    assert _image(body["depth"]).size == (64, 48) and body["max"] >= body["min"]


def _check_pose(body: dict[str, Any]) -> None:
    assert body["boxes_from"] == "roi" and len(body["people"][0]["keypoints"]) == 17


def _check_caption(body: dict[str, Any]) -> None:
    assert body["model"] == "caption" and body["caption"].startswith("a photograph of")


def _check_interpret(body: dict[str, Any]) -> None:
    # combined mode: one MultiControlNet sd request through all three ControlNets' weights
    assert list(body["priors"]) == ["depth", "pose", "canny"] and len(body["samples"]) == 1
    assert _image(body["samples"][0]["image"]).size == (64, 64)


def _check_upscale(body: dict[str, Any]) -> None:
    assert body["model"] == "upscale" and body["seed"] == 5 and _image(body["image"]).size == (256, 192)


def _check_pipeline(body: dict[str, Any]) -> None:
    assert body["clip_analysis"]["concepts"] == ["a cat", "a dog"]
    assert len(body["basic_segmentation"]["masks"]) == 1
    assert _image(body["depth"]["depth"]).size == (64, 48) and body["pose"]["people"]


# model -> (request body, what its answer must show); models without an entry get {"image": IMAGE}
REQUESTS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], None]]] = {
    "sd": ({"prompt": "a lighthouse at dusk", "steps": 2, "seed": 3}, _check_sd),
    "clip": ({"image": IMAGE, "texts": ["a cat", "a dog"]}, _check_clip),
    "sam": ({"image": IMAGE, "roi": [[4, 4, 40, 40]]}, _check_sam),
    "depth": ({"image": IMAGE}, _check_depth),
    "pose": ({"image": IMAGE, "roi": [[4, 4, 40, 44]]}, _check_pose),
    "caption": ({"image": IMAGE, "prompt": "a photograph of", "max_new_tokens": 5}, _check_caption),
    "interpret": (
        {
            "image": png_b64(sample_image(64, 64)),
            "priors": ["depth", "pose", "canny"],
            "mode": "combined",
            "samples": 1,
            "steps": 2,
        },
        _check_interpret,
    ),
    "upscale": ({"image": IMAGE, "prompt": "a cat", "steps": 2, "seed": 5}, _check_upscale),
    "pipeline": (
        {"image": IMAGE, "texts": ["a cat", "a dog"], "roi": [[4, 4, 40, 40]], "priors": ["depth", "pose"]},
        _check_pipeline,
    ),
}


# --- the hub cache ---------------------------------------------------------------------------------
def pretrained_directories() -> dict[str, str]:
    """Every builder's ``PRETRAINED``: {directory under the profile's root: hub repo id}."""
    from profiles import BUILDERS

    directories: dict[str, str] = {}
    for builder in BUILDERS.values():
        directories.update(builder.PRETRAINED)
    return directories


def write_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """``files`` as the hub cache stores a repo's ``main``; returns the snapshot folder."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    revision = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex commit id; refs/main names it
    snapshot = storage / "snapshots" / revision
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))  # as the hub writes them: relative links into blobs/
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(revision)  # no newline, as the hub writes it
    return snapshot


def write_hub_cache(cache: Path, tiny_root: Path) -> dict[str, Path]:
    """The tiny weights under every ``PRETRAINED`` repo id; {directory: snapshot folder}."""
    directories = pretrained_directories()
    snapshots = {}
    for directory, repo_id in directories.items():
        source = tiny_root / directory
        assert source.is_dir(), (
            f"build('tiny') writes no {directory}/ for {repo_id}: every directory a builder's "
            "PRETRAINED names needs a tiny twin (scripts/profiles/__init__.py)"
        )
        # a directory nested in this one is another repo (sd/controlnet/<type> inside sd/)
        nested = [Path(other) for other in directories if other != directory and Path(other).is_relative_to(directory)]
        files = {}
        for path in sorted(source.rglob("*")):
            if path.is_file() and not any(path.relative_to(tiny_root).is_relative_to(n) for n in nested):
                files[path.relative_to(source).as_posix()] = path.read_bytes()
        assert files, f"build('tiny') wrote an empty {directory}/"
        snapshots[directory] = write_repo(cache, repo_id, files)
    return snapshots


# --- the test -------------------------------------------------------------------------------------
def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def offline_env(cache: Path, **extra: str) -> dict[str, str]:
    # HF_HOME too: nothing of this machine's own Hugging Face state (token, other caches) is read
    return {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(cache.parent / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def test_pretrained_profile_builds_and_serves_from_an_offline_cache(tmp_path, monkeypatch):
    from build_models import BUILDERS, build_random

    tiny = tmp_path / "tiny"
    for name in BUILDERS:  # in this process (seconds): the libraries are already imported
        build_random("tiny", name, tiny)
    cache = tmp_path / "hf-cache"
    snapshots = write_hub_cache(cache, tiny)

    weights = tmp_path / "weights"
    built = run([REPO / "scripts" / "build_models.sh", "--profile", "pretrained", "--out", weights], offline_env(cache))
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    for directory, snapshot in snapshots.items():
        for file in (path for path in snapshot.rglob("*") if path.is_symlink()):
            target = weights / "pretrained" / directory / file.relative_to(snapshot)
            # hard-linked from the cache's blob (one copy on disk), not a link back into the cache
            assert target.is_file() and not target.is_symlink(), target
            assert os.path.samefile(target, file.resolve()), f"{target} is not the cache's blob"

    store = tmp_path / "model_store"
    archived = run(
        [REPO / "scripts" / "archive.sh", "--profile", "pretrained", "--store", store],
        offline_env(cache, WEIGHTS_ROOT=str(weights)),
    )
    assert archived.returncode == 0, archived.stderr[-3000:]
    for name in SERVED:
        with zipfile.ZipFile(store / f"{name}.mar") as archive:
            handler = yaml.safe_load(archive.read("model-config.yaml"))["handler"]
        assert handler["profile"] == "pretrained"
        if handler.get("weights"):
            assert Path(handler["weights_dir"]) == (weights / "pretrained" / handler["weights"]).resolve()

    # the server's workers inherit the environment: offline too
    for key, value in offline_env(cache).items():
        if key.startswith("HF_"):
            monkeypatch.setenv(key, value)
    server = TorchServe(tmp_path / "run", store).start()
    try:
        with ThreadPoolExecutor(len(SERVED)) as pool:  # the workers load side by side
            list(pool.map(server.register, SERVED))
        for name in SERVED:
            body, check = REQUESTS.get(name, ({"image": IMAGE}, lambda answer: None))
            response = server.predict(name, body, timeout=300)
            hint = "" if name in REQUESTS else " (no entry in REQUESTS: add one)"
            assert response.status_code == 200, (f"{name}{hint}", response.text[:2000])
            check(response.json())
    finally:
        server.stop()


def test_cache_writer_follows_the_hub_layout(tmp_path):
    """The cache written above is one huggingface_hub itself resolves offline (refs/main -> snapshot)."""
    snapshot = write_repo(
        tmp_path, "org/some-model", {"config.json": json.dumps({"a": 1}).encode(), "sub/weights.bin": b"\x00\x01"}
    )
    code = "import sys, huggingface_hub as h; print(h.snapshot_download('org/some-model', cache_dir=sys.argv[1]))"
    found = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert found.returncode == 0, found.stderr[-2000:]
    assert Path(found.stdout.strip()) == snapshot
    assert (snapshot / "sub" / "weights.bin").read_bytes() == b"\x00\x01"
