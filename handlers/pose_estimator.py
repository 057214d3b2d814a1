"""``pose``: people and their COCO-17 keypoints (ViTPose, top-down on person boxes).

ViTPose needs a box per person. A request's ``roi`` boxes are used as given; without ``roi`` the
RT-DETR detector in ``<weights>/detector`` finds the people (score above ``detector_threshold``, at
most ``limits.max_people`` per image). If it finds nobody, is turned off, is missing or fails, the
whole image becomes the one box, and ``boxes_from`` (``roi`` | ``detector`` | ``whole_image``) and
``fallback_reason`` say so.

A batch is at most two forward passes: the detector once over every request without ``roi``, then
ViTPose once over every box of every request. Keypoints are ``[x, y, score]`` in the input image's
pixels, clipped to the image; ``overlay`` is the image with boxes and the skeleton drawn, and
``control_image`` the OpenPose rendering of the people at the input's size (black canvas, 18 keypoints:
handlers/common/openpose.py), what ``sd``'s pose ControlNet takes; it is left out for weights whose
keypoints are not COCO-17.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForObjectDetection, VitPoseForPoseEstimation

from handlers.common import decode_image, encode_png, get_boxes, reject_unknown, require, weights_dir
from handlers.common.base import Batch, BatchHandler, Result
from handlers.common.boxes import box_nms
from handlers.common.compat import vitpose_safe_image
from handlers.common.drawing import COCO_KEYPOINT_NAMES, COCO_SKELETON, draw_pose, fit_within
from handlers.common.openpose import draw_openpose
from handlers.model_settings import PoseSettings

logger = logging.getLogger(__name__)

FIELDS = ("image", "roi")


class PoseEstimator(BatchHandler):
    model_label = "pose"
    settings: PoseSettings

    def load(self, context: Any) -> None:
        root = weights_dir(context)
        self.pose_processor, self.pose_model = self.pretrained(
            AutoImageProcessor, VitPoseForPoseEstimation, root / "vitpose"
        )
        labels = self.pose_model.config.num_labels
        if labels == len(COCO_KEYPOINT_NAMES):
            self.keypoint_names, self.skeleton = list(COCO_KEYPOINT_NAMES), COCO_SKELETON
        else:  # another keypoint set (e.g. whole-body): its own names, no COCO skeleton
            self.keypoint_names = [str(self.pose_model.config.id2label.get(i, i)) for i in range(labels)]
            self.skeleton = ()
        self.moe = int(getattr(self.pose_model.config.backbone_config, "num_experts", 1) or 1) > 1

        settings = self.settings
        self.detector: Any = None
        self.detector_processor: Any = None
        self.detector_unavailable: str | None = "the detector is turned off (handler.use_detector: false)"
        if settings.use_detector:
            self._load_detector(root / "detector", settings.person_label)
        self.detector_forwards = 0  # observable in tests: at most one per batch
        self.pose_forwards = 0  # exactly one per batch with a valid request

    def _load_detector(self, path, person_label: str) -> None:
        """The detector is optional: without it every request that has no ``roi`` gets the whole image."""
        try:
            processor, model = self.pretrained(AutoImageProcessor, AutoModelForObjectDetection, path)
        except Exception as exc:  # missing directory, unreadable weights: serve on, say so per request
            logger.warning(
                "pose: no person detector (%s: %s); requests without roi use the whole image", type(exc).__name__, exc
            )
            self.detector_unavailable = f"no person detector could be loaded from {path.name}/"
            return
        ids = [int(i) for i, name in model.config.id2label.items() if str(name).lower() == person_label.lower()]
        if not ids:
            logger.warning("pose: the detector has no %r class; requests without roi use the whole image", person_label)
            self.detector_unavailable = f"the detector has no {person_label!r} class"
            return
        self.detector, self.detector_processor, self.person_ids = model, processor, torch.tensor(ids)
        self.detector_unavailable = None

    def parse(self, payload: dict[str, Any]) -> dict[str, Any]:
        reject_unknown(payload, FIELDS)
        image = decode_image(require(payload, "image"), self.settings.limits)
        boxes = get_boxes(payload, "roi", image_size=image.size, max_items=self.settings.limits.max_rois)
        return {"image": image, "roi": boxes}

    @torch.inference_mode()
    def infer(self, requests: list[dict[str, Any]], batch: Batch) -> list[Result]:
        people: list[list[dict[str, Any]]] = []
        sources: list[dict[str, Any]] = []
        detected = self.detect([r["image"] for r in requests if r["roi"] is None])
        for request in requests:
            width, height = request["image"].size
            if request["roi"] is not None:
                people.append([{"box": box} for box in request["roi"]])
                sources.append({"boxes_from": "roi"})
                continue
            found, reason = detected.pop(0)
            if found:
                people.append(found)
                sources.append({"boxes_from": "detector"})
            else:
                people.append([{"box": [0.0, 0.0, float(width), float(height)]}])
                sources.append({"boxes_from": "whole_image", "fallback_reason": reason})
                self.add_metric("PoseWholeImageFallbacks", 1)

        keypoints = self.estimate([r["image"] for r in requests], [[p["box"] for p in ps] for ps in people])
        results: list[Result] = []
        for request, persons, source in zip(requests, people, sources):
            for person in persons:
                person["keypoints"] = keypoints.pop(0)
            results.append(self.respond(request["image"], persons, source))
        self.add_metric("PosePeople", sum(len(p) for p in people))
        return results

    # --- detector: person boxes ------------------------------------------------------------------
    def detect(self, images: list) -> list[tuple[list[dict[str, Any]], str | None]]:
        """One detector forward for ``images``: per image, (people with box and score, why none)."""
        if not images:
            return []
        if self.detector is None:
            return [([], self.detector_unavailable)] * len(images)
        try:
            inputs = self.detector_processor(images=images, return_tensors="pt")
            started = time.perf_counter()
            outputs = self.detector(pixel_values=inputs["pixel_values"].to(self.device, self.dtype))
            self.detector_forwards += 1
            self.add_metric("PoseDetectorLatency", (time.perf_counter() - started) * 1000.0, unit="ms")
            person_scores, boxes = self.person_candidates(outputs, images)
        except Exception as exc:  # the detector is an aid: without it, ViTPose still runs on the whole image
            logger.exception("pose: person detector failed; using whole images")
            return [([], f"the person detector failed ({type(exc).__name__})")] * len(images)
        found = []
        for image, scores, image_boxes in zip(images, person_scores, boxes):
            people = self.person_boxes(scores, image_boxes, image.size)
            reason = (
                None
                if people
                else (
                    f"the detector found no person scoring above {self.settings.detector_threshold}"
                    f" in a box at least {self.settings.min_box_side:g} px on each side"
                )
            )
            found.append((people, reason))
        return found

    def person_candidates(self, outputs: Any, images: list) -> tuple[np.ndarray, np.ndarray]:
        """Every query's person score ``(batch, queries)`` and box ``(batch, queries, 4)`` in image pixels.

        Scored per query on the person class alone (not the processor's top-k over all classes,
        where a scene full of other objects could crowd the people out).
        """
        logits = outputs.logits.float()
        if getattr(self.detector.config, "use_focal_loss", True):
            probs = logits.sigmoid()
        else:  # softmax detectors carry a trailing no-object class
            probs = logits.softmax(-1)[..., :-1]
        scores = probs[..., self.person_ids.to(probs.device)].amax(-1)
        cx, cy, w, h = outputs.pred_boxes.float().unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        scale = torch.tensor([[im.width, im.height, im.width, im.height] for im in images], dtype=boxes.dtype)
        return scores.cpu().numpy(), (boxes.cpu() * scale[:, None, :]).numpy().astype(np.float64)

    def person_boxes(self, scores: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> list[dict[str, Any]]:
        width, height = size
        keep = scores > self.settings.detector_threshold
        scores, boxes = scores[keep], boxes[keep].copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        big = (
            ((boxes[:, 2] - boxes[:, 0]) >= min(self.settings.min_box_side, width))
            & ((boxes[:, 3] - boxes[:, 1]) >= min(self.settings.min_box_side, height))
            & (boxes[:, 2] > boxes[:, 0])
            & (boxes[:, 3] > boxes[:, 1])
        )
        boxes, scores = boxes[big], scores[big]
        chosen = box_nms(torch.as_tensor(boxes), torch.as_tensor(scores), self.settings.detector_nms_iou)[
            : self.settings.limits.max_people
        ].tolist()
        return [{"box": [round(float(v), 2) for v in boxes[i]], "score": round(float(scores[i]), 4)} for i in chosen]

    # --- ViTPose: keypoints per box --------------------------------------------------------------
    def estimate(self, images: list, boxes: list[list[list[float]]]) -> list[list[list[float]]]:
        """One ViTPose forward over every box of every image; per box, ``[[x, y, score]] * K``."""
        coco = [[[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in image_boxes] for image_boxes in boxes]
        safe = [vitpose_safe_image(image) for image in images]
        pixels = self.pose_processor(images=safe, boxes=coco, return_tensors="pt")["pixel_values"]
        extra = {}
        if self.moe:  # ViTPose+ mixture of experts: index 0 is the COCO expert
            extra["dataset_index"] = torch.zeros(len(pixels), dtype=torch.long, device=self.device)
        started = time.perf_counter()
        outputs = self.pose_model(pixel_values=pixels.to(self.device, self.dtype), **extra)
        self.pose_forwards += 1
        self.add_metric("PoseForwardLatency", (time.perf_counter() - started) * 1000.0, unit="ms")
        outputs.heatmaps = outputs.heatmaps.float()
        poses = self.pose_processor.post_process_pose_estimation(outputs, boxes=coco)
        keypoints = []
        for image, image_poses in zip(images, poses):
            width, height = image.size
            for pose in image_poses:
                xy = np.nan_to_num(pose["keypoints"].numpy().astype(np.float64), nan=0.0)
                xy[:, 0] = xy[:, 0].clip(0, max(width - 1, 0))
                xy[:, 1] = xy[:, 1].clip(0, max(height - 1, 0))
                score = np.nan_to_num(pose["scores"].numpy().astype(np.float64).reshape(-1), nan=0.0)
                keypoints.append(
                    [[round(x, 2), round(y, 2), round(s, 4)] for (x, y), s in zip(xy.tolist(), score.tolist())]
                )
        return keypoints

    def respond(self, image, people: list[dict[str, Any]], source: dict[str, Any]) -> dict[str, Any]:
        canvas, scale = fit_within(image, self.settings.overlay_max_side)
        overlay = draw_pose(
            canvas,
            people,
            threshold=self.settings.keypoint_threshold,
            scale=scale,
            skeleton=self.skeleton,
            names=self.keypoint_names,
        )
        ordered = [
            {"box": p["box"], **({"score": p["score"]} if "score" in p else {}), "keypoints": p["keypoints"]}
            for p in people
        ]
        result = {
            "people": ordered,
            "keypoint_names": self.keypoint_names,
            **source,
            "width": image.width,
            "height": image.height,
            "overlay": encode_png(overlay),
        }
        if self.skeleton == COCO_SKELETON:  # OpenPose's body is drawn from COCO-17 keypoints
            result["control_image"] = encode_png(draw_openpose(image.size, people, self.settings.keypoint_threshold))
        return result
