"""The pipeline's stages as plain functions: generate, then analyze (concepts + segment (+ depth, pose) -> regions).

Nothing here knows about TorchServe's workflow engine or handlers. Stages reach the five models
through a :class:`ModelCaller` (the REST client in production), so pipeline traffic goes through
each model's own batching queue and workers: weights are resident once, and one ``scale`` call
governs direct and pipeline traffic alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from handlers.common import (
    InputError,
    ServerError,
    decode_image,
    get_bool,
    get_boxes,
    get_float,
    get_int,
    get_str,
    get_str_list,
    reject_unknown,
)
from handlers.model_settings import PipelineSettings

PRIORS = ("depth", "pose")
GENERATION_FIELDS = ("negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "scheduler")
FIELDS = ("prompt", "image", "texts", "roi", "priors", "stream", *GENERATION_FIELDS)


class ModelCaller(Protocol):
    def __call__(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """POST ``body`` to ``model``; raise :class:`StageFailure` on a non-2xx answer."""


class StageFailure(Exception):
    """A model answered non-2xx (``status`` and its error ``message``), or did not answer (``status`` 502/504)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class PipelineRequest:
    prompt: str | None
    image: str | None  # base64, when the request brings its own image
    texts: list[str] | None
    roi: list[list[float]] | None
    priors: list[str]
    generation: dict[str, Any] = field(default_factory=dict)
    stream: bool = False


def parse_request(payload: dict[str, Any], settings: PipelineSettings) -> PipelineRequest:
    """Validate everything that can be checked before any model runs; raise InputError naming the field."""
    reject_unknown(payload, FIELDS)
    limits = settings.limits
    prompt = get_str(payload, "prompt", max_len=limits.max_prompt_length)
    image = payload.get("image")
    if (prompt is None) == (image is None):
        raise InputError("prompt", "give exactly one of 'prompt' (generate, then analyze) or 'image' (analyze)")
    image_size = None
    if image is not None:
        if not isinstance(image, str):
            raise InputError("image", "must be a base64-encoded PNG or JPEG string")
        image_size = decode_image(image, limits).size
    texts = get_str_list(payload, "texts", max_items=limits.max_texts, max_len=limits.max_text_length)
    roi = None
    if payload.get("roi") is not None:
        # with a prompt the image does not exist yet: sam checks the boxes against it later
        bounds = image_size or (10**9, 10**9)
        roi = get_boxes(payload, "roi", image_size=bounds, max_items=limits.max_rois)
    priors = get_str_list(payload, "priors", max_items=len(PRIORS)) or []
    for i, prior in enumerate(priors):
        if prior not in PRIORS:
            raise InputError(f"priors[{i}]", f"unknown prior {prior!r}; choose from {list(PRIORS)}")
    generation: dict[str, Any] = {}
    if prompt is None:
        for key in GENERATION_FIELDS:
            if key in payload:
                raise InputError(key, "only applies to generation, i.e. with 'prompt'")
    else:
        # sd validates the values itself; only their JSON types are checked here
        for key in ("width", "height", "steps", "seed"):
            if key in payload:
                generation[key] = get_int(payload, key)
        if "guidance_scale" in payload:
            generation["guidance_scale"] = get_float(payload, "guidance_scale")
        for key in ("negative_prompt", "scheduler"):
            if key in payload:
                generation[key] = get_str(payload, key, allow_empty=key == "negative_prompt")
    return PipelineRequest(
        prompt=prompt,
        image=image,
        texts=texts,
        roi=roi,
        priors=list(dict.fromkeys(priors)),
        generation=generation,
        stream=get_bool(payload, "stream"),
    )


StageCallback = Callable[[str, dict[str, Any]], None]


class StagedSettings(Protocol):
    """What :class:`Stages` needs of a light model's settings (the pipeline's, the interpreter's)."""

    @property
    def stage_timeouts(self) -> Mapping[str, float]: ...


class Stages:
    """Calls one model per stage, timing each and turning a model's failure into a pipeline error."""

    def __init__(self, call: ModelCaller, settings: StagedSettings, on_stage: StageCallback | None = None):
        self.call = call
        self.settings = settings
        self.on_stage = on_stage
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            # a version (sd/squares-v1) has its model's timeout
            result = self.call(model, body, self.settings.stage_timeouts[model.partition("/")[0]])
        except StageFailure as failure:
            raise _stage_error(name, failure) from None
        self.timings[name] = round(time.perf_counter() - started, 4)
        if self.on_stage:
            self.on_stage(name, result)
        return result


def generate(request: PipelineRequest, stage: Stages) -> tuple[str, dict[str, Any] | None]:
    """Phase 1: the image to analyze (generated from the prompt, or the request's own) and sd's answer."""
    if request.prompt is None:
        assert request.image is not None  # parse_request requires one of the two
        return request.image, None
    generated = stage("generate", "sd", {"prompt": request.prompt, **request.generation})
    return generated["images"][0], generated


def analyze(request: PipelineRequest, image: str, generated: dict[str, Any] | None, stage: Stages) -> dict[str, Any]:
    """Phase 2: clip, sam and the priors concurrently; then clip on each segmented region."""
    texts = {"texts": request.texts} if request.texts else {}
    with ThreadPoolExecutor(max_workers=2 + len(request.priors)) as pool:
        analysis: Future = pool.submit(stage, "concepts", "clip", {"image": image, **texts})
        segmentation: Future = pool.submit(
            stage, "segment", "sam", {"image": image, **({"roi": request.roi} if request.roi else {})}
        )
        priors = {name: pool.submit(stage, name, name, {"image": image}) for name in request.priors}
        try:
            masks = segmentation.result()
            regions = _describe_regions(stage, image, masks, texts)
            clip = analysis.result()
            prior_results = {name: future.result() for name, future in priors.items()}
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    response = _assemble(request, generated, image, clip, masks, regions, prior_results)
    response["timings"] = dict(stage.timings)
    return response


def run_pipeline(
    request: PipelineRequest, call: ModelCaller, settings: PipelineSettings, on_stage: StageCallback | None = None
) -> dict[str, Any]:
    """Both phases; ``on_stage(name, result)`` sees each stage's result as soon as it ends."""
    stage = Stages(call, settings, on_stage)
    image, generated = generate(request, stage)
    return analyze(request, image, generated, stage)


def _describe_regions(stage: Stages, image: str, masks: dict[str, Any], texts: dict[str, Any]) -> list[dict[str, Any]]:
    """CLIP on every segmented region: one clip request whose ``roi`` are the masks' boxes."""
    boxes = [_usable_box(box) for box in masks.get("boxes", [])]
    if not boxes:
        return []
    result = stage("describe_regions", "clip", {"image": image, "roi": boxes, **texts})
    return [
        {
            "request_id": f"{result['request_id']}:{i}",
            "clip_analysis": {
                "concepts": region["concepts"],
                "confidence_scores": region["confidence_scores"],
                "max_confident_concept": region["max_confidence_concept"],
            },
            "polygon": polygon,
            "box": region["box"],
        }
        for i, (region, polygon) in enumerate(zip(result["regions"], masks.get("polygons", [])))
    ]


def _usable_box(box: list[float]) -> list[float]:
    # an empty or one-pixel mask has a degenerate box; give it one pixel so it can be cropped
    x1, y1, x2, y2 = box
    return [x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)]


def _assemble(
    request: PipelineRequest,
    generated: dict[str, Any] | None,
    image: str,
    clip: dict[str, Any],
    masks: dict[str, Any],
    regions: list[dict[str, Any]],
    priors: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The seed API's response shapes, prompt-in and image-in."""
    segmentation = {
        "masks": masks["masks"],
        "iou_scores": masks["iou_scores"],
        "polygons": masks["polygons"],
        "boxes": masks.get("boxes", []),
        "segmented_regions": regions,
    }
    if generated is not None:
        response = {
            "generated_image": image,
            "seed": generated["seeds"][0],
            "clip_analysis": {
                "all_concepts": clip["concepts"],
                "all_confidence_scores": clip["confidence_scores"],
                "global_confident_concept": clip["max_confidence_concept"],
            },
            "segmentation": segmentation,
        }
    else:
        response = {
            "image": image,
            "clip_analysis": {
                "concepts": clip["concepts"],
                "confidence_scores": clip["confidence_scores"],
                "max_confidence_concept": clip["max_confidence_concept"],
            },
            "basic_segmentation": segmentation,
        }
    for name, result in priors.items():
        response[name] = {k: v for k, v in result.items() if k != "request_id"}
    return response


def _stage_error(stage: str, failure: StageFailure) -> Exception:
    """A model's 4xx is the caller's fault: the pipeline answers the same 4xx, naming the stage."""
    if 400 <= failure.status < 500:
        return InputError(stage, str(failure), code=failure.status, kind="StageRejected")
    return ServerError(f"{stage}: {failure}", code=504 if failure.status == 504 else 502, kind="StageFailed")


def client_caller(client: Any) -> ModelCaller:
    """Adapt :class:`client.Client` to a :class:`ModelCaller`."""
    import requests

    from client import ApiError

    def call(model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            return client.predict(model, body, timeout=timeout)
        except ApiError as exc:
            message = exc.body.get("message") if isinstance(exc.body, dict) else str(exc.body)
            raise StageFailure(exc.status, message or f"HTTP {exc.status}") from None
        except requests.Timeout:
            raise StageFailure(504, f"{model} did not answer within {timeout}s") from None
        except requests.RequestException as exc:
            raise StageFailure(502, f"{model} unreachable: {exc}") from None

    return call
