"""Architecture layouts that more than one builder writes, with the sizes each profile passes in:
a ViT backbone config (depth's DINOv2, pose's ViTPose) and Stable Diffusion's VAE (sd's, and the x4
upscaler's)."""

from __future__ import annotations


def vit_backbone(
    model_type: str,
    *,
    image_size: int | list[int],
    patch_size: int | list[int],
    width: int,
    layers: int,
    heads: int,
    mlp_ratio: int,
    outputs: int,
    **extra,
) -> dict:
    """A ViT backbone config whose last ``outputs`` layers feed the head (a backbone's out index 0 is
    the embeddings, index i the i-th layer)."""
    stack = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=mlp_ratio)
    last = list(range(layers - outputs + 1, layers + 1))
    return dict(model_type=model_type, image_size=image_size, patch_size=patch_size, **stack, out_indices=last, **extra)


def sd_vae(blocks: tuple[int, ...], *, layers: int, sample_size: int, **extra) -> dict:
    """Stable Diffusion's ``AutoencoderKL``: 4 latent channels, one encoder and one decoder block per
    level of ``blocks`` (a 2x down/upsampling between levels: latents are 2 ** (levels - 1) times smaller)."""
    return dict(
        block_out_channels=blocks,
        layers_per_block=layers,
        latent_channels=4,
        sample_size=sample_size,
        **extra,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
    )
