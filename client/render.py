"""Turn responses into pictures a person wants to look at, and save them with the JSON."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def b64_image(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def overlay_masks(image: Image.Image, masks: list[str], labels: list[str] | None = None,
                  boxes: list[list[float]] | None = None, alpha: float = 0.45) -> Image.Image:
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
    saved.append(save_json(result, out / f"{name}.json"))
    return saved


def save_json(result: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(result, indent=2))
    return path


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path
