"""Segment Anything (model ``sam``) with transformers' ``SamModel`` (not the
segment-anything package, which needs torchvision).

- ``tiny``: a 2-layer ViT on 64x64 inputs (8x8 patches -> an 8x8 image embedding), a 1-layer
  mask decoder; the processor resizes the longest side to 64 and pads to 64x64. Seconds to build.
- ``arch``: ViT-H (``facebook/sam-vit-huge``, the seed API's model) in ``sam`` and ViT-B
  (``facebook/sam-vit-base``) in ``sam-vit-base``, random weights, the real 1024 processor.
Both profiles write both directories (tiny: the same toy twice), as the pretrained profile does.
"""

from __future__ import annotations

from pathlib import Path

from transformers import SamConfig, SamModel, SamProcessor
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

PRETRAINED = {"sam": "facebook/sam-vit-huge", "sam-vit-base": "facebook/sam-vit-base"}

# facebook/sam-vit-huge's vision encoder; everything else (prompt encoder, mask decoder, 1024
# input, 16x16 patches, 14-token windows, 256-channel neck) is transformers' SamConfig default,
# which is also the whole of facebook/sam-vit-base.
VIT_H = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31])
VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11])

# SamVisionConfig's default initializer_range (1e-10) gives random weights so small that the image
# embedding is ~1e-21 whatever the image (and CPU timings could hit denormals): random profiles use
# the usual 0.02, so the embedding depends on the image as a real one does.
TINY_SIDE = 64  # model input (longest side, then padded square)
TINY_PATCH = 8  # -> an 8x8 image embedding, 32x32 low-resolution masks
TINY_WIDTH = 32  # channels of the image embedding = prompt-encoder and mask-decoder width


def config(profile: str, vision: dict | None = None) -> SamConfig:
    if profile == "tiny":
        side, patch, width = TINY_SIDE, TINY_PATCH, TINY_WIDTH
        vision_config = dict(
            image_size=side,
            patch_size=patch,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=64,
            window_size=4,
            global_attn_indexes=[1],
            output_channels=width,
            num_pos_feats=width // 2,
            initializer_range=0.02,
        )
        # the prompt encoder's image_embedding_size (= image_size // patch_size) must match the
        # vision encoder's output grid, and every width must be the embedding's channel count
        prompt_config = dict(hidden_size=width, image_size=side, patch_size=patch, mask_input_channels=8)
        decoder_config = dict(
            hidden_size=width, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=32
        )
        return SamConfig(
            vision_config=vision_config, prompt_encoder_config=prompt_config, mask_decoder_config=decoder_config
        )
    return SamConfig(vision_config=dict(vision or VIT_H, initializer_range=0.02))


def processor(profile: str) -> SamProcessor:
    if profile == "tiny":
        side, low_res = TINY_SIDE, 4 * TINY_SIDE // TINY_PATCH
        image_processor = SamImageProcessorPil(
            size={"longest_edge": side},
            pad_size={"height": side, "width": side},
            mask_size={"longest_edge": low_res},
            mask_pad_size={"height": low_res, "width": low_res},
        )
    else:
        image_processor = SamImageProcessorPil()  # the real one: longest side 1024, padded to 1024x1024
    return SamProcessor(image_processor=image_processor)


def _save(cfg: SamConfig, proc: SamProcessor, out: Path) -> None:
    model = SamModel(cfg).eval()
    model.save_pretrained(out)
    proc.save_pretrained(out)
    del model


def build(profile: str, root: Path) -> None:
    if profile == "tiny":
        for directory in PRETRAINED:  # one toy stands in for ViT-H and ViT-B alike
            _save(config("tiny"), processor("tiny"), root / directory)
        return
    _save(config(profile, VIT_H), processor(profile), root / "sam")
    _save(config(profile, VIT_B), processor(profile), root / "sam-vit-base")
