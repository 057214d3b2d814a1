"""`sam` handler in-process (tiny random weights): prompts, automatic masks, batching, cache, errors."""

import re

import numpy as np
import pytest
import torch
from harness import (
    REPO,
    assert_names_the_field,
    load_handler,
    model_config,
    png_b64,
    png_bytes,
    run_batch,
    sample_image,
)
from pycocotools import mask as mask_utils

from handlers.common import weights_dir
from handlers.common.boxes import box_nms
from handlers.common.masks import encode_mask, encoded_size_bound, mask_to_box, masks_to_boxes, png_to_mask, rle_to_mask
from handlers.segmenter import Segmenter

WIDTH, HEIGHT = 61, 37  # odd, non-square: masks must come back at exactly this size
AUTOMATIC = {"points_per_side": 4, "points_per_batch": 5, "pred_iou_thresh": 0, "stability_score_thresh": 0}
MASK_FIELDS = ("masks", "rle", "iou_scores", "polygons", "boxes", "areas")


@pytest.fixture(scope="module")
def sam():
    return load_handler(Segmenter, "sam", automatic=AUTOMATIC)


def image(seed=0, width=WIDTH, height=HEIGHT):
    return png_b64(sample_image(width, height, seed=seed))


def ok(handler, body):
    [(status, result)] = run_batch(handler, [body])
    assert status == 200, result
    return result


def check_masks(result, count, width=WIDTH, height=HEIGHT):
    """Every per-mask list has ``count`` entries and they all describe the same masks."""
    assert all(len(result[field]) == count for field in MASK_FIELDS), {f: len(result[f]) for f in MASK_FIELDS}
    assert isinstance(result["cache_hit"], bool)
    for png, rle, polygon, box, area in zip(
        result["masks"], result["rle"], result["polygons"], result["boxes"], result["areas"]
    ):
        mask = png_to_mask(png)
        assert mask.shape == (height, width)
        # COCO RLE round-trips through pycocotools to the same mask
        assert rle["size"] == [height, width] and isinstance(rle["counts"], str)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), mask)
        assert area == int(mask.sum()) == int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}))
        assert box == mask_to_box(mask)
        if area:
            x1, y1, x2, y2 = box
            assert mask[y1:y2, x1:x2].sum() == area
        # polygons are vertices inside the image
        assert all(0 <= x < width and 0 <= y < height for x, y in polygon)
        assert (len(polygon) > 0) == (area > 0)


def test_boxes_one_mask_each(sam):
    result = ok(sam, {"image": image(), "roi": [[0, 0, 30, 20], [10, 5, 61, 37]]})
    assert result["request_id"] == "req-0"
    check_masks(result, 2)
    assert all(isinstance(score, float) for score in result["iou_scores"])


def test_points_are_one_prompt_and_labels_default_to_foreground(sam):
    points = [[5, 5], [40, 30.5]]
    default = ok(sam, {"image": image(), "points": points})
    check_masks(default, 1)
    foreground = ok(sam, {"image": image(), "points": points, "point_labels": [1, 1]})
    assert foreground["rle"] == default["rle"]
    mixed = ok(sam, {"image": image(), "points": points, "point_labels": [1, 0]})
    check_masks(mixed, 1)
    assert mixed["iou_scores"] != default["iou_scores"]


def test_boxes_and_points_refine_every_box(sam):
    boxes = [[0, 0, 30, 20], [10, 5, 61, 37], [2, 2, 8, 8]]
    plain = ok(sam, {"image": image(), "roi": boxes})
    refined = ok(sam, {"image": image(), "roi": boxes, "points": [[5, 5], [40, 30]], "point_labels": [1, 0]})
    check_masks(refined, 3)
    assert refined["iou_scores"] != plain["iou_scores"]


def test_multimask_gives_three_per_prompt_within_the_mask_limit(sam):
    result = ok(sam, {"image": image(), "roi": [[0, 0, 30, 20], [10, 5, 61, 37]], "multimask": True})
    check_masks(result, 6)
    check_masks(ok(sam, {"image": image(), "points": [[3, 3]], "multimask": True}), 3)
    [(status, error)] = run_batch(sam, [{"image": image(), "roi": [[0, 0, 10, 10]] * 9, "multimask": True}])
    assert status == 400 and error["message"].startswith("roi: 9 prompt(s) x 3 mask(s) = 27 masks"), error


def test_automatic_masks_are_bounded_and_best_first():
    handler = load_handler(Segmenter, "sam", automatic={**AUTOMATIC, "box_nms_thresh": 1.0, "max_masks": 5})
    result = ok(handler, {"image": image()})
    check_masks(result, 5)  # 16 grid points x 3 candidates, no NMS: exactly the bound
    assert result["iou_scores"] == sorted(result["iou_scores"], reverse=True)
    assert handler.decoder_forwards == 4  # 16 points in batches of 5, on one embedding
    assert handler.encoder_forwards == 1


def test_automatic_masks_are_deduplicated_by_box_nms(sam):
    result = ok(sam, {"image": image(3)})
    count = len(result["masks"])
    assert 1 <= count <= sam.max_automatic_masks
    check_masks(result, count)
    boxes = torch.tensor(result["boxes"], dtype=torch.float)
    keep = box_nms(boxes, torch.tensor(result["iou_scores"]), sam.settings.automatic.box_nms_thresh)
    assert len(keep) == count  # nothing left to suppress


def test_automatic_thresholds_filter(sam):
    strict = load_handler(Segmenter, "sam", automatic={**AUTOMATIC, "pred_iou_thresh": 0.99})
    result = ok(strict, {"image": image()})  # random weights predict IoU ~0: nothing passes
    check_masks(result, 0)


def test_raw_image_body_is_an_automatic_request(sam):
    result = ok(sam, png_bytes(sample_image(WIDTH, HEIGHT, seed=5)))
    assert len(result["masks"]) >= 1
    check_masks(result, len(result["masks"]))


def test_batch_is_one_encoder_forward_and_bad_requests_fail_alone(sam):
    bodies = [{"image": image(10 + i), "roi": [[1, 1, 20, 20]]} for i in range(4)]
    bodies.insert(2, {"image": image(20), "roi": [[10, 10, 5, 20]]})
    bodies.append({"image": image(10), "points": [[4, 4]]})  # the same image as the first: encoded once
    forwards, cached = sam.encoder_forwards, len(sam.cache)
    results = run_batch(sam, bodies)
    assert sam.encoder_forwards == forwards + 1
    assert [status for status, _ in results] == [200, 200, 400, 200, 200, 200]
    assert results[2][1]["message"] == "roi[0]: x2 must be > x1"
    assert len(sam.cache) == min(sam.settings.embedding_cache_size, cached + 4)
    for _, result in results[:2] + results[3:]:
        check_masks(result, 1)
    # the same request alone (now cached) gives the same masks as inside the batch
    alone = ok(sam, bodies[0])
    assert alone["cache_hit"] is True
    assert alone["rle"] == results[0][1]["rle"]
    assert alone["iou_scores"] == pytest.approx(results[0][1]["iou_scores"], abs=1e-6)


def test_second_prompt_on_the_same_image_hits_the_cache(sam):
    body = {"image": image(30), "roi": [[0, 0, 20, 20]]}
    forwards = sam.encoder_forwards
    first = ok(sam, body)
    assert first["cache_hit"] is False and sam.encoder_forwards == forwards + 1
    second = ok(sam, {"image": image(30), "points": [[7, 7]]})
    assert second["cache_hit"] is True and sam.encoder_forwards == forwards + 1
    assert ok(sam, body)["rle"] == first["rle"]
    # the key is the pixels, not the bytes: the same picture as a raw body is a hit too
    raw = ok(sam, png_bytes(sample_image(WIDTH, HEIGHT, seed=30)))
    assert raw["cache_hit"] is True and sam.encoder_forwards == forwards + 1


def test_cache_is_a_bounded_lru():
    handler = load_handler(Segmenter, "sam", embedding_cache_size=2)
    prompt = {"roi": [[0, 0, 10, 10]]}
    for seed in (1, 2, 1, 3):  # 2 is least recently used when 3 arrives
        ok(handler, {"image": image(seed), **prompt})
    assert handler.encoder_forwards == 3 and len(handler.cache) == 2
    assert ok(handler, {"image": image(1), **prompt})["cache_hit"] is True
    assert ok(handler, {"image": image(2), **prompt})["cache_hit"] is False


def test_metrics_count_masks_and_cache_hits(sam, monkeypatch):
    recorded = []
    monkeypatch.setattr(sam, "add_metric", lambda name, value, unit="count": recorded.append((name, value)))
    body = {"image": image(40), "roi": [[0, 0, 10, 10], [5, 5, 20, 20]]}
    run_batch(sam, [body, body])
    assert ("MasksReturned", 4) in recorded
    assert ("EmbeddingCacheHits", 0) in recorded
    run_batch(sam, [body])
    assert ("EmbeddingCacheHits", 1) in recorded


GOOD = {"image": image(), "roi": [[0, 0, 10, 10]]}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"roi": [[0, 0, 10, 10]]}, "image"),
        ({"image": "not base64!!"}, "image"),
        ({"image": png_b64(sample_image(2049, 2))}, "image"),
        ({"image": png_b64(sample_image(2048, 1))}, "image"),  # 64 / 2048 rounds to a 0-pixel side
        ({"image": image(), "box": [[0, 0, 1, 1]]}, "box"),
        ({"image": image(), "roi": "0,0,10,10"}, "roi"),
        ({"image": image(), "roi": []}, "roi"),
        ({"image": image(), "roi": [[0, 0, 10]]}, "roi[0]"),
        ({"image": image(), "roi": [[0, 0, 10, 10], [10, 10, 5, 20]]}, "roi[1]"),
        ({"image": image(), "roi": [[0, 10, 10, 5]]}, "roi[0]"),
        ({"image": image(), "roi": [[0, 0, 62, 10]]}, "roi[0]"),
        ({"image": image(), "roi": [[-1, 0, 10, 10]]}, "roi[0]"),
        ({"image": image(), "roi": [[0, 0, "a", 10]]}, "roi[0][2]"),
        ({"image": image(), "roi": [[0, 0, 10, 10]] * 17}, "roi"),
        ({"image": image(), "points": [[1]]}, "points[0]"),
        ({"image": image(), "points": [1, 2]}, "points[0]"),
        ({"image": image(), "points": [[1, 2], [70, 2]]}, "points[1]"),
        ({"image": image(), "points": [[1, 1]] * 17}, "points"),
        ({"image": image(), "points": [[1, 1], [2, 2]], "point_labels": [1]}, "point_labels"),
        ({"image": image(), "points": [[1, 1], [2, 2]], "point_labels": [1, 2]}, "point_labels[1]"),
        ({"image": image(), "points": [[1, 1]], "point_labels": [True]}, "point_labels[0]"),
        ({"image": image(), "points": [[1, 1]], "point_labels": 1}, "point_labels"),
        ({"image": image(), "point_labels": [1]}, "point_labels"),
        ({"image": image(), "roi": [[0, 0, 10, 10]], "multimask": "yes"}, "multimask"),
    ],
)
def test_malformed_request_names_the_field_and_fails_alone(sam, body, field):
    results = run_batch(sam, [GOOD, body, GOOD])
    assert [status for status, _ in results][::2] == [200, 200]
    status, error = results[1]
    assert_names_the_field(status, error, field)
    if field == "roi[1]":
        assert error["message"] == "roi[1]: x2 must be > x1"


def test_response_size_guard(sam, monkeypatch):
    limits = sam.settings.limits.model_copy(update={"max_response_bytes": 2_000})
    monkeypatch.setattr(sam, "settings", sam.settings.model_copy(update={"limits": limits}))
    [(status, error)] = run_batch(sam, [{"image": image(), "roi": [[0, 0, 10, 10]] * 4}])
    assert status == 413 and error["message"].startswith("image: the masks would take"), error
    trimmed = ok(sam, {"image": image()})  # automatic: the weakest masks are dropped to fit
    assert len(trimmed["masks"]) < sam.max_automatic_masks


def test_worst_case_response_fits_the_server_limit():
    handler = load_handler(Segmenter, "sam")  # the shipped limits
    config = (REPO / "config.properties").read_text()
    server_limit = int(re.search(r"^max_response_size=(\d+)", config, re.M).group(1))
    assert handler.worst_case_response <= handler.settings.limits.max_response_bytes <= server_limit
    # what the handler enforces is what the yaml says, not a number of its own
    shipped = model_config("sam")["handler"]["limits"]
    assert handler.settings.limits.max_image_side == shipped["max_image_side"]
    assert handler.settings.limits.max_masks == shipped["max_masks"]


@pytest.mark.parametrize("height, width", [(37, 61), (64, 64), (1, 9), (33, 1)])
def test_encoded_size_bound_holds_for_adversarial_masks(height, width):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    bound = encoded_size_bound(width, height)
    for mask in (
        (yy + xx) % 2 == 0,
        yy % 2 == 0,
        xx % 2 == 0,
        rng.random((height, width)) > 0.5,
        np.ones((height, width), bool),
        np.zeros((height, width), bool),
    ):
        encoded = encode_mask(mask)
        size = (
            len(encoded["mask"])
            + len(encoded["rle"]["counts"])
            + 40
            + len(str(encoded["polygon"]))
            + len(str(encoded["box"]))
            + len(str(encoded["area"]))
            + 26
        )
        assert size <= bound
        assert np.array_equal(rle_to_mask(encoded["rle"]), mask)


def test_polygon_vertex_cap_and_box_helpers():
    comb = np.zeros((40, 200), bool)
    comb[:, ::2] = True
    comb[-1] = True  # one region with 100 teeth: hundreds of vertices
    assert 2 <= len(encode_mask(comb, max_points=20)["polygon"]) <= 20
    yy, xx = np.mgrid[:200, :200]
    disk = (yy - 100) ** 2 + (xx - 90) ** 2 < 80**2
    assert len(encode_mask(disk)["polygon"]) > 12
    polygon = encode_mask(disk, max_points=12)["polygon"]
    assert 8 <= len(polygon) <= 12  # the tolerance grows only as far as it must
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:8] = True
    masks[1, 9, 11] = True
    assert (
        masks_to_boxes(masks).tolist()
        == [mask_to_box(m.numpy()) for m in masks]
        == [[3, 2, 8, 5], [11, 9, 12, 10], [0, 0, 0, 0]]
    )
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10.0]])
    assert box_nms(boxes, torch.tensor([0.5, 0.9, 0.3, 0.8]), 0.7).tolist() == [1, 2]


def test_weights_are_the_tiny_profile(sam):
    assert weights_dir(sam.context).parts[-2:] == ("tiny", "sam")


def test_half_precision_path(sam):
    """The GPU runs fp16; bf16 on CPU takes the same mixed-dtype path (fp32 prompts, half weights)."""
    half = load_handler(Segmenter, "sam", dtype="bfloat16", automatic=AUTOMATIC)
    assert half.model.dtype == torch.bfloat16
    check_masks(ok(half, {"image": image(), "roi": [[0, 0, 30, 20]], "points": [[5, 5]]}), 1)
    check_masks(ok(half, {"image": image(), "points": [[5, 5], [9, 9]], "point_labels": [1, 0]}), 1)
    result = ok(half, {"image": image()})
    check_masks(result, len(result["masks"]))


def test_module_has_exactly_one_class_for_torchserve():
    from ts.utils.util import list_classes_from_module

    import handlers.segmenter as module

    assert list_classes_from_module(module) == [Segmenter]
