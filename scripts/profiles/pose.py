"""Pose (model ``pose``): ViTPose keypoints on person boxes from an RT-DETR detector.

Two directories under ``pose/``: ``vitpose`` (ViTPose-B simple decoder, COCO-17 keypoints, 256x192
crops) and ``detector`` (RT-DETR R50-vd, COCO-80 labels, 640x640 input). ``tiny`` shrinks both to
toy widths and inputs (seconds); ``arch`` is both at full size; both random weights.
"""

from __future__ import annotations

from pathlib import Path

from transformers import RTDetrConfig, RTDetrForObjectDetection, VitPoseConfig, VitPoseForPoseEstimation
from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil
from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil

from .layouts import vit_backbone

PRETRAINED = {"pose/vitpose": "usyd-community/vitpose-base-simple", "pose/detector": "PekingU/rtdetr_r50vd_coco_o365"}

# id2label of usyd-community/vitpose-base-simple
KEYPOINT_LABELS = (
    "Nose",
    "L_Eye",
    "R_Eye",
    "L_Ear",
    "R_Ear",
    "L_Shoulder",
    "R_Shoulder",
    "L_Elbow",
    "R_Elbow",
    "L_Wrist",
    "R_Wrist",
    "L_Hip",
    "R_Hip",
    "L_Knee",
    "R_Knee",
    "L_Ankle",
    "R_Ankle",
)

# id2label of PekingU/rtdetr_r50vd_coco_o365: the 80 COCO classes, contiguous ids, 0 = person
COCO_LABELS = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


def _labels(names) -> dict:
    id2label = dict(enumerate(names))
    return dict(id2label=id2label, label2id={v: k for k, v in id2label.items()})


def vitpose_config(profile: str) -> VitPoseConfig:
    if profile == "tiny":
        sizes = dict(image_size=[64, 48], width=32, layers=2, heads=2, mlp_ratio=2)
    else:  # ViTPose-B: ViT-B/16 on 256x192 crops
        sizes = dict(image_size=[256, 192], width=768, layers=12, heads=12, mlp_ratio=4, layer_norm_eps=1e-6)
    backbone = vit_backbone("vitpose_backbone", patch_size=[16, 16], outputs=1, **sizes)  # last layer into the decoder
    return VitPoseConfig(backbone_config=backbone, use_simple_decoder=True, scale_factor=4, **_labels(KEYPOINT_LABELS))


def vitpose_processor(config: VitPoseConfig) -> VitPoseImageProcessorPil:
    height, width = config.backbone_config.image_size
    return VitPoseImageProcessorPil(
        size={"height": height, "width": width},
        do_affine_transform=True,
        normalize_factor=200.0,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def detector_config(profile: str) -> RTDetrConfig:
    labels = _labels(COCO_LABELS)
    if profile == "tiny":
        backbone = _resnet(stem=8, widths=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic")
        # a 16-wide hybrid encoder on the backbone's last three stages; one decoder layer, 20 queries, no denoising
        encoder = dict(encoder_hidden_dim=16, encoder_ffn_dim=32, encoder_attention_heads=2)
        decoder = dict(decoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, decoder_n_points=2)
        return RTDetrConfig(
            backbone_config=backbone,
            d_model=16,
            encoder_in_channels=[16, 24, 32],
            decoder_in_channels=[16, 16, 16],
            **encoder,
            **decoder,
            num_queries=20,
            num_denoising=0,
            **labels,
        )
    # rtdetr_r50vd: ResNet-50-vd backbone, the config's defaults otherwise
    backbone = _resnet(
        stem=64,
        widths=[256, 512, 1024, 2048],
        depths=[3, 4, 6, 3],
        layer_type="bottleneck",
        downsample_in_bottleneck=True,
    )
    return RTDetrConfig(backbone_config=backbone, **labels)


def _resnet(*, stem: int, widths: list[int], depths: list[int], layer_type: str, **extra) -> dict:
    """RT-DETR's ResNet backbone: a ``stem``-wide embedding, then four stages, the last three into the encoder."""
    stages = dict(hidden_sizes=widths, depths=depths, layer_type=layer_type, **extra)
    return dict(model_type="rt_detr_resnet", embedding_size=stem, **stages, out_indices=[2, 3, 4])


def detector_processor(side: int) -> RTDetrImageProcessorPil:
    # as the hub's preprocessor_config.json: a bilinear resize to side x side, then plain 0..1 scaling,
    # no mean/std normalisation, no padding
    resize = dict(size={"height": side, "width": side}, do_resize=True, resample=2)
    return RTDetrImageProcessorPil(**resize, do_rescale=True, do_normalize=False, do_pad=False)


def build(profile: str, root: Path) -> None:
    out = root / "pose"
    config = vitpose_config(profile)
    VitPoseForPoseEstimation(config).save_pretrained(out / "vitpose")
    vitpose_processor(config).save_pretrained(out / "vitpose")
    RTDetrForObjectDetection(detector_config(profile)).save_pretrained(out / "detector")
    detector_processor(64 if profile == "tiny" else 640).save_pretrained(out / "detector")
