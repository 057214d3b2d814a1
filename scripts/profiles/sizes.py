"""The tiny profile's toy sizes, written once. Every tiny transformer tower has the same width and depth:
as small as keeps each architecture's code paths real (attention heads, MLP, a stack of layers)."""

from __future__ import annotations

TINY_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_VIT = {**TINY_TOWER, "image_size": 32, "patch_size": 8}  # a toy ViT: 32 px in 8-px patches
