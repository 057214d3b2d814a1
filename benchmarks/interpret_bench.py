"""What the interpreter costs over its own model calls, and its throughput:
``python benchmarks/interpret_bench.py --profile tiny``.

One request (both figures): a picture, priors depth + pose + canny, ``each`` mode, 2 samples per
prior (6 samples), a new seed per request, sd at the source's size with few steps (``--steps``;
tiny: 64x64 and 4 steps, so that a run fits a shared 2-core machine; arch: 128x128 and 2 steps, cheap
on purpose: a default arch request, 512x512 with 25 steps through three ControlNets, would outrun
sd's timeout on a CPU).

I1. Overhead: the interpreter's latency / the critical path of its own model calls made directly,
    the same bodies through the same server, phase by phase as the interpreter makes them
    (caption, depth and pose at once and canny locally; then the three sd requests at once; then the
    one clip request): the sum of the three phases' walls. Medians over the repetitions, the two
    sides alternating. Beside it, within each request: the latency / the critical path of the
    request's own stage timings (the same REST calls, timed by the interpreter: no load drift).
I2. Throughput at 1 and 8 requests in flight (closed loop): requests/s and p50/p99 latency.

Figures, not tests: printed, and written to benchmarks/results/interpret_<profile>.json.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import benchlib as bl
from benchlib import Figure, figure, log

PRIORS = ["depth", "pose", "canny"]
SAMPLES = 2
CALLED = ("caption", "clip", "depth", "pose", "sd")


def side(profile: str) -> int:
    return 64 if profile == "tiny" else 128


STEPS = {"tiny": 4, "arch": 2}


def interpret_body(profile: str, seed: int) -> dict[str, Any]:
    image = bl.png_b64(bl.picture(side(profile), side(profile), seed))
    return {"image": image, "priors": PRIORS, "samples": SAMPLES, "seed": seed, "steps": STEPS[profile]}


def timed_interpret(caller: bl.Caller, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    result = caller.ok("/predictions/interpret", body)
    return time.perf_counter() - started, result


def direct_calls(caller: bl.Caller, body: dict[str, Any], canny: Any) -> dict[str, float]:
    """The interpreter's model calls made here, phase by phase as it makes them; each phase's wall."""
    from handlers.common import decode_image, encode_png
    from workflows.interpret import generation_body, parse_request

    request = parse_request(body, SETTINGS)
    walls: dict[str, float] = {}
    with ThreadPoolExecutor(len(PRIORS) + 1) as pool:
        started = time.perf_counter()
        caption = pool.submit(caller.ok, "/predictions/caption", {"image": request.image})
        analyzers = {
            name: pool.submit(caller.ok, f"/predictions/{name}", {"image": request.image}) for name in ("depth", "pose")
        }
        edges = encode_png(
            canny(
                decode_image(request.image, SETTINGS.limits),
                SETTINGS.canny.low_threshold,
                SETTINGS.canny.high_threshold,
            )
        )
        priors = {name: {"control_image": future.result()["control_image"]} for name, future in analyzers.items()}
        priors["canny"] = {"control_image": edges}
        text = caption.result()["caption"]
        walls["priors"] = time.perf_counter() - started

        started = time.perf_counter()
        bodies = [generation_body(request, text, [name], priors) for name in PRIORS]
        answers = list(pool.map(lambda sd_body: caller.ok("/predictions/sd", sd_body), bodies))
        walls["generate"] = time.perf_counter() - started

    images = [image for answer in answers for image in answer["images"]]
    started = time.perf_counter()
    caller.ok("/predictions/clip", {"images": images, "texts": [text], "reference_image": request.image})
    walls["score"] = time.perf_counter() - started
    walls["critical_path"] = walls["priors"] + walls["generate"] + walls["score"]
    return walls


def own_stage_critical_path(timings: dict[str, float]) -> float:
    """The request's own stage timings: max(caption, priors) + max(sd calls) + score."""
    first = max(timings.get(name, 0.0) for name in ("caption", "depth", "pose", "canny"))
    generate = max(value for name, value in timings.items() if name.startswith("generate"))
    return first + generate + timings["score"]


def overhead(server, profile: str, repetitions: int) -> list[Figure]:
    from handlers.common.edges import canny_edges

    caller = bl.Caller(server)
    seed = iter(range(5000, 10**6))
    log(f"interpret overhead {profile}: warm-up")
    direct_calls(caller, interpret_body(profile, next(seed)), canny_edges)
    timed_interpret(caller, interpret_body(profile, next(seed)))
    watch = bl.CpuWatch()
    direct: list[dict[str, float]] = []
    latencies: list[float] = []
    within: list[float] = []
    for r in range(repetitions):
        for side_name in ("interpret", "direct") if r % 2 == 0 else ("direct", "interpret"):
            log(f"interpret overhead {profile}: repetition {r + 1}/{repetitions}: {side_name}")
            if side_name == "direct":
                direct.append(direct_calls(caller, interpret_body(profile, next(seed)), canny_edges))
            else:
                latency, result = timed_interpret(caller, interpret_body(profile, next(seed)))
                latencies.append(latency)
                within.append(latency / own_stage_critical_path(result["timings"]))
    busy = watch.stop()
    latency = bl.median(latencies)
    critical = bl.median([d["critical_path"] for d in direct])
    details = {
        "interpret_latency_s": latencies,
        "direct_phases_s": direct,
        "within_request": within,
        "repetitions": repetitions,
        "request": describe(profile),
    }
    return [
        figure(
            f"I1{'' if profile == 'tiny' else '-arch'}",
            f"interpret overhead, {profile} (interpret / critical path of its model calls made directly)",
            latency / critical,
            "x",
            "<= 1.10",
            busy=busy,
            details=details,
            note=f"{latency:.2f} s vs {critical:.2f} s, medians of {repetitions}; {describe(profile)}",
        ),
        figure(
            f"I1{'' if profile == 'tiny' else '-arch'}-same",
            f"interpret overhead, {profile}, within each request (latency / its own stage calls' critical path)",
            bl.median(within),
            "x",
            "<= 1.10",
            busy=busy,
            details=details,
            note="the stage calls are the same REST calls, timed by the interpreter in the same request",
        ),
    ]


def throughput(server, profile: str, plan: dict[int, int]) -> list[Figure]:
    caller = bl.Caller(server)
    seed = iter(range(20000, 10**6))
    figures = []
    for concurrency, total in plan.items():
        log(f"interpret throughput {profile}: {total} requests, {concurrency} in flight")
        bodies = [interpret_body(profile, next(seed)) for _ in range(total)]
        watch = bl.CpuWatch()
        load = bl.closed_loop(
            lambda i, sent=bodies: caller.ok("/predictions/interpret", sent[i]), concurrency, requests_total=total
        )
        busy = watch.stop()
        rate = len(load.ends) / load.wall
        stats = bl.percentiles(load.latencies)
        figures.append(
            figure(
                f"I2{'a' if concurrency == 1 else 'b'}{'' if profile == 'tiny' else '-arch'}",
                f"interpret throughput, {profile}, {concurrency} in flight",
                rate,
                "req/s",
                busy=busy,
                details={
                    "latency_s": stats,
                    "errors": load.errors[:5],
                    "requests": total,
                    "request": describe(profile),
                },
                note=f"p50 {stats.get('p50', 0):.2f} s, p99 {stats.get('p99', 0):.2f} s; "
                f"{rate * len(PRIORS) * SAMPLES:.2f} samples/s; {len(load.errors)} errors",
            )
        )
    return figures


def describe(profile: str) -> str:
    sd = f"sd {STEPS[profile]} steps"
    return (
        f"{side(profile)}x{side(profile)} source, priors {'+'.join(PRIORS)}, each mode, {SAMPLES} samples per "
        f"prior, {sd}"
    )


SETTINGS: Any = None


def main() -> None:
    global SETTINGS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["tiny", "arch"], default="tiny")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None, help="requests at 8 in flight (I2; half at 1)")
    parser.add_argument("--steps", type=int, default=None, help="sd's denoising steps (default: tiny 4, arch 2)")
    args = parser.parse_args()
    profile = args.profile
    if args.steps:
        STEPS[profile] = args.steps
    repetitions = args.repetitions or (5 if profile == "tiny" else 2)
    total = args.requests or (16 if profile == "tiny" else 8)

    from handlers.common import load_settings
    from handlers.model_settings import InterpretSettings

    SETTINGS = load_settings(InterpretSettings, bl.rendered_config("interpret", profile)["handler"])
    bl.ensure_weights(profile, CALLED)
    store = bl.build_store(f"interpret-{profile}", profile, [*CALLED, "interpret"])
    server = bl.start_server(f"interpret-{profile}", store)
    try:
        for name in (*CALLED, "interpret"):
            log(f"registering {name}")
            bl.register(server, name)
        figures = overhead(server, profile, repetitions) + throughput(server, profile, {1: total // 2, 8: total})
    finally:
        server.stop()
    for fig in figures:
        print(f"{fig.line()}\n       {fig.note}")
    bl.write_json(
        bl.RESULTS / f"interpret_{profile}.json", {"machine": bl.machine(), "figures": [vars(f) for f in figures]}
    )


if __name__ == "__main__":
    main()
