"""The interpreter's stages as plain functions: a picture -> its priors -> new images from them, ranked by CLIP.

A sibling of workflows/stages.py (the pipeline's stages), sharing its model caller,
stage runner and error mapping; kept in its own module because it is as long as the pipeline's and
shares none of its request fields. Nothing here knows about TorchServe: the models are reached
through a :class:`~workflows.stages.ModelCaller` (the REST client in production), so interpreter
traffic goes through each model's own batching queue and workers, and its weights are resident once.

The stages of one request:

1. **priors**, concurrently: ``caption`` (BLIP), ``depth`` and ``pose`` (their ``control_image``),
   and ``canny`` (computed here from the source image with the canny helper: no model). A caption
   or a prior image the client supplies is used as it is and not computed again.
2. **generate**: in ``each`` mode one ``sd`` request per prior (``samples`` prompts, seeds ``seed …
   seed + samples - 1``: every prior on the same noise), in ``combined`` mode one request with every
   prior in ``control`` (a MultiControlNet); all of them sent at once, so TorchServe batches them
   with each other and with other traffic.
3. **score**: one ``clip`` request (its ``images`` form) with every sample, the caption as the only
   text and the source as the reference image: ``scores.caption`` is the image–text cosine,
   ``scores.source`` the image–image cosine. ``rank`` 0 is the best by the yaml's ``rank_by``.
4. **upscale** (only with ``"upscale": true``): one ``upscale`` request on the best sample, with the
   caption as its prompt and the sample's seed; its image is ``samples[best].upscaled``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from client.rest import versioned
from handlers.common import (
    InputError,
    LimitError,
    ServerError,
    check_number,
    check_str,
    decode_image,
    encode_png,
    get_bool,
    get_int,
    get_str,
    get_str_list,
    reject_unknown,
    require,
)
from handlers.common.payload import json_type
from handlers.model_settings import CONTROL_TYPES, INTERPRET_MODES, InterpretLimits, InterpretSettings

from .stages import ModelCaller, Stages

PRIORS = CONTROL_TYPES  # each prior conditions sd's ControlNet of the same name
GENERATION_FIELDS = ("negative_prompt", "width", "height", "steps", "guidance_scale", "scheduler")
FIELDS = (
    "image",
    "caption",
    "priors",
    "mode",
    "samples",
    "scales",
    "prior_images",
    "seed",
    "stream",
    "sd_version",
    "upscale",
    *GENERATION_FIELDS,
)
SEED_SPACE = 2**32  # sd's seeds (handlers/text_to_image.py): 0 .. 2**32 - 1, a prompt list's seeds wrap


# --- the request ---------------------------------------------------------------------------------


@dataclass
class InterpretRequest:
    image: str  # base64, as the client sent it (what the models receive)
    source: Image.Image  # decoded once here: canny runs on it
    caption: str | None  # supplied by the client: BLIP is not called
    priors: list[str]
    mode: str
    samples: int
    seed: int
    scales: dict[str, float] = field(default_factory=dict)
    prior_images: dict[str, str] = field(default_factory=dict)  # supplied control images (base64)
    generation: dict[str, Any] = field(default_factory=dict)  # sd's generation fields, checked here
    stream: bool = False
    upscale: bool = False  # the best sample upscaled x4 as well
    sd_version: str | None = None  # one of sd's versions (a fine-tune); None: default


def parse_request(payload: dict[str, Any], settings: InterpretSettings) -> InterpretRequest:
    """Validate every field before any model runs; raise InputError naming the field."""
    reject_unknown(payload, FIELDS)
    limits = settings.limits
    image = require(payload, "image")
    if not isinstance(image, str):
        raise InputError("image", "must be a base64-encoded PNG or JPEG string")
    source = decode_image(image, limits)
    caption = get_str(payload, "caption", max_len=limits.max_caption_length)
    priors = _priors(payload, settings)
    return InterpretRequest(
        image=image,
        source=source,
        caption=caption,
        priors=priors,
        mode=_mode(payload, settings),
        samples=get_int(payload, "samples", default=settings.samples, minimum=1, maximum=limits.max_samples),
        seed=_seed(payload),
        scales=_scales(payload, priors, limits),
        prior_images=_prior_images(payload, priors, limits),
        generation=_generation(payload, settings),
        stream=get_bool(payload, "stream"),
        upscale=get_bool(payload, "upscale"),
        sd_version=_sd_version(payload, limits),
    )


def _mode(payload: dict[str, Any], settings: InterpretSettings) -> str:
    mode = get_str(payload, "mode", default=settings.mode)
    if mode not in INTERPRET_MODES:
        raise InputError("mode", f"must be one of {list(INTERPRET_MODES)}, got {mode!r}")
    return mode


def _seed(payload: dict[str, Any]) -> int:
    # without a seed the interpreter draws one, so that in `each` mode every prior gets the same noise
    seed = get_int(payload, "seed", minimum=0, maximum=SEED_SPACE - 1)
    return secrets.randbelow(SEED_SPACE) if seed is None else seed


def _sd_version(payload: dict[str, Any], limits: InterpretLimits) -> str | None:
    """A TorchServe version of sd (scripts/deploy_version.sh prints it), so a person sees base and adapter."""
    version = get_str(payload, "sd_version", max_len=limits.max_version_length)
    if version is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", version):
        raise InputError("sd_version", f"must be a version name (letters, digits, '.', '_', '-'), got {version!r}")
    return version


def _priors(payload: dict[str, Any], settings: InterpretSettings) -> list[str]:
    priors = get_str_list(payload, "priors", max_items=len(PRIORS)) or list(settings.priors)
    for i, prior in enumerate(priors):
        if prior not in PRIORS:
            raise InputError(f"priors[{i}]", f"unknown prior {prior!r}; choose from {list(PRIORS)}")
        if prior in priors[:i]:
            raise InputError(
                f"priors[{i}]", f"{prior!r} is already priors[{priors.index(prior)}]; each prior may appear once"
            )
    return priors


def _object(payload: dict[str, Any], key: str, priors: list[str]) -> dict[str, Any]:
    """A JSON object whose keys are priors of this request (``scales``, ``prior_images``)."""
    value = payload.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(key, f"must be an object {{prior: value}}, got {json_type(value)}")
    for name in value:
        if name not in priors:
            raise InputError(f"{key}.{name}", f"is not among this request's priors {priors}")
    return value


def _scales(payload: dict[str, Any], priors: list[str], limits: InterpretLimits) -> dict[str, float]:
    return {
        name: float(check_number(scale, f"scales.{name}", minimum=0, maximum=limits.max_control_scale))
        for name, scale in _object(payload, "scales", priors).items()
    }


def _prior_images(payload: dict[str, Any], priors: list[str], limits: InterpretLimits) -> dict[str, str]:
    images = _object(payload, "prior_images", priors)
    for name, value in images.items():
        if not isinstance(value, str):
            raise InputError(f"prior_images.{name}", "must be a base64-encoded PNG or JPEG string")
        decode_image(value, limits, field=f"prior_images.{name}")
    return dict(images)


def _generation(payload: dict[str, Any], settings: InterpretSettings) -> dict[str, Any]:
    """sd's generation fields, checked against sd's limits here (the yaml mirrors them) so a bad value
    is refused before the caption and priors run, not by sd afterwards."""
    limits = settings.limits
    generation: dict[str, Any] = {}
    for key in ("width", "height"):
        if payload.get(key) is not None:
            side = int(check_number(payload[key], key, integer=True, minimum=limits.min_side, maximum=limits.max_side))
            if side % limits.size_multiple:
                raise InputError(key, f"must be a multiple of {limits.size_multiple}, got {side}")
            generation[key] = side
    if ("width" in generation) != ("height" in generation):
        given = "width" if "width" in generation else "height"
        # one side alone would take the other from each control image's aspect, which sd could then
        # refuse after the priors ran: both or neither is checkable here
        raise InputError(given, "give both width and height, or neither (the samples then take the source's size)")
    if "width" in generation:
        width, height = generation["width"], generation["height"]
        if width * height > limits.max_pixels:
            raise LimitError("width", f"{width}x{height} is {width * height} pixels; the limit is {limits.max_pixels}")
    steps = get_int(payload, "steps", minimum=1, maximum=limits.max_steps)
    if steps is not None:
        generation["steps"] = steps
    if payload.get("guidance_scale") is not None:
        generation["guidance_scale"] = float(
            check_number(payload["guidance_scale"], "guidance_scale", minimum=0, maximum=limits.max_guidance_scale)
        )
    if payload.get("negative_prompt") is not None:
        generation["negative_prompt"] = check_str(
            payload["negative_prompt"], "negative_prompt", max_len=limits.max_caption_length, allow_empty=True
        )
    scheduler = get_str(payload, "scheduler")
    if scheduler is not None:
        if scheduler not in settings.sd_schedulers:
            raise InputError("scheduler", f"must be one of {settings.sd_schedulers}, got {scheduler!r}")
        generation["scheduler"] = scheduler
    return generation


# --- running it ----------------------------------------------------------------------------------

EventCallback = Callable[[str, Any], None]
EdgeDetector = Callable[[Image.Image, int, int], Image.Image]


def run_interpret(
    request: InterpretRequest,
    call: ModelCaller,
    settings: InterpretSettings,
    on_event: EventCallback | None = None,
    edges: EdgeDetector | None = None,
) -> dict[str, Any]:
    """The three stages; ``on_event(stage, result)`` sees the caption, each prior and the scored samples
    as soon as each is ready (the stream's events). ``edges`` is the canny helper (default: the project's)."""
    stage = Stages(call, settings)
    emit = on_event or (lambda name, result: None)
    # one thread per concurrent model call of this request: caption + 3 priors, then one sd call per prior
    pool = ThreadPoolExecutor(max_workers=1 + len(PRIORS), thread_name_prefix="interpret")
    try:
        caption, priors = _priors_stage(request, stage, settings, pool, emit, edges)
        samples = _generate_stage(request, caption["text"], priors, stage, pool)
        best = _score_stage(request, caption["text"], samples, stage, settings)
        if request.upscale:
            _upscale_stage(caption["text"], samples[best], stage)
    finally:
        # a failed stage answers at once: calls still in flight finish (bounded by their timeouts) unwaited
        pool.shutdown(wait=False, cancel_futures=True)
    emit("samples", {"samples": samples, "best": best})
    return {"caption": caption, "priors": priors, "samples": samples, "best": best, "timings": dict(stage.timings)}


def _priors_stage(
    request: InterpretRequest,
    stage: Stages,
    settings: InterpretSettings,
    pool: ThreadPoolExecutor,
    emit: EventCallback,
    edges: EdgeDetector | None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Caption, depth, pose and canny at once; what the client supplied is taken as it is."""
    futures: dict[Future, str] = {}
    if request.caption is None:
        futures[pool.submit(stage, "caption", "caption", {"image": request.image})] = "caption"
    for name in request.priors:
        if name in request.prior_images:
            continue
        if name == "canny":
            futures[pool.submit(_canny_stage, request, stage, settings, edges)] = name
        else:
            futures[pool.submit(stage, name, name, {"image": request.image})] = name
    caption = {"text": request.caption, "edited": True} if request.caption is not None else None
    if caption is not None:
        emit("caption", caption)
    priors: dict[str, dict[str, Any]] = {}
    for name, image in request.prior_images.items():
        priors[name] = {"control_image": image, "supplied": True}
        emit(name, priors[name])
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
        for future in done:
            name = futures[future]
            result = future.result()  # a failed stage raises here, without waiting for the others
            if name == "caption":
                if not result["caption"].strip():  # sd and clip would refuse it: say where it came from
                    raise ServerError(
                        "caption: the caption model returned an empty caption; send one in 'caption'",
                        code=502,
                        kind="StageFailed",
                    )
                caption = {"text": result["caption"], "edited": False}
                emit("caption", caption)
            else:
                priors[name] = {key: value for key, value in result.items() if key != "request_id"}
                emit(name, priors[name])
    assert caption is not None
    return caption, {name: priors[name] for name in request.priors}  # in the order asked


def _canny_stage(
    request: InterpretRequest, stage: Stages, settings: InterpretSettings, edges: EdgeDetector | None
) -> dict[str, Any]:
    started = time.perf_counter()
    edge_map = (edges or _canny_helper())(request.source, settings.canny.low_threshold, settings.canny.high_threshold)
    stage.timings["canny"] = round(time.perf_counter() - started, 4)
    return {"control_image": encode_png(edge_map)}


def _canny_helper() -> EdgeDetector:
    from handlers.common.edges import canny_edges

    return canny_edges


def generation_groups(request: InterpretRequest) -> list[list[str]]:
    """The priors of each sd request: one per prior (``each``), or all of them together (``combined``)."""
    return [[name] for name in request.priors] if request.mode == "each" else [list(request.priors)]


def generation_body(
    request: InterpretRequest, caption: str, group: list[str], priors: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One sd request: ``samples`` copies of the caption as prompts, seeds from the request's seed."""
    control = [
        {
            "type": name,
            "image": priors[name]["control_image"],
            **({"scale": request.scales[name]} if name in request.scales else {}),
        }
        for name in group
    ]
    return {"prompt": [caption] * request.samples, "seed": request.seed, "control": control, **request.generation}


def _generate_stage(
    request: InterpretRequest, caption: str, priors: dict[str, dict[str, Any]], stage: Stages, pool: ThreadPoolExecutor
) -> list[dict[str, Any]]:
    """Every sd request sent at once; the samples in request order (priors as asked, then seed)."""
    groups = generation_groups(request)
    sd = versioned("sd", request.sd_version)
    futures = [
        pool.submit(
            stage,
            "generate" if request.mode == "combined" else f"generate_{group[0]}",
            sd,
            generation_body(request, caption, group, priors),
        )
        for group in groups
    ]
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    for future in done:
        future.result()  # a failed sd call raises here, without waiting for the others
    samples = []
    for group, future in zip(groups, futures):
        answer = future.result()
        for image, seed in zip(answer["images"], answer["seeds"]):
            # `model` names the sd version that made the sample (the studio records it)
            samples.append({"image": image, "seed": seed, "priors": list(group), "model": answer["model"]})
    return samples


def _score_stage(
    request: InterpretRequest, caption: str, samples: list[dict[str, Any]], stage: Stages, settings: InterpretSettings
) -> int:
    """One clip call scores every sample; ``rank`` by the yaml's rule; returns ``best``."""
    answer = stage(
        "score",
        "clip",
        {
            "images": [sample["image"] for sample in samples],
            # CLIP reads its first 77 tokens: a long caption is cut to clip's text limit
            "texts": [caption[: settings.limits.max_caption_length]],
            "reference_image": request.image,
        },
    )
    for sample, similarity in zip(samples, answer["similarities"]):
        sample["scores"] = {"caption": similarity["texts"][0], "source": similarity["reference"]}
    for rank, index in enumerate(rank_order(samples, settings.rank_by)):
        samples[index]["rank"] = rank
    return next(i for i, sample in enumerate(samples) if sample["rank"] == 0)


def _upscale_stage(caption: str, sample: dict[str, Any], stage: Stages) -> None:
    """The best sample x4: ``sample["upscaled"]``, guided by the caption, seeded by the sample's seed."""
    answer = stage("upscale", "upscale", {"image": sample["image"], "prompt": caption, "seed": sample["seed"]})
    sample["upscaled"] = answer["image"]


def ranking_score(scores: dict[str, float], rule: str) -> float:
    """The number ``rank`` orders by: ``mean`` of the two cosines, or one of them (``caption``, ``source``)."""
    if rule == "mean":
        return (scores["caption"] + scores["source"]) / 2
    return scores[rule]


def rank_order(samples: list[dict[str, Any]], rule: str) -> list[int]:
    """Sample indices best first; a tie keeps request order (the earlier sample ranks higher)."""
    return sorted(range(len(samples)), key=lambda i: (-ranking_score(samples[i]["scores"], rule), i))
