"""Transformer sizes in the names transformers' configs give them, and the tiny profile's toy sizes, written
once. Every tiny transformer tower has the same width and depth: as small as keeps each architecture's code
paths real (attention heads, MLP, a stack of layers)."""

from __future__ import annotations


def tower(*, width: int, layers: int, heads: int, mlp: int) -> dict:
    """A transformer stack's sizes as BERT, ViT, CLIP, BLIP and DPT configs all name them (``mlp``: the MLP's width)."""
    return {"hidden_size": width, "intermediate_size": mlp, "num_hidden_layers": layers, "num_attention_heads": heads}


TINY_TOWER = tower(width=32, layers=2, heads=2, mlp=64)
TINY_VIT = {**TINY_TOWER, "image_size": 32, "patch_size": 8}  # a toy ViT: 32 px in 8-px patches
