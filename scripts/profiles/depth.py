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

PRETRAINED = {"depth": "depth-anything/Depth-Anything-V2-Small-hf", "depth-dpt-large": "Intel/dpt-large"}

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


def depth_anything_config(profile: str) -> DepthAnythingConfig:
    if profile == "tiny":
        backbone = dict(
            model_type="dinov2",
            image_size=56,
            patch_size=14,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            mlp_ratio=2,
            out_indices=[1, 2, 3, 4],
            reshape_hidden_states=False,
        )
        return DepthAnythingConfig(
            backbone_config=backbone,
            reassemble_hidden_size=32,
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            head_hidden_size=8,
        )
    # depth-anything/Depth-Anything-V2-Small-hf: DINOv2-S/14 backbone, the config's defaults
    backbone = dict(
        model_type="dinov2",
        image_size=518,
        patch_size=14,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        out_indices=[9, 10, 11, 12],
        reshape_hidden_states=False,
        layerscale_value=1.0,
        drop_path_rate=0.0,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=384,
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_hidden_size=32,
        depth_estimation_type="relative",
    )


def depth_anything_processor(side: int) -> DPTImageProcessorPil:
    # As the hub's preprocessor_config.json (which names DPTImageProcessor; without torchvision,
    # AutoImageProcessor falls back to this PIL twin).
    return DPTImageProcessorPil(
        do_resize=True,
        size={"height": side, "width": side},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        do_rescale=True,
        do_normalize=True,
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
        do_pad=False,
    )


def dpt_large_config(profile: str = "arch") -> DPTConfig:
    if profile == "tiny":  # DPT-Large's layout at toy width
        return DPTConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
            backbone_out_indices=[0, 1, 2, 3],
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            readout_type="project",
            reassemble_factors=[4, 2, 1, 0.5],
            is_hybrid=False,
            head_in_index=-1,
            use_batch_norm_in_fusion_residual=False,
        )
    # Intel/dpt-large: ViT-L/16 at 384, readout "project", no hybrid backbone
    return DPTConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=384,
        patch_size=16,
        backbone_out_indices=[5, 11, 17, 23],
        neck_hidden_sizes=[256, 512, 1024, 1024],
        fusion_hidden_size=256,
        readout_type="project",
        reassemble_factors=[4, 2, 1, 0.5],
        is_hybrid=False,
        head_in_index=-1,
        use_batch_norm_in_fusion_residual=False,
    )


def dpt_large_processor(side: int = 384) -> DPTImageProcessorPil:
    return DPTImageProcessorPil(
        do_resize=True,
        size={"height": side, "width": side},
        keep_aspect_ratio=False,
        ensure_multiple_of=1,
        resample=3,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
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
