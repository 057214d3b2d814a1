"""The chosen samples as a Hugging Face ``imagefolder`` dataset: what fine-tuning reads.

``DIR/metadata.jsonl`` has one row per choice (a sample two people chose is two rows, each with its
own picture file, so each choice weighs once): ``file_name``, ``text`` (the caption the sample was
made from), ``rating`` (1-5), ``chosen_by``, ``run_id``, and what else describes the sample (its
index, seed, priors, scores, the sd model that made it, whether the caption was edited).

The export id is the sha256 of the dataset's contents: of the sorted lines ``<file name> <sha256 of
its bytes>`` for every file, metadata.jsonl included. The same choices give the same id (no time
stamp is inside the dataset); DIR/export.json records it beside the list of files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .store import Store

MANIFEST = "export.json"
METADATA = "metadata.jsonl"


class ExportError(RuntimeError):
    pass


def export_id(files: dict[str, str]) -> str:
    """sha256 of ``"<name> <sha256>\\n"`` for each file, sorted by name."""
    listing = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def export_dataset(store: Store, out: Path) -> dict[str, Any]:
    """Write the dataset into ``out`` (new, empty, or a previous export, which is replaced)."""
    out = Path(out)
    _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    rows = []
    for choice in store.chosen_samples():
        name = f"{choice['run_id'][:12]}-{choice['idx']}-{choice['choice_id']}.{choice['ext']}"
        source = store.image_path(choice["image_sha256"], choice["ext"])
        shutil.copyfile(source, out / name)
        files[name] = choice["image_sha256"]
        rows.append(
            {
                "file_name": name,
                "text": choice["caption"],
                "rating": choice["rating"],
                "chosen_by": choice["chosen_by"],
                "run_id": choice["run_id"],
                "sample_index": choice["idx"],
                "seed": choice["seed"],
                "priors": json.loads(choice["priors"]),
                "rank": choice["rank"],
                "score_caption": choice["score_caption"],
                "score_source": choice["score_source"],
                "sd_model": choice["sd_model"],
                "caption_edited": bool(choice["caption_edited"]),
            }
        )
    metadata = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode()
    (out / METADATA).write_bytes(metadata)
    files[METADATA] = hashlib.sha256(metadata).hexdigest()
    manifest = {
        "export_id": export_id(files),
        "rows": len(rows),
        "format": "imagefolder",
        "id_rule": "sha256 of the sorted lines '<file name> <sha256 of its bytes>' of every file",
        "files": dict(sorted(files.items())),
        "database": str(store.db_path),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _clear(out: Path) -> None:
    """Remove a previous export's files; refuse a folder that holds anything else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out}: is not a folder")
    listed: set[str] = set()
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            listed = set(json.loads(manifest.read_text())["files"]) | {MANIFEST}
        except (ValueError, KeyError, TypeError):
            raise ExportError(f"{manifest}: is not a studio export's manifest; choose another folder") from None
    others = sorted(path.name for path in out.iterdir() if path.name not in listed)
    if others:
        raise ExportError(
            f"{out}: holds files that are not a studio export ({', '.join(others[:5])}); choose an empty or new folder"
        )
    for name in listed:
        (out / name).unlink(missing_ok=True)
