"""Figures 1 and 2: serving efficiency and batching gain (arch weights, CPU).

1. Saturated throughput through TorchServe / the same handler's batched throughput in one Python
   process, same batch size, same torch thread count, same request bodies (JSON with a base64 PNG):
   - ``clip`` arch (ViT-B/32), batch 8, 16 requests in flight;
   - the ``sam`` image encoder, arch ViT-B (weights ``sam-vit-base``), batch 1, every request a
     new image with one box prompt (the encoder runs on every request; the one-box mask decoder
     adds ~1% to it); paired single requests, ABBA, because one image takes 8-30 s here.
   Both at the host's core count (torch's default) and, for clip, also at one intra-op thread.
   The in-process side calls ``handler.handle`` exactly as the worker does (JSON parsing, decoding,
   preprocessing, the model, response encoding), so the ratio is what serving costs: HTTP, the
   frontend's queue and batching, the socket to the worker. The bare model forward is reported too.
2. ``clip`` arch at 16 in flight, batch size 8 vs 1 (registered twice, one worker each).

Blocks alternate (in-process, batch 8, batch 1, in-process, ...) so that other work on a shared
machine disturbs both sides of a ratio alike. Private copies of the model configs (batch size,
one worker, ``torch_threads``, sam's ViT-B weights) go into a private store; models/ is untouched.
"""

from __future__ import annotations

import json
import time

import benchlib as bl
from benchlib import Figure, figure, log

CLIP_BATCH = 8
CLIP_CONCURRENCY = 16
SAM_BATCH = 1


def clip_bodies(count: int = 16) -> list[bytes]:
    return [json.dumps({"image": bl.png_b64(bl.picture(256, 256, seed=i))}).encode() for i in range(count)]


def sam_body(seed: int) -> bytes:
    # a new picture per request: the embedding cache (keyed by pixels) never answers
    return json.dumps(
        {"image": bl.png_b64(bl.picture(320, 240, seed=10_000 + seed)), "roi": [[40, 30, 280, 210]]}
    ).encode()


def server_block(
    caller: bl.Caller, model: str, bodies: list[bytes], concurrency: int, duration: float, skip: int
) -> tuple[float | None, int, float, list[str]]:
    """Closed loop for ``duration`` s; (steady items/s, items counted, seconds counted, errors). Only
    completions before the senders stop count: until then ``concurrency`` requests are always queued."""

    def send(i: int) -> None:
        caller.ok(f"/predictions/{model}", bodies[i % len(bodies)])

    began = time.perf_counter()
    load = bl.closed_loop(send, concurrency, duration=duration)
    ends = [t for t in load.ends if t <= began + duration]
    rate, items = bl.steady_rate(ends, skip=skip)
    return rate, items, (items / rate if rate else 0.0), load.errors


def forward_only_clip(handler, batch: int, seconds: float) -> tuple[int, float]:
    """The bare CLIP image tower on preprocessed pixels (no decoding, no preprocessing): (images, s)."""
    import torch
    from harness import sample_image

    pixels = handler.processor(images=[sample_image(256, 256, seed=i) for i in range(batch)], return_tensors="pt")[
        "pixel_values"
    ]
    with torch.inference_mode():
        handler.model.get_image_features(pixel_values=pixels)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            handler.model.get_image_features(pixel_values=pixels)
            count += batch
    return count, time.perf_counter() - started


def run(quick: bool = False, profile: str = "arch") -> list[Figure]:
    """``profile`` tiny is the smoke run (checks the harness in seconds; the figures mean nothing)."""
    import torch

    from handlers.clip_scorer import ClipScorer
    from handlers.segmenter import Segmenter

    threads = bl.THREADS
    # the host's cores (torch's default), and one intra-op thread, which leaves the other core(s)
    # to the frontend and the load generator
    thread_counts = [threads] + ([1] if threads > 1 else [])
    bl.ensure_weights(profile, ["clip", "sam"], sam_vit_base=profile == "arch")
    log(f"efficiency: archiving clip and sam ({profile}) into a private store")
    store = bl.build_store("efficiency", profile, ["clip", "sam"])
    one_worker = {"minWorkers": 1, "maxWorkers": 1}
    clip_models = {(CLIP_BATCH, threads): "clip_b8", (1, threads): "clip_b1"}
    if threads > 1:
        clip_models[(CLIP_BATCH, 1)] = "clip_b8_t1"
    for (batch, n), name in clip_models.items():
        bl.variant_archive(store, "clip", name, {**one_worker, "batchSize": batch, "handler": {"torch_threads": n}})
    sam_weights = str((bl.WEIGHTS / profile / ("sam-vit-base" if profile == "arch" else "sam")).resolve())
    bl.variant_archive(
        store,
        "sam",
        "sam_vitb",
        {**one_worker, "batchSize": SAM_BATCH, "handler": {"torch_threads": threads, "weights_dir": sam_weights}},
    )

    figures: list[Figure] = []
    server = bl.start_server("efficiency", store)
    try:
        for name in [*clip_models.values(), "sam_vitb"]:
            log(f"efficiency: registering {name}")
            bl.register(server, name)
        caller = bl.Caller(server)

        # --- clip: in-process vs server (batch 8), and batch 8 vs batch 1 ----------------------
        clip = bl.in_process_handler(ClipScorer, "clip", profile, CLIP_BATCH, torch_threads=threads)
        bodies = clip_bodies()
        watch = bl.CpuWatch()
        bl.timed_batch(clip, bodies[:CLIP_BATCH])  # warm-up
        for name in clip_models.values():
            caller.ok(f"/predictions/{name}", bodies[0])
        rounds = 1 if quick else 2
        block = 6.0 if quick else 9.0
        totals: dict[str, dict[str, float]] = {}
        errors: list[str] = []

        def add(key: str, items: float, seconds: float) -> None:
            entry = totals.setdefault(key, {"items": 0.0, "time": 0.0})
            entry["items"] += items
            entry["time"] += seconds

        for r in range(rounds):
            for n in thread_counts:
                log(f"efficiency: clip round {r + 1}/{rounds}: in-process batches of {CLIP_BATCH}, {n} thread(s)")
                torch.set_num_threads(n)
                started = time.perf_counter()
                i = 0
                while time.perf_counter() - started < block:
                    batch = [bodies[(i + k) % len(bodies)] for k in range(CLIP_BATCH)]
                    add(f"inprocess_t{n}", CLIP_BATCH, bl.timed_batch(clip, batch)[0])
                    i += CLIP_BATCH
                if n == threads:  # the bare forward, in the same round (for the note, no goal)
                    add("forward_only", *forward_only_clip(clip, CLIP_BATCH, 2.0))
                for (batch_size, model_threads), name in clip_models.items():
                    if model_threads != n:
                        continue
                    log(f"efficiency: clip round {r + 1}/{rounds}: {name} at {CLIP_CONCURRENCY} in flight")
                    _rate, items, seconds, errs = server_block(
                        caller, name, bodies, CLIP_CONCURRENCY, block, skip=1 if batch_size > 1 else 4
                    )
                    add(name, items, seconds)
                    errors += errs
        torch.set_num_threads(threads)
        busy = watch.stop()
        rates = {key: (v["items"] / v["time"] if v["time"] else None) for key, v in totals.items()}
        forward = rates["forward_only"]
        del clip
        for n in thread_counts:
            served = rates.get("clip_b8" if n == threads else "clip_b8_t1")
            inproc = rates[f"inprocess_t{n}"]
            figures.append(
                figure(
                    "1a" if n == threads else "1a-1t",
                    f"clip {profile} serving efficiency (TorchServe / in-process, batch 8, {n} thread{'s' * (n > 1)})",
                    (served / inproc) if served and inproc else None,
                    "x",
                    ">= 0.90",
                    busy=busy,
                    details={
                        "batch_size": CLIP_BATCH,
                        "concurrency": CLIP_CONCURRENCY,
                        "torch_threads": n,
                        "rounds": rounds,
                        "block_s": block,
                        "images_per_s": rates,
                        "forward_only_images_per_s": forward if n == threads else None,
                        "image": "256x256 PNG, base64 JSON",
                        "errors": errors[:5],
                    },
                    note=f"{served or 0:.2f} vs {inproc or 0:.2f} images/s"
                    + (f"; bare forward {forward:.2f} images/s" if n == threads else ""),
                )
            )
        b8, b1 = rates.get("clip_b8"), rates.get("clip_b1")
        figures.append(
            figure(
                "2",
                f"clip {profile} batching gain at 16 in flight (batch 8 / batch 1, {threads} threads)",
                (b8 / b1) if b8 and b1 else None,
                "x",
                ">= 2",
                details={
                    "batch8_images_per_s": b8,
                    "batch1_images_per_s": b1,
                    "concurrency": CLIP_CONCURRENCY,
                    "workers": 1,
                    "torch_threads": threads,
                    "errors": errors[:5],
                },
                busy=busy,
                note=f"{b8 or 0:.2f} vs {b1 or 0:.2f} images/s",
            )
        )

        # --- sam ViT-B image encoder: in-process vs server (batch 1) ------------------------------
        # Each image costs 8-30 s here, so the sides are paired single requests in ABBA order
        # (server, in-process, in-process, server): a drift in the machine's load hits both alike.
        # At batch 1, one worker and seconds per image, the saturated rate is 1/latency to within
        # the few ms of HTTP that a second request in flight would hide.
        sam = bl.in_process_handler(
            Segmenter, "sam", profile, SAM_BATCH, torch_threads=threads, weights_dir=sam_weights
        )
        sam_label = "ViT-B" if profile == "arch" else profile
        watch = bl.CpuWatch()
        # no warm-up (one image is 8-30 s): each side's first image is in its samples, once each
        order = ["server", "inprocess"] if quick else ["server", "inprocess", "inprocess", "server"]
        samples: dict[str, list[float]] = {"server": [], "inprocess": []}
        for k, side_name in enumerate(order):
            log(
                f"efficiency: sam {sam_label} {side_name} ({k + 1}/{len(order)}; ViT-B: 8 s per image on 2 idle "
                f"cores, 30 s on busy ones)"
            )
            body = sam_body(10 + k)
            if side_name == "server":
                started = time.perf_counter()
                caller.ok("/predictions/sam_vitb", body)
                samples["server"].append(time.perf_counter() - started)
            else:
                samples["inprocess"].append(bl.timed_batch(sam, [body])[0])
        busy = watch.stop()
        del sam
        server_s = sum(samples["server"]) / len(samples["server"])
        inproc_s = sum(samples["inprocess"]) / len(samples["inprocess"])
        figures.append(
            figure(
                "1b",
                f"sam {sam_label} image encoder serving efficiency (TorchServe / in-process, batch 1)",
                inproc_s / server_s,
                "x",
                ">= 0.90",
                busy=busy,
                details={
                    "batch_size": SAM_BATCH,
                    "torch_threads": threads,
                    "order": order,
                    "seconds": samples,
                    "image": "320x240 PNG (resized to SAM's 1024 input), one box prompt",
                },
                note=f"{server_s:.1f} s/image served vs {inproc_s:.1f} s/image in-process (paired, ABBA)",
            )
        )
    finally:
        server.stop()
    return figures
