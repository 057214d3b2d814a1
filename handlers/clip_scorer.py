"""``clip``: score an image (and boxes inside it) against text concepts with CLIP.

A batch of requests is one image forward (every image and every ``roi`` crop together) and one
text forward (the union of the batch's texts not already cached); each request then takes a
softmax over its own texts.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from transformers import CLIPModel, CLIPProcessor

from handlers.common import (
    Batch,
    BatchHandler,
    Result,
    crop,
    decode_image,
    get_boxes,
    get_str_list,
    reject_unknown,
    require,
    weights_dir,
)
from handlers.common.compat import pooled_features
from handlers.common.vocabulary import DEFAULT_CONCEPTS
from handlers.model_settings import ClipSettings

FIELDS = ("image", "texts", "roi")


class ClipScorer(BatchHandler):
    model_label = "clip"
    settings_class = ClipSettings
    settings: ClipSettings

    def load(self, context: Any) -> None:
        path = weights_dir(context)
        self.processor = CLIPProcessor.from_pretrained(path)
        self.model = CLIPModel.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.default_concepts = list(self.settings.concepts or DEFAULT_CONCEPTS)
        self.image_forwards = 0  # observable in tests: one per batch
        self.text_embeddings(self.default_concepts)

    def parse(self, payload: dict[str, Any]) -> dict[str, Any]:
        reject_unknown(payload, FIELDS)
        limits = self.settings.limits
        image = decode_image(require(payload, "image"), limits)
        texts = get_str_list(payload, "texts", max_items=limits.max_texts, max_len=limits.max_text_length)
        boxes = get_boxes(payload, "roi", image_size=image.size, max_items=limits.max_rois)
        return {"image": image, "texts": texts or self.default_concepts, "roi": boxes or []}

    @torch.inference_mode()
    def infer(self, requests: list[dict[str, Any]], batch: Batch) -> list[Result]:
        images = []
        for request in requests:
            images.append(request["image"])
            images.extend(crop(request["image"], box) for box in request["roi"])
        image_embeds = self.image_embeddings(images)
        text_embeds = self.text_embeddings([t for request in requests for t in request["texts"]])
        scale = self.model.logit_scale.exp().float()

        results: list[Result] = []
        row = 0
        for request in requests:
            texts = request["texts"]
            concepts = torch.stack([text_embeds[t] for t in texts])
            count = 1 + len(request["roi"])
            probs = (scale * image_embeds[row:row + count] @ concepts.T).softmax(dim=-1).tolist()
            row += count
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


def _scores(texts: list[str], probs: list[float]) -> dict[str, Any]:
    best = max(range(len(texts)), key=probs.__getitem__)
    return {"concepts": texts, "confidence_scores": probs, "max_confidence_concept": texts[best]}
