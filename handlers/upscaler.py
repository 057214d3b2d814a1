"""``upscale``: x4 super-resolution with diffusers' ``StableDiffusionUpscalePipeline``, tiled and batched.

Request ``{"image", "prompt"?, "steps"?, "guidance_scale"?, "noise_level"?, "seed"?, "tile"?}`` ->
``{"request_id", "image": b64 png (4 x the input's width and height), "seed", "model"}``. Defaults
and limits are the ``handler`` settings of models/upscale/model-config.yaml.

The upscaler's UNet denoises latents at the INPUT's resolution (the VAE decodes them 4x larger), so
its memory and time grow with the input's area, and its attention with the square of it. An input
larger than ``tile`` px on a side is therefore split into tiles of at most ``tile`` x ``tile`` input
px that overlap by ``tile_overlap`` px; each tile is upscaled on its own and the tiles are blended
with linear ramps across the overlaps. An input whose sides are not multiples of the UNet's size
multiple is padded by repeating its edge and the output cropped back to exactly 4x the input.
``limits.max_output_pixels`` bounds the output, and with it the response's size.

Seeds: tile ``j`` of a request seeded ``seed`` draws its noise (the low-resolution image's and the
initial latents) from its own CPU ``torch.Generator`` seeded ``seed + j`` (mod 2**32), so an input
that fits one tile is exactly diffusers' pipeline called with ``manual_seed(seed)``.

Batching: the tiles of every request of a TorchServe batch that share (tile width, tile height,
steps, guidance_scale, noise_level) run as one pipeline call (at most ``max_tiles_per_call`` tiles
a call), each with its own prompt embeddings and generator. Prompts are encoded one at a time and
the VAE decodes one tile at a time; with ``exact_seeds`` (the default on CPU) the UNet also runs
each tile's guidance pair as its own forward (as ``sd`` does), so a seed gives the bit-identical
image alone or batched.
"""

from __future__ import annotations

import contextlib
import functools
import math
import secrets
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionUpscalePipeline
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from PIL import Image

from handlers.common import (
    InputError,
    LimitError,
    check_number,
    decode_image,
    encode_png,
    get_float,
    get_int,
    get_str,
    reject_unknown,
    require,
    weights_dir,
)
from handlers.common.base import Batch, BatchHandler, Result
from handlers.model_settings import UpscaleSettings
from handlers.text_to_image import SEED_SPACE, forward_per_image

FIELDS = ("image", "prompt", "steps", "guidance_scale", "noise_level", "seed", "tile")
SCALE = 4  # the x4 upscaler's VAE: latents at the input's size decode to 4x its sides


class Upscaler(BatchHandler):
    model_label = "upscale"
    settings: UpscaleSettings

    # --- loading ---------------------------------------------------------------------------------
    def load(self, context: Any) -> None:
        self.pipe = StableDiffusionUpscalePipeline.from_pretrained(weights_dir(context), dtype=self.dtype)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.vae.enable_slicing()  # one tile per VAE decode: batch-invariant, and bounded memory
        # the UNet halves its input len(blocks) - 1 times and the VAE multiplies by its scale factor
        # (4): tile sides must survive both exactly
        levels = len(self.pipe.unet.config.block_out_channels) - 1
        self.size_multiple = max(2**levels, int(self.pipe.vae_scale_factor))
        if int(self.pipe.vae_scale_factor) != SCALE:
            raise RuntimeError(f"upscale: the weights' VAE scales by {self.pipe.vae_scale_factor}, not {SCALE}")
        self._check_settings(int(self.pipe.config.max_noise_level))
        self._unet_forward = self.pipe.unet.forward
        self.exact_seeds = self.settings.exact_seeds is True or (
            self.settings.exact_seeds == "auto" and self.device.type != "cuda"
        )
        self.pipeline_calls = 0  # observable in tests: one per group of same-shaped tiles

    def _check_settings(self, pipeline_max_noise: int) -> None:
        """Settings that do not fit these weights fail at load, naming the key, not per request."""
        settings, limits = self.settings, self.settings.limits
        if limits.max_noise_level > pipeline_max_noise:
            raise RuntimeError(
                f"model-config.yaml: handler.limits.max_noise_level {limits.max_noise_level} is over "
                f"the pipeline's max_noise_level {pipeline_max_noise}"
            )
        for key, value in (
            ("tile", settings.tile),
            ("limits.min_tile", limits.min_tile),
            ("limits.max_tile", limits.max_tile),
        ):
            if value % self.size_multiple:
                raise RuntimeError(
                    f"model-config.yaml: handler.{key} {value} is not a multiple of "
                    f"{self.size_multiple} (the UNet's and VAE's size multiple)"
                )

    # --- request parsing -------------------------------------------------------------------------
    def parse(self, payload: dict[str, Any]) -> dict[str, Any]:
        reject_unknown(payload, FIELDS)
        settings, limits = self.settings, self.settings.limits
        image = decode_image(require(payload, "image"), limits)
        width, height = image.size
        if SCALE * width * SCALE * height > limits.max_output_pixels:
            raise LimitError(
                "image",
                f"is {width}x{height}: the {SCALE}x output would be {SCALE * width}x"
                f"{SCALE * height} = {SCALE * width * SCALE * height} pixels; the limit is "
                f"{limits.max_output_pixels}",
                code=413,
            )
        prompt = get_str(payload, "prompt", default=settings.prompt, max_len=limits.max_prompt_length, allow_empty=True)
        steps = get_int(payload, "steps", default=settings.steps, minimum=1, maximum=limits.max_steps)
        guidance = get_float(
            payload, "guidance_scale", default=settings.guidance_scale, minimum=0, maximum=limits.max_guidance_scale
        )
        noise_level = get_int(
            payload, "noise_level", default=settings.noise_level, minimum=0, maximum=limits.max_noise_level
        )
        seed = get_int(payload, "seed", minimum=0, maximum=SEED_SPACE - 1)
        if seed is None:
            seed = secrets.randbelow(SEED_SPACE)
        tile = self._tile(payload)
        padded = pad_to_multiple(image, self.size_multiple)
        return {
            "image": padded,
            "size": (width, height),
            "prompt": prompt,
            "steps": steps,
            "guidance_scale": float(guidance),
            "noise_level": noise_level,
            "seed": seed,
            "tiles": tile_boxes(padded.size, tile, settings.tile_overlap),
        }

    def _tile(self, payload: dict[str, Any]) -> int:
        limits = self.settings.limits
        value = payload.get("tile")
        if value is None:
            return self.settings.tile
        tile = int(check_number(value, "tile", integer=True, minimum=limits.min_tile, maximum=limits.max_tile))
        if tile % self.size_multiple:
            raise InputError("tile", f"must be a multiple of {self.size_multiple}, got {tile}")
        return tile

    # --- inference -------------------------------------------------------------------------------
    @torch.inference_mode()
    def infer(self, requests: list[dict[str, Any]], batch: Batch) -> list[Result]:
        """Every request's tiles, grouped by shape and settings into pipeline calls, then blended back
        per request. A failing call fails the batch, which the base class retries request by request."""
        tiles = [(r, j) for r, request in enumerate(requests) for j in range(len(request["tiles"]))]
        outputs: dict[tuple[int, int], np.ndarray] = {}
        for group in plan_tile_groups(requests, tiles, self.settings.max_tiles_per_call):
            for key, output in zip(group, self.upscale_tiles(requests, group)):
                outputs[key] = output
        results: list[Result] = []
        for r, request in enumerate(requests):
            pieces = [outputs[(r, j)] for j in range(len(request["tiles"]))]
            image = blend_tiles(pieces, request["tiles"], request["image"].size, self.settings.tile_overlap)
            width, height = request["size"]
            image = image[: SCALE * height, : SCALE * width]  # the edge padding off
            results.append(
                {"image": encode_png(to_uint8(image)), "seed": request["seed"], "model": self.settings.model_name}
            )
        self.add_metric("ImagesUpscaled", len(requests))
        return results

    def upscale_tiles(self, requests: list[dict[str, Any]], group: list[tuple[int, int]]) -> list[np.ndarray]:
        """One pipeline call for tiles of one shape and settings: float RGB arrays in [0, 1], 4x each tile."""
        first = requests[group[0][0]]
        crops, prompts, generators = [], [], []
        for r, j in group:
            request = requests[r]
            x, y, w, h = request["tiles"][j]
            crops.append(request["image"].crop((x, y, x + w, y + h)))
            prompts.append(request["prompt"])
            generators.append(torch.Generator("cpu").manual_seed((request["seed"] + j) % SEED_SPACE))
        guided = first["guidance_scale"] > 1.0  # diffusers' classifier-free-guidance condition
        prompt_embeds, negative_embeds = self.encode(prompts, guided)
        with self._unet_per_image(len(group)):
            images = self.pipeline()(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                image=crops,
                num_inference_steps=first["steps"],
                guidance_scale=first["guidance_scale"],
                noise_level=first["noise_level"],
                generator=generators,
                output_type="np",
            ).images
        self.pipeline_calls += 1
        return list(images)

    def encode(self, prompts: list[str], guided: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt (and, with guidance, negative prompt) embeddings, each distinct prompt encoded alone."""
        found: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for prompt in prompts:
            if prompt not in found:
                found[prompt] = self.pipe.encode_prompt(
                    prompt, self.device, 1, guided, negative_prompt=self.settings.negative_prompt
                )
        positive = torch.cat([found[prompt][0] for prompt in prompts])
        # with guidance encode_prompt gives a negative embedding for every prompt
        negative = torch.cat([found[prompt][1] for prompt in prompts]) if guided else None  # type: ignore[misc]
        return positive, negative

    def pipeline(self) -> StableDiffusionUpscalePipeline:
        """A pipeline object for one call: the shared models and a fresh scheduler (set_timesteps is state)."""
        base = self.pipe.scheduler
        components = {**self.pipe.components, "scheduler": type(base).from_config(base.config)}
        pipe = StableDiffusionUpscalePipeline(**components, max_noise_level=self.pipe.config.max_noise_level)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @contextlib.contextmanager
    def _unet_per_image(self, images: int) -> Iterator[None]:
        """With exact seeds, the UNet runs each tile's rows (its guidance pair, and its noise level and
        low-resolution image alongside) as a forward of its own during one pipeline call."""
        unet = self.pipe.unet
        if not self.exact_seeds or images <= 1:
            yield
            return
        unet.forward = functools.partial(forward_per_image, self._unet_forward, images, UNet2DConditionOutput)
        try:
            yield
        finally:
            unet.forward = self._unet_forward


def pad_to_multiple(image: Image.Image, multiple: int) -> Image.Image:
    """``image`` grown on the right and bottom to sides that are multiples of ``multiple``, by
    repeating its last column and row (no new content at the border the upscaler could invent on)."""
    width, height = image.size
    # at least two multiples a side: at one, the UNet's innermost level is 1x1 and its GroupNorm has a
    # single value per group, which torch refuses (found by the fuzzer with 1-4 px inputs)
    pad_x = max(-width % multiple, 2 * multiple - width)
    pad_y = max(-height % multiple, 2 * multiple - height)
    if not pad_x and not pad_y:
        return image
    array = np.pad(np.asarray(image), ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
    return Image.fromarray(array)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px, neighbours sharing >= ``overlap`` px."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    # spread evenly: every step is at most tile - overlap, so every overlap is at least `overlap`
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_boxes(size: tuple[int, int], tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(x, y, width, height) of the input tiles of an image of ``size``, row by row."""
    width, height = size
    tile_w, tile_h = min(tile, width), min(tile, height)
    rows, columns = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    return [(x, y, tile_w, tile_h) for y in rows for x in columns]


def plan_tile_groups(
    requests: list[dict[str, Any]], tiles: list[tuple[int, int]], max_per_call: int
) -> list[list[tuple[int, int]]]:
    """(request, tile) keys of the tiles that share one pipeline call, at most ``max_per_call`` each."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for r, j in tiles:
        request = requests[r]
        _, _, w, h = request["tiles"][j]
        key = (w, h, request["steps"], request["guidance_scale"], request["noise_level"])
        groups.setdefault(key, []).append((r, j))
    return [group[i : i + max_per_call] for group in groups.values() for i in range(0, len(group), max_per_call)]


def _ramp(length: int, before: bool, after: bool, ramp: int) -> np.ndarray:
    """Per-pixel weights along one side of a tile: rising over ``ramp`` px where a neighbour precedes,
    falling where one follows, 1 elsewhere; never 0, so every output pixel has weight."""
    weights = np.ones(length, dtype=np.float64)
    rising = (np.arange(ramp) + 1) / (ramp + 1)
    if before:
        weights[:ramp] = np.minimum(weights[:ramp], rising)
    if after:
        weights[length - ramp :] = np.minimum(weights[length - ramp :], rising[::-1])
    return weights


def blend_tiles(
    pieces: list[np.ndarray], boxes: list[tuple[int, int, int, int]], size: tuple[int, int], overlap: int
) -> np.ndarray:
    """The upscaled tiles (float HxWx3 at 4x their boxes) as one image 4x ``size``, weighted across overlaps."""
    if len(pieces) == 1:
        return pieces[0]
    width, height = size
    total = np.zeros((SCALE * height, SCALE * width, 3), dtype=np.float64)
    weight = np.zeros((SCALE * height, SCALE * width, 1), dtype=np.float64)
    ramp = SCALE * overlap
    for piece, (x, y, w, h) in zip(pieces, boxes):
        along_x = _ramp(SCALE * w, x > 0, x + w < width, ramp)
        along_y = _ramp(SCALE * h, y > 0, y + h < height, ramp)
        tile_weight = np.outer(along_y, along_x)[..., None]
        top, left = SCALE * y, SCALE * x
        total[top : top + SCALE * h, left : left + SCALE * w] += piece * tile_weight
        weight[top : top + SCALE * h, left : left + SCALE * w] += tile_weight
    return (total / weight).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as 8-bit, rounded as diffusers' ``numpy_to_pil`` rounds."""
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
