"""CLIP (model ``clip``): ViT-B/32 at full size for ``arch``, a 2-layer toy for ``tiny``."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from .sizes import TINY_VIT
from .tokenizer import build_tokenizer, special_ids, tiny_text_tower

PRETRAINED = {"clip": "openai/clip-vit-base-patch32"}


def config(profile: str, tokenizer) -> CLIPConfig:
    if profile == "tiny":
        return CLIPConfig(text_config=tiny_text_tower(tokenizer), vision_config=TINY_VIT, projection_dim=32)
    # openai/clip-vit-base-patch32: transformers' CLIP defaults are exactly ViT-B/32
    return CLIPConfig(
        text_config=dict(vocab_size=49408, **special_ids(tokenizer)),
        vision_config=dict(patch_size=32),
        projection_dim=512,
    )


def build(profile: str, root: Path) -> None:
    out = root / "clip"
    tokenizer = build_tokenizer()
    cfg = config(profile, tokenizer)
    side = cfg.vision_config.image_size
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=tokenizer,
    )
    CLIPModel(cfg).save_pretrained(out)
    processor.save_pretrained(out)
