"""Captions per second, batch 8 vs batch 1: ``python benchmarks/caption_bench.py --profile tiny``.

The exact handler code (handlers/captioner.py) in-process, as the worker runs it
(``Captioner.handle`` with a real TorchServe ``Context``, tests/harness.py): eight requests with
eight different pictures and the same settings, sent as one batch of 8 (one ``generate``) and as
eight batches of 1, in alternating blocks so a slow drift in the machine's load hits both sides.
Figures, not a test: printed, and written to benchmarks/results/caption_<profile>.json.

Random weights stop at [SEP] whenever they happen to, so the mean caption length in tokens (the
decoder's work) is printed beside each figure. ``--profile arch`` needs its weights
(``scripts/build_models.sh --profile arch --models caption``, ~1.8 GB) and is slow on a CPU: keep
its settings cheap (the defaults below: 10 new tokens, 1 beam).
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import benchlib as bl
from benchlib import log

BATCH = 8


def load(profile: str, threads: int | None):
    from handlers.captioner import Captioner

    overrides: dict[str, Any] = {"torch_threads": threads} if threads else {}
    return bl.in_process_handler(Captioner, "caption", profile, BATCH, **overrides)


def run(
    profile: str = "tiny",
    quick: bool = False,
    threads: int | None = None,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    side: int = 256,
    repeats: int | None = None,
) -> list[bl.Figure]:
    """The three figures (batch 8, batch 1, their ratio); also written to results/caption_<profile>.json."""
    arch = profile == "arch"
    repeats = repeats or (2 if arch or quick else 5)
    bl.ensure_weights(profile, ["caption"])
    handler = load(profile, threads)
    settings = handler.settings
    max_new_tokens = max_new_tokens or (10 if arch else settings.max_new_tokens)
    num_beams = num_beams or (1 if arch else settings.num_beams)
    bodies = [
        {"image": bl.png_b64(bl.picture(side, side, seed)), "max_new_tokens": max_new_tokens, "num_beams": num_beams}
        for seed in range(BATCH)
    ]
    stated = (
        f"{profile}, {BATCH} pictures {side}x{side}, max_new_tokens {max_new_tokens}, "
        f"num_beams {num_beams}, torch threads {handler_threads()}"
    )
    log(f"caption benchmark: {stated}")
    lengths = count_new_tokens(handler)
    bl.timed_batch(handler, bodies[:1])  # warm-up: first-call allocations and kernel choices

    batched: list[float] = []
    alone: list[float] = []
    watch = bl.CpuWatch()
    for block in range(repeats):
        seconds, _ = bl.timed_batch(handler, bodies)
        batched.append(BATCH / seconds)
        singles = sum(bl.timed_batch(handler, [body])[0] for body in bodies)
        alone.append(BATCH / singles)
        log(f"  block {block + 1}/{repeats}: batch 8 {batched[-1]:.3g} captions/s, batch 1 {alone[-1]:.3g} captions/s")
    busy = watch.stop()

    note = (
        f"{stated}; medians of {repeats} alternating blocks; {statistics.mean(lengths):.1f} new tokens per caption "
        f"on average (at most {max_new_tokens})"
    )
    gains = [b / a for b, a in zip(batched, alone)]
    title = f"caption {profile}:"
    figures = [
        bl.figure(
            f"cap{number}-{profile}",
            f"{title} {what}",
            statistics.median(samples),
            unit,
            busy=busy,
            note=note,
            details={"samples": samples},
        )
        for number, (what, samples, unit) in enumerate(
            [
                ("captions/s at batch 8", batched, "captions/s"),
                ("captions/s at batch 1", alone, "captions/s"),
                ("batching gain (batch 8 / batch 1, per block)", gains, "x"),
            ],
            start=1,
        )
    ]
    bl.RESULTS.mkdir(parents=True, exist_ok=True)
    (bl.RESULTS / f"caption_{profile}.json").write_text(
        json.dumps(
            {
                "machine": bl.machine(),
                "settings": stated,
                "new_tokens_per_caption": lengths,
                "figures": [fig.__dict__ for fig in figures],
            },
            indent=2,
            default=str,
        )
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["tiny", "arch"], default="tiny")
    parser.add_argument("--max-new-tokens", type=int, help="default: the yaml's on tiny, 10 on arch")
    parser.add_argument("--num-beams", type=int, help="default: the yaml's on tiny, 1 on arch")
    parser.add_argument("--side", type=int, default=256, help="the pictures' side in pixels")
    parser.add_argument("--repeats", type=int, help="alternating blocks (default: 5 tiny, 2 arch)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: the yaml's)")
    args = parser.parse_args(argv)
    figures = run(
        args.profile,
        threads=args.threads,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        side=args.side,
        repeats=args.repeats,
    )
    busy = figures[0].busy
    print(f"\ncaption: {figures[0].note}; others used {busy['others_cores']} of {busy['cores']} cores")
    for fig in figures:
        print(fig.line())
    print(f"written to {bl.RESULTS / f'caption_{args.profile}.json'}")
    return 0


def count_new_tokens(handler) -> list[int]:
    """Records, for every caption the handler's ``generate`` returns, how many tokens it generated
    (the decoder's work: random weights stop at [SEP] whenever they happen to). Re-tokenizing the
    decoded text would not do: tokens such as [unused17] decode to many characters."""
    lengths: list[int] = []
    generate = handler.model.generate

    def counting(*args: Any, **kwargs: Any):
        tokens = generate(*args, **kwargs)
        start = kwargs["input_ids"].shape[1] - 1 if kwargs.get("input_ids") is not None else 1
        pad = handler.model.config.text_config.pad_token_id
        lengths.extend(int(row[start:].ne(pad).sum()) for row in tokens)
        return tokens

    handler.model.generate = counting
    return lengths


def handler_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    raise SystemExit(main())
