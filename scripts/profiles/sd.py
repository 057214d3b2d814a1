"""Stable Diffusion (model ``sd``): SD v1.4's architecture at full size for ``arch``, a toy for ``tiny``.

Both write a complete ``StableDiffusionPipeline`` directory (unet, vae, text_encoder, tokenizer,
scheduler; no safety checker) with ``save_pretrained``, the layout the hub's
``CompVis/stable-diffusion-v1-4`` has, so the handler loads every profile with one
``StableDiffusionPipeline.from_pretrained``.

tiny: a 2-level UNet (32/64 channels) with cross-attention, a 4-level VAE with SD's geometry (scale
factor 8, so the same sizes are legal) and a 2-layer CLIP text encoder: 64x64 images (8x8 latents)
at a few milliseconds per step on a CPU, and a 512x512 one still well under a second per step.
arch: CompVis/stable-diffusion-v1-4's configs (UNet 320/640/1280/1280 with 768-wide
cross-attention, VAE 128/256/512/512, CLIP ViT-L/14 text encoder), random weights, ~1.07 B
parameters, ~4 GB in fp32.

ControlNets: one ``ControlNetModel`` per control type in ``sd/controlnet/<type>/``,
made with ``ControlNetModel.from_unet`` from the profile's UNet (so arch is SD1.5's ControlNet
architecture, ~361 M parameters, ~1.4 GB in fp32 each) with a conditioning embedding that takes the
control image down to latent size: one entry more than the VAE's downsamplings (4 for a factor of 8).
``from_unet`` zero-initialises the "zero convolutions" (the residual projections and the embedding's
last conv), as training starts; random weights there instead, so a random ControlNet changes the
image and the tests can see the control image act. pretrained: lllyasviel's ControlNet 1.1 for SD 1.5
(openrail licence).
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import torch
from diffusers import AutoencoderKL, ControlNetModel, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from handlers.model_settings import ControlType

from .layouts import sd_vae
from .tokenizer import build_tokenizer, full_text_tower, tiny_text_tower

CONTROL_TYPES: tuple[str, ...] = get_args(ControlType)  # every type the handler knows; the yaml picks what it loads

# subdir under the profile -> hub repo; the ControlNets nest inside sd/ (built after it)
PRETRAINED = {
    "sd": "CompVis/stable-diffusion-v1-4",
    "sd/controlnet/depth": "lllyasviel/control_v11f1p_sd15_depth",
    "sd/controlnet/pose": "lllyasviel/control_v11p_sd15_openpose",
    "sd/controlnet/canny": "lllyasviel/control_v11p_sd15_canny",
}

# CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json: the pipeline's own default
# scheduler, and the noise schedule every alternative the handler offers is built from.
SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)


def unet_config(profile: str) -> dict:
    if profile == "tiny":
        return dict(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            # attention on the half-resolution level only (as diffusers' own test UNets): a
            # 512x512 image is then 1024 attention tokens, not 4096, so even the largest legal
            # batch runs on a CPU inside responseTimeout
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    # v1-4 unet/config.json; UNet2DConditionModel's defaults are v1's but for these two
    return dict(sample_size=64, cross_attention_dim=768)


def vae_config(profile: str) -> dict:
    if profile == "tiny":
        # 4 levels: scale factor 8, as SD's; no mid-block attention (cheap at 512x512)
        return sd_vae((16, 16, 32, 32), layers=1, sample_size=64, norm_num_groups=16, mid_block_add_attention=False)
    return sd_vae((128, 256, 512, 512), layers=2, sample_size=512)  # v1-4 vae/config.json


def text_config(profile: str, tokenizer) -> CLIPTextConfig:
    if profile == "tiny":
        return CLIPTextConfig(**tiny_text_tower(tokenizer))
    # openai/clip-vit-large-patch14's text tower, as v1-4 text_encoder/config.json
    tower = full_text_tower(tokenizer, width=768, layers=12, heads=12, projection_dim=768, hidden_act="quick_gelu")
    return CLIPTextConfig(**tower)


def controlnet_embedding_channels(profile: str) -> tuple[int, ...]:
    """The conditioning embedding's widths: the first conv's, then one per stride-2 step, and the VAE
    downsamples len(block_out_channels) - 1 times, so the control image arrives at latent size."""
    widths = (8, 16, 16, 32) if profile == "tiny" else (16, 32, 96, 256)  # arch: SD1.5 ControlNet's
    downsamplings = len(vae_config(profile)["block_out_channels"]) - 1
    assert len(widths) == downsamplings + 1, "one embedding width more than the VAE's downsamplings"
    return widths


def build_controlnet(unet: UNet2DConditionModel, profile: str) -> ControlNetModel:
    """A ControlNet for ``unet``'s architecture with random weights in its zero convolutions too."""
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=controlnet_embedding_channels(profile))
    zeroed = [net.controlnet_cond_embedding.conv_out, net.controlnet_mid_block, *net.controlnet_down_blocks]
    with torch.no_grad():
        for conv in zeroed:
            torch.nn.init.normal_(conv.weight, std=0.05)
            torch.nn.init.normal_(conv.bias, std=0.05)
    return net


def build(profile: str, root: Path) -> None:
    if profile not in ("tiny", "arch"):
        raise ValueError(f"sd: no random-weight build for profile {profile!r}")
    tokenizer = build_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_config(profile)),
        text_encoder=CLIPTextModel(text_config(profile, tokenizer)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**unet_config(profile)),
        scheduler=PNDMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "sd")
    for control_type in CONTROL_TYPES:  # each its own random draw (seeded once by build_models.py)
        build_controlnet(pipe.unet, profile).save_pretrained(root / "sd" / "controlnet" / control_type)
