"""Turn responses into pictures a person wants to look at, and save them with the JSON."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
]


def b64_image(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def overlay_masks(
    image: Image.Image,
    masks: list[str],
    labels: list[str] | None = None,
    boxes: list[list[float]] | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """Each mask tinted in its own colour over the image, its label at its box's corner."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for i, mask_b64 in enumerate(masks):
        mask = np.asarray(b64_image(mask_b64).convert("L").resize(image.size)) > 127
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.array(_PALETTE[i % len(_PALETTE)], np.float32)
    result = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for i, box in enumerate(boxes or []):
        colour = _PALETTE[i % len(_PALETTE)]
        draw.rectangle(box, outline=colour, width=max(1, image.width // 256))
        if labels and i < len(labels):
            draw.text((box[0] + 2, box[1] + 1), labels[i], fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return result


def save_pipeline(result: dict[str, Any], out: Path, name: str = "pipeline") -> list[Path]:
    """Generated/input image, masks with their CLIP labels, depth colormap, pose overlay, and the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    image_b64 = result.get("generated_image") or result.get("image")
    if not isinstance(image_b64, str):
        raise ValueError("a pipeline result has a generated_image or an image")
    image = b64_image(image_b64).convert("RGB")
    saved.append(_save(image, out / f"{name}_image.png"))
    segmentation = result.get("segmentation") or result.get("basic_segmentation") or {}
    if segmentation.get("masks"):
        regions = segmentation.get("segmented_regions") or []
        labels = [r["clip_analysis"]["max_confident_concept"] for r in regions]
        boxes = [r.get("box") for r in regions] if regions and regions[0].get("box") else segmentation.get("boxes")
        saved.append(_save(overlay_masks(image, segmentation["masks"], labels, boxes), out / f"{name}_segments.png"))
    if "depth" in result:
        saved.append(_save(b64_image(result["depth"]["colormap"]), out / f"{name}_depth.png"))
    if "pose" in result:
        saved.append(_save(b64_image(result["pose"]["overlay"]), out / f"{name}_pose.png"))
    for prior in ("depth", "pose"):  # the ControlNet inputs, where the answer carries them
        if isinstance(result.get(prior), dict) and result[prior].get("control_image"):
            saved.append(_save(b64_image(result[prior]["control_image"]), out / f"{name}_{prior}_control.png"))
    saved.append(save_json(result, out / f"{name}.json"))
    return saved


def save_interpret(result: dict[str, Any], source: Image.Image, out: Path, name: str = "interpret") -> list[Path]:
    """Each sample (``<name>_rank<r>_<priors>_<seed>.png``), each prior's control image, the contact
    sheet and the JSON response."""
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for prior, answer in result["priors"].items():
        saved.append(_save(b64_image(answer["control_image"]), out / f"{name}_{prior}.png"))
    for sample in sorted(result["samples"], key=lambda s: s["rank"]):
        path = out / f"{name}_rank{sample['rank']}_{'+'.join(sample['priors'])}_{sample['seed']}.png"
        saved.append(_save(b64_image(sample["image"]), path))
    saved.append(_save(contact_sheet(result, source), out / f"{name}_contact_sheet.png"))
    saved.append(save_json(result, out / f"{name}.json"))
    return saved


def contact_sheet(result: dict[str, Any], source: Image.Image, tile: int = 192, columns: int = 4) -> Image.Image:
    """One picture of an interpretation: the source and its priors on the first row, the caption
    under them, then the samples in rank order, each labelled with its rank, priors, seed and scores."""
    font = _font(max(11, tile // 16))
    line = font.size + 4 if hasattr(font, "size") else 15
    top = [("source", source)] + [
        (prior, b64_image(answer["control_image"])) for prior, answer in result["priors"].items()
    ]
    ranked = sorted(result["samples"], key=lambda s: s["rank"])
    columns = max(columns, len(top))
    sample_rows = -(-len(ranked) // columns)
    caption = result["caption"]
    caption_text = f"caption{' (edited)' if caption.get('edited') else ''}: {caption['text']}"
    caption_lines = _wrap(caption_text, font, columns * tile - 8)
    label = 3 * line
    height = (tile + line) + len(caption_lines) * line + 6 + sample_rows * (tile + label)
    sheet = Image.new("RGB", (columns * tile, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for column, (title, picture) in enumerate(top):
        sheet.paste(_thumbnail(picture, tile), (column * tile, 0))
        draw.text((column * tile + 4, tile + 2), title, fill=(235, 235, 235), font=font)
    y = tile + line
    for text in caption_lines:
        draw.text((4, y), text, fill=(255, 220, 120), font=font)
        y += line
    y += 6
    for i, sample in enumerate(ranked):
        x, row_y = (i % columns) * tile, y + (i // columns) * (tile + label)
        sheet.paste(_thumbnail(b64_image(sample["image"]), tile), (x, row_y))
        scores = sample["scores"]
        colour = (120, 230, 120) if sample["rank"] == 0 else (235, 235, 235)
        lines = (
            f"#{sample['rank']} {'+'.join(sample['priors'])} seed {sample['seed']}",
            f"caption {scores['caption']:.3f}",
            f"source {scores['source']:.3f}",
        )
        for n, text in enumerate(lines):
            draw.text((x + 4, row_y + tile + 2 + n * line), text, fill=colour, font=font)
    return sheet


def _thumbnail(image: Image.Image, side: int) -> Image.Image:
    """``image`` fitted into a ``side`` square (aspect kept); small images are enlarged without blur."""
    image = image.convert("RGB")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    square = Image.new("RGB", (side, side), (24, 24, 24))
    square.paste(image.resize(size, resample), ((side - size[0]) // 2, (side - size[1]) // 2))
    return square


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (FreeType builds)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _wrap(text: str, font: Any, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current][:4]  # a runaway caption (random weights) is cut, not drawn down the page


def save_json(result: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(result, indent=2))
    return path


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path
