"""``sd``: text -> image with diffusers' ``StableDiffusionPipeline``, batched across requests.

Request ``{"prompt": str | [str], "negative_prompt"?: str | [str], "width"?, "height"?, "steps"?,
"guidance_scale"?, "seed"?, "scheduler"?, "stream"?, "control"?: [{"type", "image", "scale"?,
"start"?, "end"?}]}`` -> ``{"images": [b64 png], "seeds": [int], "model"}``. A prompt list of K
gives K images seeded ``seed, seed+1, ...`` (mod 2**32; a random ``seed`` when none is sent), so
resending ``seeds[0]`` reproduces the whole request and ``seeds[j]`` alone reproduces image j.

Control: each ``control`` entry conditions the generation on an image through the
ControlNet of its ``type`` (depth, pose or canny), loaded in this worker at start and sharing the
pipeline's UNet, VAE and text encoder: a request with control runs in a
``StableDiffusionControlNetPipeline`` built over the same components (``MultiControlNetModel``
for several types, always in one order, depth, pose, canny, so the sum of their residuals does not
depend on the order a request lists them). Without ``width``/``height`` the output takes the
first control image's size, scaled to fit the limits; control images are resized to the output size
by diffusers' own control image processor.

Batching: the requests of a TorchServe batch that share (width, height, steps, guidance_scale,
scheduler, and the control types with each one's scale, start and end) run as ONE pipeline call,
every image with its own CPU ``torch.Generator`` seeded from its own seed. Each call gets a fresh
pipeline object and a fresh scheduler built from the weights' scheduler config, so nothing stateful
is shared between calls. Prompts are encoded one at a time
and the VAE decodes one image at a time; with ``exact_seeds`` (the default on CPU) the UNet and each
ControlNet also run each image's guidance pair as their own forward (the ControlNets' residuals
split per image on their way into the UNet), so every kernel sees exactly the shapes it sees for an
unbatched request and a seed gives the bit-identical image alone or batched.

Interpolation: ``"interpolate": {"seeds": [a, b], "prompts"?: [p, q], "frames": n}`` (instead of
``seed`` and ``prompt``) gives ``n`` images walking from seed a with prompt p to seed b with prompt q
(both the empty prompt when ``prompts`` is left out): frame i at t = i / (n - 1) starts from the
spherical interpolation (slerp) of the two seeds' initial latents, drawn exactly as the pipeline
draws them, and is guided by the linear interpolation of the two prompts' embeddings; ``control``
images, ``negative_prompt`` and every other field are the same for every frame. The end frames are
the two plain generations (t = 0 and 1 take the endpoints' latents and embeddings as they are); a
scheduler that draws noise during the steps (euler_a) draws it from the nearer endpoint's seed. The
frames are one request's images, so they run in one pipeline call; ``seeds`` answers ``[a, b]``.

Streaming: with ``"stream": true`` the request runs in a pipeline call of its own and sends
``{"request_id", "step", "steps"}`` after every denoising step (``steps`` counts the UNet passes
the scheduler makes: PNDM makes ``steps + 1``), then the final result.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, get_args

import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)
from diffusers.models.controlnets.controlnet import ControlNetOutput
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from handlers.common import (
    InputError,
    LimitError,
    check_number,
    check_str,
    decode_image,
    encode_png,
    get_bool,
    get_float,
    get_int,
    get_str,
    get_str_list,
    model_dir,
    reject_unknown,
    weights_dir,
)
from handlers.common.base import Batch, BatchHandler, Result
from handlers.common.payload import json_type
from handlers.model_settings import ControlType, SdSettings

logger = logging.getLogger(__name__)

FIELDS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "seed",
    "scheduler",
    "stream",
    "control",
    "interpolate",
)
INTERPOLATE_FIELDS = ("seeds", "prompts", "frames")
MIN_FRAMES = 2  # an interpolation has its two ends
CONTROL_FIELDS = ("type", "image", "scale", "start", "end")
CONTROL_TYPES: tuple[str, ...] = get_args(ControlType)  # the types the contract knows, loaded or not
SEED_SPACE = 2**32  # seeds are 0 .. 2**32 - 1; a prompt list's seeds wrap around

# name -> (scheduler class, or None for the weights' own; options over the weights' scheduler config)
SCHEDULERS: dict[str, tuple[type | None, dict[str, Any]]] = {
    "default": (None, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    # SD predicts noise in latent space: clipping x0 to [-1, 1] (DDIM's default) would be wrong
    "ddim": (DDIMScheduler, {"clip_sample": False}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}


class TextToImage(BatchHandler):
    model_label = "sd"
    settings: SdSettings

    # --- loading ---------------------------------------------------------------------------------
    def load(self, context: Any) -> None:
        path = weights_dir(context)
        self.pipe = StableDiffusionPipeline.from_pretrained(
            path, dtype=self.dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.vae.enable_slicing()  # one image per VAE decode: batch-invariant, and bounded memory
        if self.settings.adapter:
            # a fine-tune (scripts/deploy_version.sh): the LoRA adapter shipped in this archive on top
            # of the base weights the archive references; the base's own archive never has one
            self.pipe.load_lora_weights(model_dir(context) / self.settings.adapter)

        settings = self.settings
        self.model_name = settings.model_name
        self.size_multiple = max(8, int(self.pipe.vae_scale_factor))
        native = self.pipe.unet.config.sample_size
        native_h, native_w = (native, native) if isinstance(native, int) else tuple(native)
        self.default_width = settings.width or native_w * self.pipe.vae_scale_factor
        self.default_height = settings.height or native_h * self.pipe.vae_scale_factor
        self.default_steps = settings.steps
        self.default_guidance = settings.guidance_scale
        self.default_scheduler = settings.scheduler
        self.default_negative = settings.negative_prompt
        self._check_defaults()

        self.pipeline_calls = 0  # observable in tests: one per group of same-shaped requests
        unet = self.pipe.unet
        self._unet_forward = unet.forward
        compile_options = settings.compile_unet
        if compile_options:
            options = compile_options if isinstance(compile_options, dict) else {}
            self._unet_forward = torch.compile(self._unet_forward, **options)
            unet.forward = self._unet_forward
        self.exact_seeds = _exact_seeds(settings.exact_seeds, self.device)
        self.controlnets = self._load_controlnets(path)
        self.warmed_up = False
        if compile_options or settings.warmup:
            self._warm_up()

    def _load_controlnets(self, path: Any) -> dict[str, ControlNetModel]:
        """The yaml's control types whose weights are installed, in the yaml's order; the others are
        logged and refused per request (a 400 on ``control[i].type``), not a failed load."""
        controlnets: dict[str, ControlNetModel] = {}
        for control_type in self.settings.control.types:
            folder = path / "controlnet" / control_type
            if not (folder / "config.json").exists():
                logger.warning(
                    "sd: no %s ControlNet in %s; requests with control type %r get a 400",
                    control_type,
                    folder,
                    control_type,
                )
                continue
            controlnets[control_type] = self.pretrained_model(ControlNetModel, folder)
        logger.info("sd: ControlNets loaded: %s", ", ".join(controlnets) or "none")
        return controlnets

    def _check_defaults(self) -> None:
        """A model-config.yaml whose defaults break its own limits fails at load, not per request."""
        defaults = {
            "width": self.default_width,
            "height": self.default_height,
            "steps": self.default_steps,
            "guidance_scale": self.default_guidance,
            "scheduler": self.default_scheduler,
        }
        try:
            self._size(defaults)
            self._steps(defaults)
            self._guidance(defaults)
            self._scheduler(defaults)
        except InputError as err:
            raise RuntimeError(f"model-config.yaml handler defaults: {err}") from None

    def _warm_up(self) -> None:
        started = time.perf_counter()
        request = self.parse({"prompt": "warm-up", "steps": 2, "seed": 0})
        with torch.inference_mode():
            self.generate([request], None)
        self.pipeline_calls = 0
        self.warmed_up = True
        logger.info("sd warm-up generation took %.1fs", time.perf_counter() - started)

    # --- request parsing -------------------------------------------------------------------------
    def parse(self, payload: dict[str, Any]) -> dict[str, Any]:
        reject_unknown(payload, FIELDS)
        interpolation = self._interpolation(payload)
        prompts = interpolation["frame_prompts"] if interpolation else self._prompts(payload)
        negatives = self._negatives(payload, len(prompts))
        controls = self._controls(payload)
        width, height = self._size(payload, self._control_size(controls[0]["image"].size) if controls else None)
        steps = self._steps(payload)
        guidance = self._guidance(payload)
        seed = get_int(payload, "seed", minimum=0, maximum=SEED_SPACE - 1)
        if seed is None:
            seed = secrets.randbelow(SEED_SPACE)
        seeds = interpolation["seeds"] if interpolation else [(seed + i) % SEED_SPACE for i in range(len(prompts))]
        scheduler = self._scheduler(payload)
        stream = get_bool(payload, "stream", default=False)
        return {
            "prompts": prompts,
            "negatives": negatives,
            "seeds": seeds,
            "interpolation": interpolation,
            "width": width,
            "height": height,
            "steps": steps,
            "guidance_scale": guidance,
            "scheduler": scheduler,
            "stream": stream,
            # the yaml's type order, so requests listing the same types in any order share a call
            "controls": sorted(controls, key=lambda control: CONTROL_TYPES.index(control["type"])),
        }

    def _prompts(self, payload: dict[str, Any]) -> list[str]:
        limits = self.settings.limits
        prompts = get_str_list(
            payload,
            "prompt",
            max_items=limits.max_prompts,
            max_len=limits.max_prompt_length,
            required=True,
            accept_single=True,
        )
        assert prompts is not None  # required=True
        return prompts

    def _negatives(self, payload: dict[str, Any], count: int) -> list[str]:
        value = payload.get("negative_prompt")
        max_len = self.settings.limits.max_prompt_length
        if value is None:
            return [self.default_negative] * count
        if isinstance(value, str):
            return [check_str(value, "negative_prompt", max_len=max_len, allow_empty=True)] * count
        if not isinstance(value, list):
            raise InputError("negative_prompt", f"must be a string or a list of strings, got {json_type(value)}")
        if len(value) != count:
            raise InputError(
                "negative_prompt",
                f"has {len(value)} items but prompt has {count}; send one string for all, or one per prompt",
            )
        return [
            check_str(item, f"negative_prompt[{i}]", max_len=max_len, allow_empty=True) for i, item in enumerate(value)
        ]

    def _controls(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """``control``: each entry checked field by field (``control[1].scale: ...``), in request order."""
        value = payload.get("control")
        if value is None:
            return []
        limits = self.settings.limits
        if not isinstance(value, list):
            raise InputError(
                "control", f"must be a list of {{type, image, scale?, start?, end?}} objects, got {json_type(value)}"
            )
        if not value:
            raise InputError("control", "must not be an empty list (leave it out for no control)")
        if len(value) > limits.max_controls:
            raise LimitError("control", f"has {len(value)} entries; the limit is {limits.max_controls}")
        controls: list[dict[str, Any]] = []
        for i, entry in enumerate(value):
            controls.append(self._control(entry, f"control[{i}]", [c["type"] for c in controls]))
        return controls

    # --- interpolation (parsing) -----------------------------------------------------------------
    def _interpolation(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """``interpolate``: its endpoints' seeds and prompts, the frames' t and placeholder prompts
        (one per frame, so a frame counts as an image everywhere an image is counted); None without it."""
        value = payload.get("interpolate")
        if value is None:
            return None
        for beside in ("seed", "prompt"):
            if payload.get(beside) is not None:
                raise InputError(
                    beside, f"cannot be given beside interpolate: interpolate.{beside}s names both endpoints"
                )
        if not isinstance(value, dict):
            raise InputError("interpolate", f"must be an object {{seeds, prompts?, frames}}, got {json_type(value)}")
        for key in value:
            if key not in INTERPOLATE_FIELDS:
                raise InputError(
                    f"interpolate.{key}", f"unknown field; interpolate has {', '.join(INTERPOLATE_FIELDS)}"
                )
        seeds = self._endpoints(value, "seeds", required=True)
        seeds = [
            int(check_number(seed, f"interpolate.seeds[{i}]", integer=True, minimum=0, maximum=SEED_SPACE - 1))
            for i, seed in enumerate(seeds or [])
        ]
        max_len = self.settings.limits.max_prompt_length
        prompts = [
            check_str(prompt, f"interpolate.prompts[{i}]", max_len=max_len, allow_empty=True)
            for i, prompt in enumerate(self._endpoints(value, "prompts", required=False) or ["", ""])
        ]
        if value.get("frames") is None:
            raise InputError("interpolate.frames", "is required")
        frames = int(
            check_number(
                value["frames"],
                "interpolate.frames",
                integer=True,
                minimum=MIN_FRAMES,
                maximum=self.settings.limits.max_frames,
            )
        )
        return {
            "seeds": seeds,
            "prompts": prompts,
            "t": [i / (frames - 1) for i in range(frames)],
            "frame_prompts": [prompts[0]] * frames,
        }

    @staticmethod
    def _endpoints(value: dict[str, Any], key: str, required: bool) -> list[Any] | None:
        field = f"interpolate.{key}"
        pair = value.get(key)
        if pair is None:
            if required:
                raise InputError(field, "is required")
            return None
        if not isinstance(pair, list) or len(pair) != 2:
            raise InputError(
                field,
                f"must be a list of two (the start and the end), got {json_type(pair)}"
                + (f" of {len(pair)}" if isinstance(pair, list) else ""),
            )
        return pair

    def _control(self, entry: Any, field: str, earlier_types: list[str]) -> dict[str, Any]:
        if not isinstance(entry, dict):
            raise InputError(field, f"must be an object {{type, image, scale?, start?, end?}}, got {json_type(entry)}")
        for key in entry:
            if key not in CONTROL_FIELDS:
                raise InputError(f"{field}.{key}", f"unknown field; a control entry has {', '.join(CONTROL_FIELDS)}")
        control_type = entry.get("type")
        if control_type is None:
            raise InputError(f"{field}.type", "is required")
        check_str(control_type, f"{field}.type", max_len=100)
        if control_type not in CONTROL_TYPES:
            raise InputError(
                f"{field}.type", f"unknown control type {control_type!r}; choose one of {', '.join(CONTROL_TYPES)}"
            )
        if control_type in earlier_types:
            first = earlier_types.index(control_type)
            raise InputError(
                f"{field}.type", f"{control_type!r} is already control[{first}]; each type may appear once"
            )
        if control_type not in self.controlnets:
            installed = ", ".join(self.controlnets) or "none"
            raise InputError(
                f"{field}.type", f"no {control_type} ControlNet is installed on this server (installed: {installed})"
            )
        defaults, limits = self.settings.control, self.settings.limits

        def number(key: str, default: float, maximum: float) -> float:
            value = entry.get(key)
            if value is None:
                return default
            return float(check_number(value, f"{field}.{key}", minimum=0, maximum=maximum))

        scale = number("scale", defaults.scale, limits.max_control_scale)
        start = number("start", defaults.start, 1)
        end = number("end", defaults.end, 1)
        if start >= end:
            raise InputError(f"{field}.start", f"must be < end ({end:g}), got {start:g}")
        image = decode_image(entry.get("image"), limits, field=f"{field}.image")
        return {"type": control_type, "image": image, "scale": scale, "start": start, "end": end}

    def _control_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """A control image's (width, height) scaled to fit the size limits, aspect kept, multiples of 8."""
        limits = self.settings.limits
        width, height = size
        scale = min(1.0, limits.max_side / max(width, height), math.sqrt(limits.max_pixels / (width * height)))
        return self._legal_side(width * scale), self._legal_side(height * scale)

    def _legal_side(self, length: float) -> int:
        """``length`` rounded down to a multiple of 8 (the VAE's factor), within [min_side, max_side]."""
        limits, multiple = self.settings.limits, self.size_multiple
        smallest = -(-limits.min_side // multiple) * multiple
        largest = limits.max_side // multiple * multiple
        return min(max(smallest, int(length) // multiple * multiple), largest)

    def _size(self, payload: dict[str, Any], fallback: tuple[int, int] | None = None) -> tuple[int, int]:
        """(width, height): the request's, else ``fallback`` (the first control image's size, its aspect
        kept when only one side is given), else the yaml's defaults."""
        sides = {}
        for field, default in (("width", self.default_width), ("height", self.default_height)):
            value = payload.get(field)
            if value is None:
                sides[field] = default
                continue
            side = int(
                check_number(
                    value,
                    field,
                    integer=True,
                    minimum=self.settings.limits.min_side,
                    maximum=self.settings.limits.max_side,
                )
            )
            if side % self.size_multiple:
                raise InputError(field, f"must be a multiple of {self.size_multiple}, got {side}")
            sides[field] = side
        width, height = sides["width"], sides["height"]
        if fallback is not None:
            width, height = self._fallback_size(payload, width, height, fallback)
        max_pixels = self.settings.limits.max_pixels
        if width * height > max_pixels:
            field = "width" if payload.get("width") is not None else "height"
            raise LimitError(field, f"{width}x{height} is {width * height} pixels; the limit is {max_pixels}")
        return width, height

    def _fallback_size(
        self, payload: dict[str, Any], width: int, height: int, fallback: tuple[int, int]
    ) -> tuple[int, int]:
        given_width, given_height = payload.get("width") is not None, payload.get("height") is not None
        if given_width and given_height:
            return width, height
        if not given_width and not given_height:
            return fallback
        ratio = fallback[1] / fallback[0]  # height / width of the control image
        most = self.settings.limits.max_pixels  # the derived side shrinks to keep the size legal
        if given_width:
            return width, self._legal_side(min(width * ratio, most / width))
        return self._legal_side(min(height / ratio, most / height)), height

    def _steps(self, payload: dict[str, Any]) -> int:
        return int(
            get_int(payload, "steps", default=self.default_steps, minimum=1, maximum=self.settings.limits.max_steps)
        )

    def _guidance(self, payload: dict[str, Any]) -> float:
        return float(
            get_float(
                payload,
                "guidance_scale",
                default=self.default_guidance,
                minimum=0,
                maximum=self.settings.limits.max_guidance_scale,
            )
        )

    def _scheduler(self, payload: dict[str, Any]) -> str:
        name = get_str(payload, "scheduler", default=self.default_scheduler, max_len=100)
        if name not in SCHEDULERS:
            raise InputError("scheduler", f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
        return name

    # --- inference -------------------------------------------------------------------------------
    @torch.inference_mode()
    def infer(self, requests: list[dict[str, Any]], batch: Batch) -> list[Result]:
        """One pipeline call per group of same-shaped requests; a group that fails is retried
        request by request (the base class's isolation), so it cannot fail the other groups."""
        groups = plan_groups(requests)
        if len(groups) == 1:
            return self.generate(requests, batch)
        return self.infer_in_groups(requests, batch, groups)

    def generate(self, group: list[dict[str, Any]], batch: Batch | None) -> list[Result]:
        """One pipeline call for a group of requests sharing size, steps, guidance, scheduler and control
        settings (each request its own control images).

        ``batch`` places the group's requests in TorchServe's batch (for a streamed request's
        progress events); None for the warm-up."""
        first = group[0]
        prompts = [p for request in group for p in request["prompts"]]
        negatives = [n for request in group for n in request["negatives"]]
        guided = first["guidance_scale"] > 1.0  # diffusers' classifier-free-guidance condition
        prompt_embeds, generators, latents = self.group_inputs(group)
        negative_embeds = self.encode(negatives) if guided else None
        control_types = [control["type"] for control in first["controls"]]
        pipe = self.pipeline(first["scheduler"], control_types)
        controlnets = [self.controlnets[control_type] for control_type in control_types]

        step_times: list[float] = []

        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            step_times.append(time.perf_counter())
            if streamed and batch is not None:
                batch.send(0, {"request_id": batch.request_id(0), "step": step + 1, "steps": pipeline.num_timesteps})
            return {}

        streamed = batch is not None and first["stream"]
        started = time.perf_counter()
        with self._unet_per_image(len(prompts)), self._controlnets_per_image(len(prompts), controlnets):
            images = pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                width=first["width"],
                height=first["height"],
                num_inference_steps=first["steps"],
                guidance_scale=first["guidance_scale"],
                generator=generators,
                latents=latents,
                output_type="pil",
                callback_on_step_end=on_step_end,
                **control_arguments(group),
            ).images
        self.pipeline_calls += 1
        if step_times:
            self.add_metric(
                "DenoisingStepsPerSecond", len(step_times) / max(step_times[-1] - started, 1e-9), unit="StepsPerSecond"
            )
        self.add_metric("ImagesGenerated", len(images))

        results: list[Result] = []
        offset = 0
        for request in group:
            count = len(request["prompts"])
            results.append(
                {
                    "images": [encode_png(image) for image in images[offset : offset + count]],
                    "seeds": request["seeds"],
                    "model": self.model_name,
                }
            )
            offset += count
        return results

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings, each text encoded on its own (the same shapes whatever the batch)."""
        found: dict[str, torch.Tensor] = {}
        for text in texts:
            if text not in found:
                found[text] = self.pipe.encode_prompt(text, self.device, 1, False)[0]
        return torch.cat([found[text] for text in texts])

    # --- interpolation (inputs) ------------------------------------------------------------------
    def group_inputs(
        self, group: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, list[torch.Generator], torch.Tensor | None]:
        """Per image of a group: prompt embeddings, a CPU generator and, when any request interpolates,
        initial latents (None otherwise: the pipeline draws them). A plain image's latents are then
        drawn from its generator exactly as diffusers' ``prepare_latents`` draws them, so the
        generator leaves in the state the pipeline expects and the image is the plain generation."""
        plain = not any(request["interpolation"] for request in group)
        if plain:
            prompts = [p for request in group for p in request["prompts"]]
            seeds = [s for request in group for s in request["seeds"]]
            return self.encode(prompts), [torch.Generator("cpu").manual_seed(seed) for seed in seeds], None
        first = group[0]
        shape = (
            1,
            self.pipe.unet.config.in_channels,
            first["height"] // self.pipe.vae_scale_factor,
            first["width"] // self.pipe.vae_scale_factor,
        )
        embeds, generators, latents = [], [], []
        for request in group:
            if request["interpolation"]:
                request_embeds, request_generators, request_latents = self.interpolation_inputs(request, shape)
            else:
                request_embeds = self.encode(request["prompts"])
                request_generators = [torch.Generator("cpu").manual_seed(seed) for seed in request["seeds"]]
                request_latents = [self.draw_latents(generator, shape) for generator in request_generators]
            embeds.append(request_embeds)
            generators += request_generators
            latents += request_latents
        return torch.cat(embeds), generators, torch.cat(latents).to(self.device)

    def draw_latents(self, generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
        """One image's initial noise as diffusers' ``randn_tensor`` draws it for a list of generators."""
        return torch.randn(shape, generator=generator, device=generator.device, dtype=self.dtype)

    def interpolation_inputs(
        self, request: dict[str, Any], shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Generator], list[torch.Tensor]]:
        """An interpolating request's frames: embeddings lerped, initial latents slerped, and each frame's
        generator its nearer endpoint's, advanced past the latents draw as the plain generation's is."""
        interpolation = request["interpolation"]
        start, end = (self.encode([prompt]) for prompt in interpolation["prompts"])
        noises = [self.draw_latents(torch.Generator("cpu").manual_seed(seed), shape) for seed in interpolation["seeds"]]
        embeds, generators, latents = [], [], []
        for t in interpolation["t"]:
            # the ends exactly as they are: the end frames are then the plain generations, bit for bit
            embeds.append(start if t == 0 else end if t == 1 else torch.lerp(start, end, t))
            latents.append(noises[0] if t == 0 else noises[1] if t == 1 else slerp(noises[0], noises[1], t))
            generator = torch.Generator("cpu").manual_seed(interpolation["seeds"][0 if t < 0.5 else 1])
            self.draw_latents(generator, shape)
            generators.append(generator)
        return torch.cat(embeds), generators, latents

    def pipeline(self, scheduler: str, control_types: Sequence[str] = ()) -> StableDiffusionPipeline:
        """A pipeline object for one call: the shared models, a scheduler of its own, and the ControlNets
        of ``control_types`` (a ``StableDiffusionControlNetPipeline`` over the same UNet, VAE and text
        encoder: no weights are copied)."""
        cls, options = SCHEDULERS[scheduler]
        base = self.pipe.scheduler
        scheduler_class: Any = cls or type(base)
        fresh = scheduler_class.from_config(base.config, **options)
        components = {**self.pipe.components, "scheduler": fresh}
        if control_types:
            nets = [self.controlnets[control_type] for control_type in control_types]
            controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
            pipe = StableDiffusionControlNetPipeline(**components, controlnet=controlnet, requires_safety_checker=False)
        else:
            pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @contextlib.contextmanager
    def _unet_per_image(self, images: int) -> Iterator[None]:
        """During one pipeline call of ``images`` images, with exact seeds, the UNet runs each
        image's rows as a forward of its own (:meth:`_unet_rows_per_image`)."""
        unet = self.pipe.unet
        if not self.exact_seeds or images <= 1:
            yield
            return
        unet.forward = functools.partial(self._unet_rows_per_image, images)
        try:
            yield
        finally:
            unet.forward = self._unet_forward

    def _unet_rows_per_image(self, images: int, *args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
        """The UNet on each image's rows (its unconditional and conditional halves) separately; a
        ControlNet's residuals (``down_block_additional_residuals``, ``mid_block_additional_residual``)
        are split with them (:func:`forward_per_image`)."""
        return forward_per_image(
            self._unet_forward, images, UNet2DConditionOutput, *args, return_dict=return_dict, **kwargs
        )

    @contextlib.contextmanager
    def _controlnets_per_image(self, images: int, controlnets: list[ControlNetModel]) -> Iterator[None]:
        """During one pipeline call of ``images`` images, with exact seeds, each of ``controlnets`` runs
        each image's rows as a forward of its own, as the UNet does (:meth:`_unet_per_image`)."""
        if not self.exact_seeds or images <= 1 or not controlnets:
            yield
            return
        originals = [net.forward for net in controlnets]
        for net, forward in zip(controlnets, originals):
            net.forward = functools.partial(forward_per_image, forward, images, ControlNetOutput)
        try:
            yield
        finally:
            for net, forward in zip(controlnets, originals):
                net.forward = forward


def slerp(start: torch.Tensor, end: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of two noise tensors (flattened as vectors), in float32: the path keeps
    the norm a Gaussian sample has, where a straight line would shrink it in the middle. Nearly
    parallel tensors (angle under 1e-4 rad) are interpolated linearly."""
    a, b = start.float().flatten(), end.float().flatten()
    cosine = torch.clamp(torch.dot(a, b) / (a.norm() * b.norm()), -1.0, 1.0)
    angle = torch.arccos(cosine)
    if angle.abs() < 1e-4:
        mixed = torch.lerp(a, b, t)
    else:
        mixed = (torch.sin((1 - t) * angle) * a + torch.sin(t * angle) * b) / torch.sin(angle)
    return mixed.reshape(start.shape).to(start.dtype)


def control_arguments(group: list[dict[str, Any]]) -> dict[str, Any]:
    """``StableDiffusionControlNetPipeline``'s control arguments for a group sharing its control
    settings: per image (a request of K prompts gives K images), its request's control images; {}
    without control. One ControlNet takes a list of images; several take diffusers' nested form, one
    list per image of one image per ControlNet."""
    controls = group[0]["controls"]
    if not controls:
        return {}
    per_image = [[control["image"] for control in request["controls"]] for request in group for _ in request["prompts"]]
    if len(controls) == 1:
        [control] = controls
        return {
            "image": [images[0] for images in per_image],
            "controlnet_conditioning_scale": control["scale"],
            "control_guidance_start": control["start"],
            "control_guidance_end": control["end"],
        }
    return {
        "image": per_image,
        "controlnet_conditioning_scale": [control["scale"] for control in controls],
        "control_guidance_start": [control["start"] for control in controls],
        "control_guidance_end": [control["end"] for control in controls],
    }


def forward_per_image(
    forward: Callable[..., Any], images: int, output_class: type, *args: Any, return_dict: bool = True, **kwargs: Any
) -> Any:
    """``forward`` (a UNet's or a ControlNet's) on each image's rows separately, the outputs put back in place.

    The pipeline stacks a call's rows as ``[uncond_1..uncond_N, cond_1..cond_N]``; image i's forward
    gets rows ``(i, N + i)`` of every per-row argument (a tensor, or a tuple of tensors such as the
    ControlNet residuals, with as many rows as the sample), exactly the batch an unbatched request of
    one image sends.
    """
    sample = args[0] if args else kwargs["sample"]
    rows = sample.shape[0]
    if images <= 1 or rows % images:
        return forward(*args, return_dict=return_dict, **kwargs)
    per_image = rows // images
    outputs = []
    for i in range(images):
        index = [i + k * images for k in range(per_image)]
        picked_args = [_rows(value, index, rows) for value in args]
        picked_kwargs = {key: _rows(value, index, rows) for key, value in kwargs.items()}
        outputs.append(forward(*picked_args, return_dict=False, **picked_kwargs))
    merged = _interleave(outputs)
    return output_class(*merged) if return_dict else merged


def _interleave(parts: list[Any]) -> Any:
    """Per-image outputs (each image's rows, in the nesting a forward returns) as one output of all rows."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(parts, dim=1).reshape(-1, *first.shape[1:])
    if isinstance(first, (tuple, list)):
        return type(first)(_interleave([part[j] for part in parts]) for j in range(len(first)))
    return first


def plan_groups(requests: list[dict[str, Any]]) -> list[list[int]]:
    """Positions of the requests that run as one pipeline call; a streamed request runs alone, first."""
    streamed = [[i] for i, request in enumerate(requests) if request["stream"]]
    shared: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        if not request["stream"]:
            key = (
                request["width"],
                request["height"],
                request["steps"],
                request["guidance_scale"],
                request["scheduler"],
                control_key(request),
            )
            shared.setdefault(key, []).append(i)
    return streamed + list(shared.values())


def control_key(request: dict[str, Any]) -> tuple:
    """What diffusers takes once per call: the control types and each one's scale, start and end."""
    return tuple(
        (control["type"], control["scale"], control["start"], control["end"]) for control in request["controls"]
    )


def _rows(value: Any, index: list[int], rows: int) -> Any:
    """``value`` restricted to ``index`` when it is per-row (a tensor with ``rows`` rows, or a tuple or
    list of such tensors), else as is."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
        return value[index]
    if (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(item, torch.Tensor) and item.dim() > 0 and item.shape[0] == rows for item in value)
    ):
        return type(value)(item[index] for item in value)
    return value


def _exact_seeds(setting: Any, device: torch.device) -> bool:
    """``auto``: bit-identical seeds on CPU (the contract's test), one batched UNet forward on GPU."""
    if setting == "auto":
        return device.type != "cuda"
    return bool(setting)
