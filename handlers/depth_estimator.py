"""``depth``: a depth map per image (Depth Anything V2, or DPT; whichever the weights directory holds).

A batch is one forward pass: every image, whatever its size, is resized to the model's square input
(``handler.input_size``, default the processor's size: 518 for Depth Anything V2, 384 for DPT-Large)
without keeping its aspect ratio, so they stack into one tensor; each prediction is then resized
back to its own image's size (bilinear, so no overshoot beyond the model's own range).

Response: ``depth`` is a 16-bit grayscale PNG at the input's size holding the map linearly
quantised from ``[min, max]`` to ``[0, 65535]`` (``encoding`` says so; decode with
``min + png / 65535 * (max - min)``), ``colormap`` an RGB PNG of the same map (Turbo, near = warm),
and ``control_image`` an 8-bit grayscale PNG of it with near = white (its own range stretched to
[0, 255]): what ``sd``'s depth ControlNet takes.
``kind`` says what the values are: Depth Anything's relative head and DPT predict relative inverse
depth (larger is nearer, no unit); a metric Depth Anything predicts depth in metres.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, AutoModelForDepthEstimation

from handlers.common import decode_image, encode_png, reject_unknown, require, weights_dir
from handlers.common.base import Batch, BatchHandler, Result
from handlers.common.drawing import colorize, depth_control_image, to_uint16
from handlers.model_settings import DepthSettings

FIELDS = ("image",)
ENCODING = "uint16 linear in [min, max]"


class DepthEstimator(BatchHandler):
    model_label = "depth"
    settings: DepthSettings

    def load(self, context: Any) -> None:
        self.processor, self.model = self.pretrained(
            AutoImageProcessor, AutoModelForDepthEstimation, weights_dir(context)
        )
        self.input_size = self._input_size(self.settings.input_size)
        depth_type = getattr(self.model.config, "depth_estimation_type", "relative")
        self.metric = depth_type == "metric"
        self.kind = "metric_depth_m" if self.metric else "relative_inverse_depth"
        self.forwards = 0  # observable in tests: one per batch

    def _input_size(self, configured: int | None) -> dict[str, int]:
        """The square the whole batch is resized to, a multiple of the processor's ``ensure_multiple_of``."""
        multiple = int(getattr(self.processor, "ensure_multiple_of", 1) or 1)
        if configured:
            side = max(multiple, round(configured / multiple) * multiple)
            return {"height": side, "width": side}
        size = self.processor.size
        height, width = size.get("height"), size.get("width")
        if not height or not width:
            side = size.get("shortest_edge") or size.get("longest_edge") or 518
            height = width = side
        return {"height": int(height), "width": int(width)}

    def parse(self, payload: dict[str, Any]) -> dict[str, Any]:
        reject_unknown(payload, FIELDS)
        return {"image": decode_image(require(payload, "image"), self.settings.limits)}

    @torch.inference_mode()
    def infer(self, requests: list[dict[str, Any]], batch: Batch) -> list[Result]:
        images = [request["image"] for request in requests]
        predicted = self.predict(images)
        results: list[Result] = []
        for image, prediction in zip(images, predicted):
            results.append(self.encode(self.resize_to(prediction, image.size)))
        self.add_metric("DepthImages", len(images))
        return results

    @torch.inference_mode()
    def predict(self, images: list) -> torch.Tensor:
        """One forward for all ``images``: ``(batch, height, width)`` float32 maps at the model's size."""
        options: dict[str, Any] = {"size": self.input_size}
        if hasattr(self.processor, "keep_aspect_ratio"):
            options["keep_aspect_ratio"] = False  # one common size, so the batch stacks
        pixels = self.processor(images=images, return_tensors="pt", **options)["pixel_values"]
        started = time.perf_counter()
        output = self.model(pixel_values=pixels.to(self.device, self.dtype))
        self.forwards += 1
        self.add_metric("DepthForwardLatency", (time.perf_counter() - started) * 1000.0, unit="ms")
        depth = output.predicted_depth.float()
        return depth if depth.ndim == 3 else depth.squeeze(1)

    @staticmethod
    def resize_to(prediction: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        width, height = size
        resized = F.interpolate(prediction[None, None], size=(height, width), mode="bilinear", align_corners=False)
        return np.nan_to_num(resized[0, 0].detach().cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)

    def encode(self, depth: np.ndarray) -> dict[str, Any]:
        vmin, vmax = float(depth.min()), float(depth.max())
        return {
            "depth": encode_png(to_uint16(depth, vmin, vmax)),
            "min": vmin,
            "max": vmax,
            "encoding": ENCODING,
            "kind": self.kind,
            "width": int(depth.shape[1]),
            "height": int(depth.shape[0]),
            "colormap": encode_png(colorize(depth, vmin, vmax, cmap=self.settings.colormap, invert=self.metric)),
            "control_image": encode_png(depth_control_image(depth, invert=self.metric)),
        }
