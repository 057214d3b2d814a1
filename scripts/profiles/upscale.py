"""Super-resolution (model ``upscale``): Stable Diffusion's x4 upscaler (``StableDiffusionUpscalePipeline``).

The pipeline denoises latents at the INPUT's resolution: its UNet takes 7 channels (4 latent + the
noised low-resolution RGB image) and a noise-level class embedding; its VAE decodes those latents
4x larger (three levels, two upsamplings). Both random profiles write a complete pipeline directory
(unet, vae, text_encoder, tokenizer, scheduler, low_res_scheduler) with ``save_pretrained``, the
layout of the hub's ``stabilityai/stable-diffusion-x4-upscaler``, so the handler loads every
profile with one ``StableDiffusionUpscalePipeline.from_pretrained``.

- ``tiny``: a 3-level UNet (32/32/64 channels, cross-attention only on the upper levels, as the real
  one has it), a 3-level VAE (16/16/32: the same x4 geometry) and a 2-layer, 32-wide CLIP text
  encoder with the tokenizer of scripts/profiles/tokenizer.py: seconds to build, a 128x128 tile in
  well under a second per step on a CPU.
- ``arch``: the x4 upscaler's configs at full size (UNet 256/512/512/1024 with 1024-wide
  cross-attention and 1000 noise-level classes, VAE 128/256/512, OpenCLIP ViT-H/14's text tower),
  random weights.
- ``pretrained``: ``stabilityai/stable-diffusion-x4-upscaler`` (CreativeML OpenRAIL++-M licence).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from .layouts import sd_vae
from .tokenizer import build_tokenizer, full_text_tower, tiny_text_tower

PRETRAINED = {"upscale": "stabilityai/stable-diffusion-x4-upscaler"}

# stabilityai/stable-diffusion-x4-upscaler: scheduler/ (DDIM, v-prediction), low_res_scheduler/
# (DDPM: the noise added to the low-resolution image), model_index.json's max_noise_level, and the
# VAE's latent scaling factor
_BETAS = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000)
SCHEDULER = dict(**_BETAS, clip_sample=False, prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1)
LOW_RES_SCHEDULER = dict(**_BETAS, clip_sample=False, variance_type="fixed_small")
MAX_NOISE_LEVEL = 350
VAE_SCALING_FACTOR = 0.08333
NOISE_CLASSES = 1000  # the UNet's class embedding: one entry per noise level the low-res scheduler knows


def unet_config(profile: str) -> dict:
    shared = dict(in_channels=7, out_channels=4, num_class_embeds=NOISE_CLASSES, use_linear_projection=True)
    if profile == "tiny":
        return dict(
            **shared,
            sample_size=32,
            block_out_channels=(32, 32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            # self-attention only at the lowest level (1024 tokens for a 128x128 tile), as the
            # real upscaler keeps it off its high-resolution levels
            only_cross_attention=(True, True, False),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    # stabilityai/stable-diffusion-x4-upscaler unet/config.json
    return dict(
        **shared,
        sample_size=128,
        block_out_channels=(256, 512, 512, 1024),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=(True, True, True, False),
        cross_attention_dim=1024,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def vae_config(profile: str) -> dict:
    # 3 levels: latents x4 = pixels
    if profile == "tiny":
        return sd_vae((16, 16, 32), layers=1, sample_size=128, norm_num_groups=16, scaling_factor=VAE_SCALING_FACTOR)
    return sd_vae((128, 256, 512), layers=2, sample_size=256, norm_num_groups=32, scaling_factor=VAE_SCALING_FACTOR)


def text_config(profile: str, tokenizer) -> CLIPTextConfig:
    if profile == "tiny":
        return CLIPTextConfig(**tiny_text_tower(tokenizer))
    # OpenCLIP ViT-H/14's text tower (Stable Diffusion 2's), as the upscaler's text_encoder/config.json
    tower = full_text_tower(tokenizer, width=1024, layers=23, heads=16, projection_dim=512, hidden_act="gelu")
    return CLIPTextConfig(**tower)


def build_pipeline(profile: str) -> StableDiffusionUpscalePipeline:
    if profile not in ("tiny", "arch"):
        raise ValueError(f"upscale: no random-weight build for profile {profile!r}")
    tokenizer = build_tokenizer()
    return StableDiffusionUpscalePipeline(
        vae=AutoencoderKL(**vae_config(profile)),
        text_encoder=CLIPTextModel(text_config(profile, tokenizer)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**unet_config(profile)),
        low_res_scheduler=DDPMScheduler(**LOW_RES_SCHEDULER),
        scheduler=DDIMScheduler(**SCHEDULER),
        max_noise_level=MAX_NOISE_LEVEL,
    )


def build(profile: str, root: Path) -> None:
    build_pipeline(profile).save_pretrained(root / "upscale")
