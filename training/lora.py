"""LoRA on Stable Diffusion's UNet: the recipe of diffusers' ``train_text_to_image_lora`` example.

Each step: encode a batch of images with the VAE (× its scaling factor), add noise at random
timesteps with the training (DDPM) scheduler, predict the noise with the UNet conditioned on the
captions' text embeddings, and take the MSE against the noise (or the velocity, for v-prediction
weights). Only the LoRA matrices on the UNet's attention projections train; the VAE, the text
encoder and the UNet's own weights stay frozen. Plain functions with explicit arguments, so a test,
the CLI and a notebook run the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from .dataset import Example

ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save/load_lora_weights use
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the attention projections, as the example


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    rank: int
    learning_rate: float
    batch_size: int
    seed: int
    resolution: int


def load_pipeline(weights: Path, device: torch.device) -> StableDiffusionPipeline:
    """The base model, frozen, in float32 (LoRA training in fp16 needs loss scaling; not worth it here)."""
    pipe = StableDiffusionPipeline.from_pretrained(
        weights, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    return pipe


def native_resolution(pipe: StableDiffusionPipeline) -> int:
    size = pipe.unet.config.sample_size
    return int((size if isinstance(size, int) else size[0]) * pipe.vae_scale_factor)


def add_lora(pipe: StableDiffusionPipeline, rank: int) -> list[torch.nn.Parameter]:
    """A LoRA adapter of ``rank`` on the UNet; returns the parameters that train."""
    pipe.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    )
    return [p for p in pipe.unet.parameters() if p.requires_grad]


def pixels(examples: Sequence[Example], resolution: int) -> torch.Tensor:
    """Images resized (shorter side) and centre-cropped to ``resolution``, scaled to [-1, 1], NCHW."""
    batch = []
    for example in examples:
        with Image.open(example.image) as opened:
            image = opened.convert("RGB")
            scale = resolution / min(image.size)
            image = image.resize(
                (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
                Image.Resampling.BICUBIC,
            )
            left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
            image = image.crop((left, top, left + resolution, top + resolution))
            batch.append(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


def text_embeddings(pipe: StableDiffusionPipeline, texts: Sequence[str]) -> torch.Tensor:
    tokens = pipe.tokenizer(
        list(texts),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return pipe.text_encoder(tokens.input_ids.to(pipe.device))[0]


def latents(pipe: StableDiffusionPipeline, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """VAE latents × scaling factor: sampled during training, the distribution's mode for evaluation."""
    with torch.no_grad():
        distribution = pipe.vae.encode(images.to(pipe.device)).latent_dist
        sample = distribution.sample(generator) if generator is not None else distribution.mode()
    return sample * pipe.vae.config.scaling_factor


def denoising_loss(
    pipe: StableDiffusionPipeline,
    scheduler: DDPMScheduler,
    clean: torch.Tensor,
    embeddings: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """MSE between the UNet's prediction and its target at the given noise and timesteps."""
    noisy = scheduler.add_noise(clean, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = noise
    prediction = pipe.unet(noisy, timesteps, embeddings, return_dict=False)[0]
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


def training_scheduler(pipe: StableDiffusionPipeline) -> DDPMScheduler:
    """The noise schedule the weights were trained with, as the DDPM scheduler the recipe uses."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def fixed_batch_loss(pipe: StableDiffusionPipeline, examples: Sequence[Example], resolution: int, seed: int) -> float:
    """The loss on one fixed batch: deterministic latents, noise and timesteps from ``seed``.

    The per-step training loss is too noisy to compare (random noise and timesteps each step);
    the same batch before and after training says whether the adapter learned the data.
    """
    scheduler = training_scheduler(pipe)
    generator = torch.Generator("cpu").manual_seed(seed)
    clean = latents(pipe, pixels(examples, resolution), None)
    noise = torch.randn(clean.shape, generator=generator).to(pipe.device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator).to(
        pipe.device
    )
    embeddings = text_embeddings(pipe, [example.text for example in examples])
    with torch.no_grad():
        return float(denoising_loss(pipe, scheduler, clean, embeddings, noise, timesteps))


def train(
    pipe: StableDiffusionPipeline,
    examples: Sequence[Example],
    config: TrainConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """``config.steps`` optimizer steps of LoRA training; ``on_step(step, loss)`` after each one."""
    torch.manual_seed(config.seed)
    generator = torch.Generator("cpu").manual_seed(config.seed)
    parameters = add_lora(pipe, config.rank)
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate)
    scheduler = training_scheduler(pipe)
    images = pixels(examples, config.resolution)
    embeddings = text_embeddings(pipe, [example.text for example in examples])
    pipe.unet.train()
    losses = []
    for step in range(1, config.steps + 1):
        rows = torch.randint(0, len(examples), (config.batch_size,), generator=generator)
        clean = latents(pipe, images[rows], generator)
        noise = torch.randn(clean.shape, generator=generator).to(pipe.device)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator
        ).to(pipe.device)
        loss = denoising_loss(pipe, scheduler, clean, embeddings[rows.to(embeddings.device)], noise, timesteps)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if on_step is not None:
            on_step(step, losses[-1])
    pipe.unet.eval()
    return losses


def save_adapter(pipe: StableDiffusionPipeline, directory: Path) -> Path:
    """The adapter alone (a few MB), in diffusers' LoRA format: ``load_lora_weights`` reads it back."""
    directory.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=layers, safe_serialization=True)
    return directory / ADAPTER_FILE


def generate(
    pipe: StableDiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int], steps: int, resolution: int
) -> list[Image.Image]:
    """Sample images for fixed prompts and seeds (the same ones every K steps and for base vs adapter)."""
    images = []
    with torch.inference_mode():
        for prompt, seed in zip(prompts, seeds):
            generator = torch.Generator("cpu").manual_seed(seed)
            images.extend(
                pipe(prompt, num_inference_steps=steps, width=resolution, height=resolution, generator=generator).images
            )
    return images


def clip_scores(clip_weights: Path, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
    """CLIP image–text cosine similarity of each image with its text (the `clip` model's weights)."""
    from transformers import CLIPModel, CLIPProcessor

    from handlers.common.compat import pooled_features

    processor = CLIPProcessor.from_pretrained(clip_weights)
    model = CLIPModel.from_pretrained(clip_weights).eval()
    with torch.inference_mode():
        inputs = processor(text=list(texts), images=list(images), return_tensors="pt", padding=True, truncation=True)
        image = pooled_features(model.get_image_features(pixel_values=inputs["pixel_values"])).float()
        text = pooled_features(
            model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        ).float()
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return (image * text).sum(dim=-1).tolist()
