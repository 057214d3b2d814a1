"""Depth (model ``depth``): Depth Anything V2 Small, and DPT-Large as the alternative.

- ``tiny``: Depth Anything with a 4-layer, 32-wide DINOv2 backbone and a 56x56 input (seconds).
- ``arch``: Depth Anything V2 Small at full size (518x518 input) in ``depth/``, and DPT-Large
  (ViT-L/16, 384x384) in ``depth-dpt-large/``; both random weights.
Both profiles write both directories (tiny: a 4-layer, 32-wide DPT on 32x32 inputs), as the
pretrained profile does, so every ``PRETRAINED`` directory has a random-weight twin.
The handler loads either directory with the Auto classes; ``handler.weights`` in
models/depth/model-config.yaml picks which.
"""

from __future__ import annotations

from pathlib import Path

from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTConfig, DPTForDepthEstimation
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

from .layouts import vit_backbone
from .sizes import tower

PRETRAINED = {"depth": "depth-anything/Depth-Anything-V2-Small-hf", "depth-dpt-large": "Intel/dpt-large"}

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


def depth_anything_config(profile: str) -> DepthAnythingConfig:
    if profile == "tiny":
        backbone = _dinov2(image_size=56, width=32, layers=4, heads=2, mlp_ratio=2)
        return _depth_anything(backbone, neck=[8, 16, 32, 32], fusion=16, head=8)
    # depth-anything/Depth-Anything-V2-Small-hf: DINOv2-S/14 backbone, the config's defaults
    backbone = _dinov2(
        image_size=518, width=384, layers=12, heads=6, mlp_ratio=4, layerscale_value=1.0, drop_path_rate=0.0
    )
    return _depth_anything(backbone, neck=[48, 96, 192, 384], fusion=64, head=32, depth_estimation_type="relative")


def _dinov2(**sizes) -> dict:
    """Depth Anything's DINOv2/14 backbone, ``sizes`` as ``vit_backbone`` takes them: its last four
    layers feed the head as token sequences."""
    return vit_backbone("dinov2", patch_size=14, outputs=4, reshape_hidden_states=False, **sizes)


def _depth_anything(backbone: dict, *, neck: list[int], fusion: int, head: int, **extra) -> DepthAnythingConfig:
    """The DPT head on ``backbone``: its outputs reassembled at the backbone's width, into ``neck`` channels."""
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=backbone["hidden_size"],
        neck_hidden_sizes=neck,
        fusion_hidden_size=fusion,
        head_hidden_size=head,
        **extra,
    )


def depth_anything_processor(side: int) -> DPTImageProcessorPil:
    # As the hub's preprocessor_config.json (which names DPTImageProcessor; without torchvision,
    # AutoImageProcessor falls back to this PIL twin).
    return _dpt_processor(side, keep_aspect_ratio=True, multiple_of=14, mean=_IMAGENET_MEAN, std=_IMAGENET_STD)


def dpt_large_config(profile: str = "arch") -> DPTConfig:
    if profile == "tiny":  # DPT-Large's layout at toy width
        return _dpt(side=32, patch=8, width=32, layers=4, heads=2, mlp=64, neck=[8, 16, 32, 32], fusion=16)
    # Intel/dpt-large: ViT-L/16 at 384, readout "project", no hybrid backbone
    return _dpt(side=384, patch=16, width=1024, layers=24, heads=16, mlp=4096, neck=[256, 512, 1024, 1024], fusion=256)


def _dpt(
    *, side: int, patch: int, width: int, layers: int, heads: int, mlp: int, neck: list[int], fusion: int
) -> DPTConfig:
    """DPT-Large's layout: a plain ViT (no hybrid backbone) read out, by projection, after the last
    layer of each quarter of its stack, reassembled at 4x, 2x, 1x and 1/2 the patch grid."""
    quarter = layers // 4
    return DPTConfig(
        **tower(width=width, layers=layers, heads=heads, mlp=mlp),
        image_size=side,
        patch_size=patch,
        backbone_out_indices=[quarter * i - 1 for i in (1, 2, 3, 4)],
        neck_hidden_sizes=neck,
        fusion_hidden_size=fusion,
        readout_type="project",
        reassemble_factors=[4, 2, 1, 0.5],
        is_hybrid=False,
        head_in_index=-1,
        use_batch_norm_in_fusion_residual=False,
    )


def dpt_large_processor(side: int = 384) -> DPTImageProcessorPil:
    return _dpt_processor(side, keep_aspect_ratio=False, multiple_of=1, mean=[0.5] * 3, std=[0.5] * 3)


def _dpt_processor(
    side: int, *, keep_aspect_ratio: bool, multiple_of: int, mean: list[float], std: list[float]
) -> DPTImageProcessorPil:
    """A DPT image processor: a bicubic resize towards ``side`` x ``side``, 0..1 scaling, mean/std normalisation."""
    return DPTImageProcessorPil(
        do_resize=True,
        size={"height": side, "width": side},
        keep_aspect_ratio=keep_aspect_ratio,
        ensure_multiple_of=multiple_of,
        resample=3,
        do_rescale=True,
        do_normalize=True,
        image_mean=mean,
        image_std=std,
        do_pad=False,
    )


def build(profile: str, root: Path) -> None:
    config = depth_anything_config(profile)
    out = root / "depth"
    DepthAnythingForDepthEstimation(config).save_pretrained(out)
    depth_anything_processor(config.backbone_config.image_size).save_pretrained(out)
    dpt = dpt_large_config(profile)
    out = root / "depth-dpt-large"
    DPTForDepthEstimation(dpt).save_pretrained(out)
    dpt_large_processor(dpt.image_size).save_pretrained(out)
