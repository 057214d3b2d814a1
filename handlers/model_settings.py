"""Each model's settings: what its models/<name>/model-config.yaml ``handler:`` section holds, typed.

One class per model, read once when its worker loads (:class:`handlers.common.BatchHandler` does it).
They live here, not in the handler modules, because TorchServe's loader refuses a handler module
that defines more than one class. Every value is written in the yaml; these classes give only types
and bounds (handlers/settings.py says why). The light models' (pipeline, interpret) are here too:
their workflow nodes and the studio read them with no handler loaded, and none of this imports torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field, model_validator

from handlers.settings import HandlerSettings, ImageLimits, Settings


class TextQueryLimits(ImageLimits):
    """What bounds a clip query's texts and regions: clip's limits, which the pipeline checks as well
    before it calls clip (tests/robustness/test_response_size.py keeps the pipeline's within clip's)."""

    max_texts: int = Field(ge=1)
    max_text_length: int = Field(ge=1)
    max_rois: int = Field(ge=0)


class ClipLimits(TextQueryLimits):
    max_images: int = Field(ge=1)  # images of one `images` request (the reference image not counted)


class ClipSettings(HandlerSettings):
    text_cache_size: int = Field(ge=0)
    concepts: list[str] | None  # null: the built-in vocabulary (handlers/common/vocabulary.py)
    limits: ClipLimits


class DepthSettings(HandlerSettings):
    input_size: int | None = Field(ge=14)  # null: the processor's own size
    colormap: Literal["turbo", "gray"]
    limits: ImageLimits


class PoseLimits(ImageLimits):
    max_rois: int = Field(ge=0)  # boxes a request may send in `roi`
    max_people: int = Field(ge=1)  # detections kept per image


class PoseSettings(HandlerSettings):
    use_detector: bool
    person_label: str
    detector_threshold: float = Field(ge=0, le=1)
    detector_nms_iou: float = Field(ge=0, le=1)
    min_box_side: float = Field(ge=0)
    keypoint_threshold: float = Field(ge=0, le=1)
    overlay_max_side: int = Field(ge=0)  # 0: never downscale
    limits: PoseLimits


class AutomaticSettings(Settings):
    """Automatic masks (no prompt): SAM's automatic mask generator on one crop."""

    points_per_side: int = Field(ge=1)
    points_per_batch: int = Field(ge=1)
    pred_iou_thresh: float  # <= 0: no filter
    stability_score_thresh: float  # <= 0: no filter
    stability_score_offset: float
    box_nms_thresh: float = Field(ge=0, le=1)
    max_masks: int = Field(ge=1)  # never more than limits.max_masks


class SamLimits(ImageLimits):
    max_boxes: int = Field(ge=0)
    max_points: int = Field(ge=0)
    max_masks: int = Field(ge=1)
    max_response_bytes: int = Field(ge=1)


class SamSettings(HandlerSettings):
    mask_threshold: float  # on SAM's mask logits
    embedding_cache_size: int = Field(ge=0)
    polygon_epsilon: float = Field(ge=0)
    polygon_max_points: int = Field(ge=4)
    automatic: AutomaticSettings
    limits: SamLimits


# The control types the `sd` handler knows (the yaml's control.types picks which to load); they are
# interpret's priors too: each prior conditions the ControlNet of its name.
ControlType = Literal["depth", "pose", "canny"]
CONTROL_TYPES: tuple[ControlType, ...] = get_args(ControlType)


class GenerationLimits(ImageLimits):
    """What bounds one generation: sd's limits, which interpret checks as well before it calls sd
    (tests/unit/test_interpret_stages.py keeps interpret's within sd's)."""

    min_side: int = Field(ge=8)  # width / height
    max_side: int = Field(ge=8)
    max_pixels: int = Field(ge=64)
    max_steps: int = Field(ge=1)
    max_guidance_scale: float = Field(ge=0)
    max_control_scale: float = Field(ge=0)


class SdLimits(GenerationLimits):  # max_image_side / max_image_pixels: each control image
    max_prompts: int = Field(ge=1)  # prompts (= images) per request
    max_prompt_length: int = Field(ge=1)  # characters per prompt / negative prompt
    max_controls: int = Field(ge=1)  # entries of `control`
    max_frames: int = Field(ge=2)  # images of one `interpolate` request


class SdControlSettings(Settings):
    """ControlNets to load (``<weights>/controlnet/<type>/``) and a control entry's defaults."""

    types: list[ControlType]  # a listed type whose folder is absent is skipped, with a warning
    scale: float = Field(ge=0)
    start: float = Field(ge=0, le=1)
    end: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _start_before_end(self) -> SdControlSettings:
        if self.start >= self.end:
            raise ValueError("start (the default) must be < end")
        if len(set(self.types)) != len(self.types):
            raise ValueError("types must be distinct")
        return self


class SdSettings(HandlerSettings):
    model_name: str  # the response's `model`
    width: int | None  # null: the weights' native size
    height: int | None
    steps: int
    guidance_scale: float
    scheduler: str
    negative_prompt: str
    exact_seeds: bool | Literal["auto"]
    compile_unet: bool | dict[str, Any]  # torch.compile options, or true for the defaults
    warmup: bool  # one generation at load (always, when compile_unet is on)
    adapter: str | None  # a LoRA adapter directory inside the archive (deploy_version.sh)
    control: SdControlSettings
    limits: SdLimits

    @model_validator(mode="after")
    def _control_defaults_within_limits(self) -> SdSettings:
        if self.control.scale > self.limits.max_control_scale:
            raise ValueError("control.scale (the default) is over limits.max_control_scale")
        return self


class CaptionLimits(ImageLimits):
    max_prompt_length: int = Field(ge=1)  # characters of `prompt`
    max_new_tokens: int = Field(ge=1)
    max_num_beams: int = Field(ge=1)


class CaptionSettings(HandlerSettings):
    model_name: str = Field(min_length=1)  # the response's `model`
    max_new_tokens: int = Field(ge=1)  # a request's default
    num_beams: int = Field(ge=1)  # a request's default
    limits: CaptionLimits

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> CaptionSettings:
        if self.max_new_tokens > self.limits.max_new_tokens:
            raise ValueError("max_new_tokens (the default) is over limits.max_new_tokens")
        if self.num_beams > self.limits.max_num_beams:
            raise ValueError("num_beams (the default) is over limits.max_num_beams")
        return self


# --- upscale ------------------------------------------------------------------------------------
class UpscaleLimits(ImageLimits):  # max_image_side / max_image_pixels: the input, from its header
    max_output_pixels: int = Field(ge=16)  # (4 x width) x (4 x height): what bounds the response's PNG
    max_prompt_length: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    max_guidance_scale: float = Field(ge=0)
    max_noise_level: int = Field(ge=0)  # never over the pipeline's own max_noise_level (checked at load)
    min_tile: int = Field(ge=8)  # px of input, a request's `tile`
    max_tile: int = Field(ge=8)


class UpscaleSettings(HandlerSettings):
    model_name: str = Field(min_length=1)  # the response's `model`
    prompt: str  # defaults for the fields a request leaves out
    negative_prompt: str
    steps: int = Field(ge=1)
    guidance_scale: float = Field(ge=0)
    noise_level: int = Field(ge=0)
    tile: int = Field(ge=8)  # input px per tile side; an image that fits one tile is not split
    tile_overlap: int = Field(ge=1)  # input px shared by neighbouring tiles, blended across
    max_tiles_per_call: int = Field(ge=1)  # tiles of one pipeline call (memory: latents and decoded tiles)
    exact_seeds: bool | Literal["auto"]
    limits: UpscaleLimits

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> UpscaleSettings:
        limits = self.limits
        if not limits.min_tile <= self.tile <= limits.max_tile:
            raise ValueError("tile (the default) must be within limits.min_tile .. limits.max_tile")
        if self.tile_overlap * 2 > limits.min_tile:
            raise ValueError("tile_overlap must be at most half of limits.min_tile")
        if self.steps > limits.max_steps or self.guidance_scale > limits.max_guidance_scale:
            raise ValueError("steps / guidance_scale (the defaults) are over their limits")
        if self.noise_level > limits.max_noise_level:
            raise ValueError("noise_level (the default) is over limits.max_noise_level")
        if len(self.prompt) > limits.max_prompt_length or len(self.negative_prompt) > limits.max_prompt_length:
            raise ValueError("prompt / negative_prompt (the defaults) are over limits.max_prompt_length")
        return self


# --- the light models (pipeline, interpret): where they find the models they call, and how long ---
def model_timeouts(*models: str) -> AfterValidator:
    """A ``stage_timeouts`` mapping's check: seconds a call to each of ``models`` (the models a light
    model calls) may take, every one given and no other; a stage over its limit answers 504 naming
    the stage. A version (``sd/squares-v1``) has its model's limit."""

    def each_called_model(timeouts: dict[str, float]) -> dict[str, float]:
        for model in timeouts:
            if model not in models:
                raise ValueError(f"{model}: unknown model (this one calls {', '.join(models)})")
        for model in models:
            if model not in timeouts:
                raise ValueError(f"{model}: missing (every called model has its timeout in the yaml)")
        return timeouts

    return AfterValidator(each_called_model)


Timeouts = dict[str, Annotated[float, Field(gt=0)]]
PIPELINE_CALLS = ("sd", "clip", "sam", "depth", "pose")
INTERPRET_CALLS = ("caption", "depth", "pose", "sd", "clip", "upscale")


class CallerSettings(HandlerSettings):
    """Where a light model finds the models it calls: workflows/connect.py."""

    inference_address: str | None  # null: this server's, from TS_CONFIG_FILE
    management_address: str | None
    key_file: str | None  # null: TS_KEY_FILE, else ./key_file.json


# --- pipeline -----------------------------------------------------------------------------------
class PipelineLimits(TextQueryLimits):
    """What the pipeline checks before any model runs (each at most the called model's own limit)."""

    max_prompt_length: int = Field(ge=1)


class PipelineSettings(CallerSettings):
    """The ``handler:`` section of models/pipeline/model-config.yaml, for the model and the workflow."""

    stage_timeouts: Annotated[Timeouts, model_timeouts(*PIPELINE_CALLS)]
    limits: PipelineLimits


# --- interpret ----------------------------------------------------------------------------------
class InterpretLimits(GenerationLimits):
    """What the interpreter checks before any model runs; tests/unit/test_interpret_stages.py keeps
    each at most the limit of the model it is sent to (sd's, clip's), so no request is refused late."""

    max_version_length: int = Field(ge=1)  # characters of `sd_version`
    max_caption_length: int = Field(ge=1)  # characters of `caption` and `negative_prompt` (<= clip's texts)
    max_samples: int = Field(ge=1)  # per prior (each) or per request (combined): <= sd's max_prompts
    size_multiple: int = Field(ge=1)  # width / height


class CannySettings(Settings):
    """The edge map the ``canny`` prior is: OpenCV Canny's hysteresis thresholds on 8-bit intensity."""

    low_threshold: int = Field(ge=0, le=255)
    high_threshold: int = Field(ge=0, le=255)


InterpretMode = Literal["each", "combined"]  # one sd request per prior, or one with every prior
INTERPRET_MODES: tuple[InterpretMode, ...] = get_args(InterpretMode)


class InterpretSettings(CallerSettings):
    """The ``handler:`` section of models/interpret/model-config.yaml (the studio reads it too)."""

    priors: list[ControlType] = Field(min_length=1)  # a request's default
    mode: InterpretMode  # a request's default
    samples: int = Field(ge=1)  # a request's default
    rank_by: Literal["mean", "caption", "source"]  # which score orders the samples (rank 0 = best)
    sd_schedulers: list[str] = Field(min_length=1)  # the `scheduler` names sd knows (a test keeps them equal)
    canny: CannySettings
    stage_timeouts: Annotated[Timeouts, model_timeouts(*INTERPRET_CALLS)]
    limits: InterpretLimits

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> InterpretSettings:
        if self.samples > self.limits.max_samples:
            raise ValueError("samples (the default) is over limits.max_samples")
        if len(set(self.priors)) != len(self.priors):
            raise ValueError("priors (the default) must be distinct")
        if self.canny.low_threshold > self.canny.high_threshold:
            raise ValueError("canny.low_threshold must be <= canny.high_threshold")
        return self
