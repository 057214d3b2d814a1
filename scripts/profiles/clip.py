"""CLIP (model ``clip``): ViT-B/32 at full size for ``arch``, a 2-layer toy for ``tiny``."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from .tokenizer import build_tokenizer

PRETRAINED = {"clip": "openai/clip-vit-base-patch32"}


def config(profile: str, tokenizer) -> CLIPConfig:
    # the text model pools at the end-of-text token, so its id must be the tokenizer's
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    if profile == "tiny":
        text = dict(
            vocab_size=len(tokenizer),
            **special,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
        )
        vision = dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    # openai/clip-vit-base-patch32: transformers' CLIP defaults are exactly ViT-B/32
    return CLIPConfig(
        text_config=dict(vocab_size=49408, **special), vision_config=dict(patch_size=32), projection_dim=512
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
