"""``clip``: score an image (and boxes inside it) against text concepts with CLIP.

Two request forms:

- ``{"image", "texts"?, "roi"?}``: softmax scores of the image (and of each ``roi`` crop) over its
  texts (``concepts``, ``confidence_scores``, ``max_confidence_concept``, ``regions``).
- ``{"images": [b64...], "texts"?, "reference_image"?}``: per image, the raw cosine similarity of
  its CLIP embedding to each text's and to the reference image's (``similarities: [{"texts":
  [cos...], "reference"?: cos}]``): what the interpreter ranks its samples by. No softmax: a
  cosine compares across requests and texts, a softmax only within one request's texts.

A batch of requests is one image forward (every image, ``roi`` crop and reference image of every
request together) and one text forward (the union of the batch's texts not already cached).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from transformers import CLIPModel, CLIPProcessor

from handlers.common import (
    InputError,
    LimitError,
    crop,
    decode_image,
    get_boxes,
    get_str_list,
    reject_unknown,
    require,
    weights_dir,
)
from handlers.common.base import Batch, BatchHandler, Result
from handlers.common.compat import pooled_features
from handlers.common.payload import json_type
from handlers.common.vocabulary import DEFAULT_CONCEPTS
from handlers.model_settings import ClipSettings

FIELDS = ("image", "images", "texts", "roi", "reference_image")


class ClipScorer(BatchHandler):
    model_label = "clip"
    settings: ClipSettings

    def load(self, context: Any) -> None:
        self.processor, self.model = self.pretrained(CLIPProcessor, CLIPModel, weights_dir(context))
        self.text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.default_concepts = list(self.settings.concepts or DEFAULT_CONCEPTS)
        self.image_forwards = 0  # observable in tests: one per batch
        self.text_embeddings(self.default_concepts)

    def parse(self, payload: dict[str, Any]) -> dict[str, Any]:
        reject_unknown(payload, FIELDS)
        limits = self.settings.limits
        texts = get_str_list(payload, "texts", max_items=limits.max_texts, max_len=limits.max_text_length)
        if payload.get("images") is not None:
            return self._parse_images(payload, texts)
        if payload.get("reference_image") is not None:
            raise InputError("reference_image", "only applies to the 'images' form (raw cosine similarities)")
        image = decode_image(require(payload, "image"), limits)
        boxes = get_boxes(payload, "roi", image_size=image.size, max_items=limits.max_rois)
        return {"image": image, "texts": texts or self.default_concepts, "roi": boxes or []}

    def _parse_images(self, payload: dict[str, Any], texts: list[str] | None) -> dict[str, Any]:
        limits = self.settings.limits
        for other in ("image", "roi"):
            if payload.get(other) is not None:
                raise InputError(
                    other,
                    "give either 'image' (softmax scores) or 'images' (raw cosine similarities), not both"
                    if other == "image"
                    else "only applies to the single 'image' form",
                )
        values = payload["images"]
        if not isinstance(values, list):
            raise InputError("images", f"must be a list of base64-encoded PNG or JPEG strings, got {json_type(values)}")
        if not values:
            raise InputError("images", "must not be an empty list")
        if len(values) > limits.max_images:
            raise LimitError("images", f"has {len(values)} images; the limit is {limits.max_images}")
        images = [decode_image(value, limits, field=f"images[{i}]") for i, value in enumerate(values)]
        reference = payload.get("reference_image")
        return {
            "images": images,
            "texts": texts or self.default_concepts,
            "reference": None if reference is None else decode_image(reference, limits, field="reference_image"),
        }

    @torch.inference_mode()
    def infer(self, requests: list[dict[str, Any]], batch: Batch) -> list[Result]:
        images = [image for request in requests for image in _request_images(request)]
        image_embeds = self.image_embeddings(images)
        text_embeds = self.text_embeddings([t for request in requests for t in request["texts"]])
        scale = self.model.logit_scale.exp().float()

        results: list[Result] = []
        row = 0
        for request in requests:
            texts = request["texts"]
            concepts = torch.stack([text_embeds[t] for t in texts])
            count = len(_request_images(request))
            embeds = image_embeds[row : row + count]
            row += count
            if "images" in request:
                results.append(_similarities(texts, embeds, concepts, request["reference"] is not None))
                continue
            probs = (scale * embeds @ concepts.T).softmax(dim=-1).tolist()
            result = _scores(texts, probs[0])
            if request["roi"]:
                result["regions"] = [{"box": box, **_scores(texts, p)} for box, p in zip(request["roi"], probs[1:])]
            results.append(result)
        return results

    def image_embeddings(self, images: list) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        self.image_forwards += 1
        return _normalize(features)

    def text_embeddings(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Embeddings for ``texts``; the uncached ones are encoded together in one forward."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.text_cache))
        if missing:
            tokens = self.processor.tokenizer(missing, padding=True, truncation=True, return_tensors="pt")
            features = _normalize(self.model.get_text_features(**tokens.to(self.device)))
            for text, embedding in zip(missing, features):
                self.text_cache[text] = embedding
        found = {}
        for text in texts:
            self.text_cache.move_to_end(text)
            found[text] = self.text_cache[text]
        while len(self.text_cache) > max(self.settings.text_cache_size, len(found)):
            self.text_cache.popitem(last=False)
        return found


def _normalize(features: Any) -> torch.Tensor:
    tensor = pooled_features(features).float()
    return tensor / tensor.norm(dim=-1, keepdim=True)


def _request_images(request: dict[str, Any]) -> list[Any]:
    """The images one request adds to the batch's image forward, in the order its answer reads them."""
    if "images" in request:
        return [*request["images"], *([request["reference"]] if request["reference"] is not None else [])]
    return [request["image"], *(crop(request["image"], box) for box in request["roi"])]


def _similarities(
    texts: list[str], embeds: torch.Tensor, concepts: torch.Tensor, with_reference: bool
) -> dict[str, Any]:
    """Raw cosines (the embeddings are unit vectors): each image against each text and the reference."""
    samples = embeds[:-1] if with_reference else embeds
    text_cosines = (samples @ concepts.T).tolist()
    reference_cosines = (samples @ embeds[-1]).tolist() if with_reference else None
    return {
        "texts": texts,
        "similarities": [
            {"texts": row, **({"reference": reference_cosines[i]} if reference_cosines is not None else {})}
            for i, row in enumerate(text_cosines)
        ],
    }


def _scores(texts: list[str], probs: list[float]) -> dict[str, Any]:
    best = max(range(len(texts)), key=probs.__getitem__)
    return {"concepts": texts, "confidence_scores": probs, "max_confidence_concept": texts[best]}
