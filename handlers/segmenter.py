"""``sam``: Segment Anything — masks for boxes and/or points, or automatic masks with no prompt.

Request ``{"image", "roi"?: [[x1,y1,x2,y2]], "points"?: [[x,y]], "point_labels"?: [0|1],
"multimask"?: bool}`` in pixels of the input image (a raw image body is an automatic request).

Prompts (what one request asks for):
- ``roi`` only: one prompt per box -> one mask per box, in ``roi`` order.
- ``points`` only: all the points together are ONE prompt (clicks on one object, SAM's usual
  meaning) -> one mask. ``point_labels`` gives 1 (foreground) or 0 (background) per point;
  without it every point is foreground.
- ``roi`` and ``points``: the points refine every box: one prompt per box, each with all the
  points -> one mask per box.
- ``multimask: true``: each prompt returns SAM's three candidate masks (whole, part, sub-part),
  prompt-major (masks 3i, 3i+1, 3i+2 belong to prompt i); the default is one mask per prompt.
- no prompt: automatic masks: a ``points_per_side`` x ``points_per_side`` grid of foreground
  points, decoded in batches of ``points_per_batch`` on the one image embedding, three candidates
  each; candidates are kept when predicted IoU > ``pred_iou_thresh`` and stability score >
  ``stability_score_thresh`` (a threshold <= 0 disables its filter; both are judged on the
  decoder's low-resolution logits), empty ones dropped, duplicates removed by box NMS at
  ``box_nms_thresh``, and the best ``max_masks`` by predicted IoU returned, best first.

Response ``{"masks": [b64 1-bit PNG at the input size], "rle": [COCO RLE], "iou_scores",
"polygons": [[[x,y],...]], "boxes": [[x1,y1,x2,y2]], "areas", "cache_hit"}``; the per-mask
conventions are handlers/common/masks.py's.

Batching: the image encoder (the expensive part) runs once per batch, on every image of the batch
that is not in the embedding cache (an LRU keyed by the decoded pixels' hash); the prompt encoder
and mask decoder then run per request. ``cache_hit`` is true when the request's embedding was
already cached before its batch.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import SamModel, SamProcessor

from handlers.common import (
    InputError,
    LimitError,
    check_number,
    decode_image,
    get_bool,
    get_boxes,
    get_points,
    reject_unknown,
    require,
    weights_dir,
)
from handlers.common.base import Batch, BatchHandler, Result
from handlers.common.boxes import box_nms
from handlers.common.masks import encode_mask, encoded_size_bound, masks_to_boxes, stability_scores
from handlers.model_settings import SamSettings

logger = logging.getLogger(__name__)

FIELDS = ("image", "roi", "points", "point_labels", "multimask")
CANDIDATES = 3  # SAM's multimask output: three masks per prompt

RESPONSE_OVERHEAD = 512  # request_id, keys, brackets, cache_hit


class Segmenter(BatchHandler):
    model_label = "sam"
    settings: SamSettings

    def load(self, context: Any) -> None:
        self.processor, self.model = self.pretrained(SamProcessor, SamModel, weights_dir(context))
        self.image_processor = self.processor.image_processor
        pad = self.image_processor.pad_size
        self.pad_size = (int(pad["height"]), int(pad["width"]))
        self.input_side = int(self.image_processor.size["longest_edge"])

        self.cache: OrderedDict[str, tuple[torch.Tensor, tuple[int, int]]] = OrderedDict()
        self.max_automatic_masks = min(self.settings.automatic.max_masks, self.settings.limits.max_masks)
        self.worst_case_response = self.worst_case_response_bytes()
        if self.worst_case_response > self.settings.limits.max_response_bytes:
            logger.warning(
                "sam: a legal request could need %d response bytes, over max_response_bytes=%d; "
                "such responses are refused with a 413 (lower max_masks or the image limits)",
                self.worst_case_response,
                self.settings.limits.max_response_bytes,
            )

        # observable in tests and benchmarks
        self.encoder_forwards = 0
        self.decoder_forwards = 0

    def worst_case_response_bytes(self) -> int:
        """Strict bound on one response's size, for the image limits and ``max_masks``."""
        side, pixels = self.settings.limits.max_image_side, self.settings.limits.max_image_pixels
        other = max(1, min(side, pixels // side))
        per_mask = max(
            encoded_size_bound(other, side, self.settings.polygon_max_points),
            encoded_size_bound(side, other, self.settings.polygon_max_points),
        )
        return self.settings.limits.max_masks * per_mask + RESPONSE_OVERHEAD

    # --- requests ------------------------------------------------------------------------------
    def parse(self, payload: dict[str, Any]) -> dict[str, Any]:
        reject_unknown(payload, FIELDS)
        image = decode_image(require(payload, "image"), self.settings.limits)
        size = image.size
        if int(min(size) * self.input_side / max(size) + 0.5) < 1:  # the processor's rounding
            raise InputError(
                "image", f"is {size[0]}x{size[1]}: too elongated to resize to a longest side of {self.input_side}"
            )
        boxes = get_boxes(payload, "roi", image_size=size, max_items=self.settings.limits.max_boxes)
        points = get_points(payload, "points", image_size=size, max_items=self.settings.limits.max_points)
        labels = self._labels(payload, points)
        multimask = get_bool(payload, "multimask", False)
        if boxes or points:
            prompts = len(boxes) if boxes else 1
            masks = prompts * (CANDIDATES if multimask else 1)
            if masks > self.settings.limits.max_masks:
                raise LimitError(
                    "roi" if boxes else "multimask",
                    f"{prompts} prompt(s) x {CANDIDATES if multimask else 1} mask(s) = {masks} masks; "
                    f"the limit is {self.settings.limits.max_masks} per request",
                )
        key = hashlib.blake2b(image.tobytes(), digest_size=16, person=b"sam-embed")
        key.update(f"{size[0]}x{size[1]}".encode())
        return {
            "image": image,
            "key": key.hexdigest(),
            "roi": boxes,
            "points": points,
            "labels": labels,
            "multimask": multimask,
        }

    @staticmethod
    def _labels(payload: dict[str, Any], points: list[list[float]] | None) -> list[int] | None:
        value = payload.get("point_labels")
        if value is None:
            return [1] * len(points) if points else None
        if points is None:
            raise InputError("point_labels", "given without points")
        if not isinstance(value, list):
            raise InputError("point_labels", "must be a list of 0 (background) or 1 (foreground), one per point")
        if len(value) != len(points):
            raise InputError("point_labels", f"has {len(value)} labels for {len(points)} points")
        labels = []
        for i, label in enumerate(value):
            number = check_number(label, f"point_labels[{i}]", integer=True)
            if number not in (0, 1):
                raise InputError(f"point_labels[{i}]", f"must be 0 (background) or 1 (foreground), got {label}")
            labels.append(int(number))
        return labels

    # --- the model -----------------------------------------------------------------------------
    @torch.inference_mode()
    def infer(self, requests: list[dict[str, Any]], batch: Batch) -> list[Result]:
        embeddings, hits = self.image_embeddings([r["image"] for r in requests], [r["key"] for r in requests])
        results: list[Result] = []
        returned = 0
        for request, (embedding, reshaped), hit in zip(requests, embeddings, hits):
            original = (request["image"].height, request["image"].width)
            if request["roi"] or request["points"]:
                masks, scores = self.segment_prompts(request, embedding, reshaped, original)
            else:
                masks, scores = self.segment_automatic(embedding, reshaped, original)
            try:
                result = self.respond(masks, scores, automatic=not (request["roi"] or request["points"]))
            except LimitError as err:
                results.append(err)
                continue
            result["cache_hit"] = hit
            returned += len(result["masks"])
            results.append(result)
        self.add_metric("MasksReturned", returned)
        self.add_metric("EmbeddingCacheHits", sum(hits))
        return results

    def image_embeddings(
        self, images: list, keys: list[str]
    ) -> tuple[list[tuple[torch.Tensor, tuple[int, int]]], list[bool]]:
        """(embedding (1, C, h, w), reshaped (h, w)) per image, and whether each was cached; the
        images not cached go through the image encoder together, in one forward."""
        hits = [key in self.cache for key in keys]
        missing: dict[str, Any] = {}
        for key, image, hit in zip(keys, images, hits):
            if not hit:
                missing.setdefault(key, image)
        found = {key: self.cache[key] for key, hit in zip(keys, hits) if hit}
        if missing:
            inputs = self.image_processor(list(missing.values()), return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            encoded = self.model.get_image_embeddings(pixels)
            self.encoder_forwards += 1
            for key, embedding, reshaped in zip(missing, encoded, inputs["reshaped_input_sizes"].tolist()):
                found[key] = (embedding[None], (int(reshaped[0]), int(reshaped[1])))
        for key in keys:
            if self.settings.embedding_cache_size > 0:
                self.cache[key] = found[key]
                self.cache.move_to_end(key)
        while len(self.cache) > max(self.settings.embedding_cache_size, 0):
            self.cache.popitem(last=False)
        return [found[key] for key in keys], hits

    def segment_prompts(
        self, request: dict[str, Any], embedding: torch.Tensor, reshaped: tuple[int, int], original: tuple[int, int]
    ) -> tuple[np.ndarray, list[float]]:
        """One mask per prompt (three with ``multimask``), prompt-major, at the input image's size."""
        scale = torch.tensor([reshaped[1] / original[1], reshaped[0] / original[0]], dtype=torch.float32)
        boxes = points = labels = None
        prompts = 1
        if request["roi"]:
            boxes = (torch.tensor(request["roi"], dtype=torch.float32).view(-1, 2, 2) * scale).view(1, -1, 4)
            prompts = boxes.shape[1]
        if request["points"]:
            coords = torch.tensor(request["points"], dtype=torch.float32) * scale
            points = coords[None, None].expand(1, prompts, -1, -1).contiguous()
            labels = torch.tensor(request["labels"], dtype=torch.long)[None, None].expand(1, prompts, -1).contiguous()
        output = self.model(
            image_embeddings=embedding,
            input_boxes=None if boxes is None else boxes.to(self.device),
            input_points=None if points is None else points.to(self.device),
            input_labels=None if labels is None else labels.to(self.device),
            multimask_output=request["multimask"],
        )
        self.decoder_forwards += 1
        low_res = output.pred_masks[0].flatten(0, 1)  # (prompts * k, h, w)
        scores = output.iou_scores[0].flatten().float().tolist()
        return self.upscale(low_res, reshaped, original), scores

    def segment_automatic(
        self, embedding: torch.Tensor, reshaped: tuple[int, int], original: tuple[int, int]
    ) -> tuple[np.ndarray, list[float]]:
        cfg = self.settings.automatic
        side = cfg.points_per_side
        per_batch = cfg.points_per_batch
        iou_thresh = cfg.pred_iou_thresh
        stability_thresh = cfg.stability_score_thresh
        offset = cfg.stability_score_offset
        max_masks = self.max_automatic_masks
        cap = max(8 * max_masks, 256)  # candidates kept between decoder batches (bounds memory)

        # the grid's points in the model's input frame (the resized, unpadded image)
        ticks = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        grid = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), dim=-1).reshape(-1, 2)
        grid = grid * torch.tensor([reshaped[1], reshaped[0]], dtype=torch.float32)

        low_h = low_w = None
        logits_kept: list[torch.Tensor] = []
        scores_kept: list[torch.Tensor] = []
        boxes_kept: list[torch.Tensor] = []
        for start in range(0, grid.shape[0], per_batch):
            batch = grid[start : start + per_batch]
            points = batch[None, :, None, :].to(self.device)
            labels = torch.ones(points.shape[:3], dtype=torch.long, device=self.device)
            output = self.model(
                image_embeddings=embedding, input_points=points, input_labels=labels, multimask_output=True
            )
            self.decoder_forwards += 1
            logits = output.pred_masks[0].flatten(0, 1).float()  # (n * 3, h, w), padded frame
            scores = output.iou_scores[0].flatten().float()
            if low_h is None:
                # the part of the low-resolution frame that covers the image, not the padding
                low_h = math.ceil(reshaped[0] * logits.shape[-2] / self.pad_size[0])
                low_w = math.ceil(reshaped[1] * logits.shape[-1] / self.pad_size[1])
            valid = logits[:, :low_h, :low_w]
            keep = torch.ones_like(scores, dtype=torch.bool)
            if iou_thresh > 0:
                keep &= scores > iou_thresh
            if stability_thresh > 0:
                keep &= stability_scores(valid, self.settings.mask_threshold, offset) > stability_thresh
            boxes = masks_to_boxes(valid > self.settings.mask_threshold)
            keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # not empty
            logits_kept.append(logits[keep])
            scores_kept.append(scores[keep])
            boxes_kept.append(boxes[keep])
            if sum(len(s) for s in scores_kept) > cap:
                logits_kept, scores_kept, boxes_kept = _nms(
                    [torch.cat(logits_kept)], [torch.cat(scores_kept)], [torch.cat(boxes_kept)], cfg.box_nms_thresh, cap
                )
        if not scores_kept or sum(len(s) for s in scores_kept) == 0:
            return np.zeros((0, *original), dtype=bool), []
        logits, scores, _ = _nms(logits_kept, scores_kept, boxes_kept, cfg.box_nms_thresh, max_masks)
        return self.upscale(logits[0], reshaped, original), scores[0].tolist()

    def upscale(self, low_res: torch.Tensor, reshaped: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
        """Low-resolution logits (n, h, w) -> bool masks (n, H, W) at the input size, as
        ``SamProcessor.post_process_masks`` does it: to the padded input, crop, to the original."""
        out = []
        for chunk in low_res.split(4):
            masks = F.interpolate(chunk[:, None].float(), self.pad_size, mode="bilinear", align_corners=False)
            masks = masks[..., : reshaped[0], : reshaped[1]]
            masks = F.interpolate(masks, original, mode="bilinear", align_corners=False)
            out.append((masks[:, 0] > self.settings.mask_threshold).cpu())
        if not out:
            return np.zeros((0, *original), dtype=bool)
        return torch.cat(out).numpy()

    # --- the response --------------------------------------------------------------------------
    def respond(self, masks: np.ndarray, scores: list[float], *, automatic: bool) -> dict[str, Any]:
        encoded = [
            encode_mask(mask, epsilon=self.settings.polygon_epsilon, max_points=self.settings.polygon_max_points)
            for mask in masks
        ]
        sizes = [_json_size(item) for item in encoded]
        total = RESPONSE_OVERHEAD + sum(sizes)
        if total > self.settings.limits.max_response_bytes:
            if not automatic:
                raise LimitError(
                    "image",
                    f"the masks would take about {total} bytes, over the response limit of "
                    f"{self.settings.limits.max_response_bytes}: send a smaller image or fewer prompts",
                    code=413,
                )
            while encoded and total > self.settings.limits.max_response_bytes:  # automatic: drop the weakest masks
                total -= sizes.pop()
                encoded.pop()
                scores = scores[: len(encoded)]
        return {
            "masks": [item["mask"] for item in encoded],
            "rle": [item["rle"] for item in encoded],
            "iou_scores": [float(s) for s in scores[: len(encoded)]],
            "polygons": [item["polygon"] for item in encoded],
            "boxes": [item["box"] for item in encoded],
            "areas": [item["area"] for item in encoded],
        }


def _nms(
    logits: list[torch.Tensor], scores: list[torch.Tensor], boxes: list[torch.Tensor], threshold: float, limit: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    all_logits, all_scores, all_boxes = torch.cat(logits), torch.cat(scores), torch.cat(boxes)
    keep = box_nms(all_boxes, all_scores, threshold)[:limit]
    return [all_logits[keep]], [all_scores[keep]], [all_boxes[keep]]


def _json_size(item: dict[str, Any]) -> int:
    """An upper estimate of one encoded mask's bytes in the response JSON."""
    return len(item["mask"]) + len(item["rle"]["counts"]) + 12 * len(item["polygon"]) + 160
