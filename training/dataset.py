"""An ``imagefolder`` dataset (Hugging Face's layout): images beside a ``metadata.jsonl`` whose lines
are ``{"file_name": ..., "text": ...}``. The studio's export writes one; any such folder works.

Everything is checked before training starts, so a bad dataset costs nothing and names its problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class DatasetError(ValueError):
    """A dataset that cannot be trained on; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    image: Path
    text: str


@dataclass(frozen=True)
class Dataset:
    root: Path
    examples: list[Example]
    export_id: str  # the studio's export id when the folder has one, else the content hash

    def split(self, held_out: int) -> tuple[list[Example], list[Example]]:
        """Training examples and ``held_out`` prompts kept out of training, for evaluation."""
        if held_out <= 0 or len(self.examples) <= held_out:
            return list(self.examples), []
        return list(self.examples[:-held_out]), list(self.examples[-held_out:])


def load_dataset(root: Path, max_text_length: int = 1000) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    metadata = root / "metadata.jsonl"
    if not metadata.is_file():
        raise DatasetError(
            f'{metadata}: missing (an imagefolder dataset has one line {{"file_name": ..., "text": ...}} per image)'
        )
    examples = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{metadata}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected an object with file_name and text")
        name, text = row.get("file_name"), row.get("text")
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{where}: file_name is missing")
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{where}: text is empty")
        if len(text) > max_text_length:
            raise DatasetError(f"{where}: text is {len(text)} characters; the limit is {max_text_length}")
        path = (root / name).resolve()
        if root.resolve() not in path.parents:
            raise DatasetError(f"{where}: file_name {name!r} points outside the dataset")
        try:
            with Image.open(path) as image:
                image.verify()
        except FileNotFoundError:
            raise DatasetError(f"{where}: {name} does not exist") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DatasetError(f"{where}: {name} is not a readable image ({exc})") from None
        examples.append(Example(path, text.strip()))
    if not examples:
        raise DatasetError(f"{metadata}: no examples")
    return Dataset(root, examples, _export_id(root, examples))


def _export_id(root: Path, examples: list[Example]) -> str:
    """The studio writes ``export.json`` with its export id; otherwise the same kind of hash here."""
    export = root / "export.json"
    if export.is_file():
        try:
            value = json.loads(export.read_text()).get("export_id")
            if isinstance(value, str) and value:
                return value
        except (ValueError, AttributeError):
            pass
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.text.encode())
        digest.update(hashlib.sha256(example.image.read_bytes()).digest())
    return digest.hexdigest()
