"""``caption``: a caption per image with BLIP (``BlipForConditionalGeneration``).

Request ``{"image", "prompt"?, "max_new_tokens"?, "num_beams"?}`` (or a raw image body) ->
``{"request_id", "caption", "model"}``. ``prompt`` is a conditional start ("a photograph of"):
BLIP continues it. Defaults and limits are ``handler`` settings in models/caption/model-config.yaml.

**The caption includes the prompt.** BLIP's convention (its model card and transformers'
``generate``) is that a conditional caption is the decoded sequence, start included: "a photograph
of" -> "a photograph of a woman and her dog". The caption is that text as BLIP's tokenizer
normalises it (the hub's tokenizer lowercases, and spaces punctuation), so it starts with the
prompt whenever the prompt is already lowercase words.

A batch is one ``generate`` call per group of requests that share ``max_new_tokens``,
``num_beams`` and ``prompt``: generation settings are per call, and prompts of different token
lengths would have to be padded on the right, which changes what BLIP generates (its ``generate``
drops only the last column, the longest prompt's [SEP], so a shorter prompt's row continues after
its own [SEP] and pads). Inside a group the inputs are identical in shape, so a caption is the same
alone or batched (tested).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import BertTokenizer, BlipForConditionalGeneration, BlipProcessor
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from handlers.common import InputError, decode_image, get_int, get_str, reject_unknown, require, weights_dir
from handlers.common.base import Batch, BatchHandler, Result
from handlers.model_settings import CaptionSettings

FIELDS = ("image", "prompt", "max_new_tokens", "num_beams")


class Captioner(BatchHandler):
    model_label = "caption"
    settings: CaptionSettings

    def load(self, context: Any) -> None:
        path = weights_dir(context)
        # the PIL image processor, named explicitly: BLIP's default one imports torchvision
        self.processor = BlipProcessor(
            image_processor=BlipImageProcessorPil.from_pretrained(path), tokenizer=BertTokenizer.from_pretrained(path)
        )
        self.model = self.pretrained_model(BlipForConditionalGeneration, path)
        self.max_positions = int(self.model.config.text_config.max_position_embeddings)
        self.generate_calls = 0  # observable in tests: one per group of requests

    def parse(self, payload: dict[str, Any]) -> dict[str, Any]:
        reject_unknown(payload, FIELDS)
        limits, settings = self.settings.limits, self.settings
        image = decode_image(require(payload, "image"), limits)
        prompt = get_str(payload, "prompt", max_len=limits.max_prompt_length)
        max_new_tokens = cast(
            int,
            get_int(
                payload, "max_new_tokens", default=settings.max_new_tokens, minimum=1, maximum=limits.max_new_tokens
            ),
        )
        num_beams = get_int(payload, "num_beams", default=settings.num_beams, minimum=1, maximum=limits.max_num_beams)
        if prompt is not None:
            # the decoder holds the prompt ([DEC] + its tokens) and the new tokens in its positions
            start = len(self.processor.tokenizer(prompt).input_ids) - 1
            if start + max_new_tokens > self.max_positions:
                raise InputError(
                    "prompt",
                    f"is {start - 1} tokens; with max_new_tokens {max_new_tokens} that is over "
                    f"the model's {self.max_positions} positions",
                )
        return {"image": image, "prompt": prompt, "max_new_tokens": max_new_tokens, "num_beams": num_beams}

    def infer(self, requests: list[dict[str, Any]], batch: Batch) -> list[Result]:
        """One ``generate`` per group of requests sharing their settings and prompt; a group that
        fails is retried request by request (the base class's isolation), never failing the others."""
        groups = plan_groups(requests)
        if len(groups) == 1:
            return self.caption(requests)
        return self.infer_in_groups(requests, batch, groups)

    @torch.inference_mode()
    def caption(self, group: list[dict[str, Any]]) -> list[Result]:
        """One ``generate`` for requests that share ``prompt``, ``max_new_tokens`` and ``num_beams``."""
        first = group[0]
        prompt = first["prompt"]
        inputs = self.processor(
            images=[request["image"] for request in group],
            text=None if prompt is None else [prompt] * len(group),
            return_tensors="pt",
        )
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        tokens = self.model.generate(**inputs, max_new_tokens=first["max_new_tokens"], num_beams=first["num_beams"])
        self.generate_calls += 1
        self.add_metric("CaptionsGenerated", len(group))
        captions = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [{"caption": caption.strip(), "model": self.settings.model_name} for caption in captions]


def plan_groups(requests: list[dict[str, Any]]) -> list[list[int]]:
    """Positions of the requests that share one ``generate`` call, in order of first appearance."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault((request["max_new_tokens"], request["num_beams"], request["prompt"]), []).append(i)
    return list(groups.values())
