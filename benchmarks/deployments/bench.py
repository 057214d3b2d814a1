"""Figure 7: the same models and pipeline on TorchServe, Ray Serve, BentoML, Triton (PyTriton) and Flask.

One stack at a time on loopback, each with the same handlers, weights, stage functions and plan
(serving.py: batch sizes, batch delays, workers and torch threads from models/*/model-config.yaml).
Per stack, on the tiny profile (every model loaded, plus the pipeline):

* start-up to ready (launch -> every model and the pipeline answering),
* resident memory with everything loaded (RSS summed over the stack's process tree, after one
  request to every model: safetensors weights are mapped lazily),
* the image-in pipeline (clip on 5 texts, sam on 2 boxes, clip on the 2 regions; a new image per
  request) at 1, 8 and 32 requests in flight: requests/s, p50, p99,
* ``clip`` alone at 1, 8 and 32 in flight, and the batch sizes it ran in,
* probes of the feature table (features.py).

Then ``clip`` alone on the arch profile (ViT-B/32), a clip-only plan per stack. Ratios are against
TorchServe. Stacks run one after another, so a change in the machine's load between two stacks
moves their ratio: each stack's figures carry the CPU others used meanwhile (benchlib.CpuWatch).

    python benchmarks/run.py --only deployments            # everything (~15-25 min on 2 cores)
    python benchmarks/deployments/bench.py --stacks ray flask --quick
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchlib (benchmarks/ is not a package), as run.py does

import benchlib as bl  # noqa: E402
import features  # noqa: E402
import serving  # noqa: E402
from benchlib import Figure, figure, log  # noqa: E402
from stacks import STACKS, Stack  # noqa: E402

ORDER = ("torchserve", "ray", "bentoml", "pytriton", "flask")
CONCURRENCY = (1, 8, 32)
TEXTS = ["a red bicycle", "a tree", "a cat", "a car", "a house"]  # pipeline_bench.TEXTS


def request_plan(quick: bool) -> dict[str, dict[int, int]]:
    """Requests measured per concurrency, after a warm-up round of ``concurrency`` more (bounded: the
    whole part stays under 25 minutes)."""
    scale = 0.5 if quick else 1.0
    plans = {"pipeline": {1: 24, 8: 96, 32: 192}, "clip": {1: 40, 8: 160, 32: 320}, "clip-arch": {1: 8, 8: 32, 32: 64}}
    return {k: {c: max(c, int(n * scale)) for c, n in v.items()} for k, v in plans.items()}


class Bodies:
    """A new image for every request (so no cache answers), made before the clock starts."""

    def __init__(self, start: int = 50_000):
        self.seed = start

    def images(self, count: int, side: int) -> list[str]:
        out = []
        for _ in range(count):
            self.seed += 1
            out.append(bl.png_b64(bl.picture(side, side, self.seed)))
        return out

    def pipeline(self, count: int) -> list[dict[str, Any]]:
        side = 64
        roi = [[side * 0.1, side * 0.1, side * 0.6, side * 0.7], [side * 0.4, side * 0.3, side * 0.95, side * 0.9]]
        return [{"image": image, "texts": TEXTS, "roi": roi} for image in self.images(count, side)]

    def clip(self, count: int, side: int) -> list[dict[str, Any]]:
        return [{"image": image, "texts": TEXTS} for image in self.images(count, side)]


def load(stack: Stack, model: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Closed loop at ``concurrency``: the first ``concurrency`` bodies warm up (connection pools,
    batchers' first batches; not counted), the rest are measured. Throughput, latency percentiles,
    batch sizes."""
    sizes: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        answer = stack.post(model, bodies[i])
        with lock:
            if answer.batch_size:
                sizes.append(answer.batch_size)
            if answer.status != 200:
                failures.append(f"{answer.status}: {str(answer.body)[:200]}")
        if answer.status != 200:
            raise RuntimeError(f"{model} -> {answer.status}")

    bl.closed_loop(send, concurrency, requests_total=concurrency)
    sizes.clear()
    failures.clear()
    measured = bl.closed_loop(lambda i: send(i + concurrency), concurrency, requests_total=len(bodies) - concurrency)
    latency = bl.percentiles(measured.latencies)
    return {
        "requests": len(measured.ends),
        "errors": len(measured.errors),
        "error_samples": failures[:3],
        "throughput_rps": len(measured.ends) / measured.wall if measured.wall else None,
        "p50_s": latency.get("p50"),
        "p99_s": latency.get("p99"),
        "latency_s": latency,
        "batch_size_mean": (sum(sizes) / len(sizes)) if sizes else None,
        "batch_size_max": max(sizes, default=None),
    }


def warm_every_model(stack: Stack, models: list[str], bodies: Bodies) -> None:
    """One request to each model: their weights are touched (lazily mapped safetensors)."""
    image = bodies.images(1, 64)[0]
    warm = {
        "clip": {"image": image, "texts": TEXTS},
        "sd": {"prompt": "warm-up", "seed": 0},
        "sam": {"image": image, "roi": [[5, 5, 50, 50]]},
        "depth": {"image": image},
        "pose": {"image": image},
    }
    for name in models:
        answer = stack.post(name, warm.get(name, {"image": image}))
        if answer.status != 200:
            raise RuntimeError(f"{stack.name}: warm-up {name} -> {answer.status}: {str(answer.body)[:300]}")


@contextmanager
def measuring(name: str, plan: dict[str, Any], plan_path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Stack ``name`` (not yet started) and its result; a failure inside is recorded in the result, so
    a stack that cannot run is reported and the others still run; the stack is stopped after."""
    stack = STACKS[name](plan, plan_path)
    result: dict[str, Any] = {"stack": name}
    watch = bl.CpuWatch()
    try:
        yield stack, result
    except Exception as exc:
        traceback.print_exc()
        result["failed"] = f"{type(exc).__name__}: {exc}"[:600]
    finally:
        # before the stop: a stack's processes count as this benchmark's only while they run
        result["busy"] = watch.stop()
        stack.stop()


def measure_tiny(
    name: str, plan: dict[str, Any], plan_path: Path, requests_per: dict[str, dict[int, int]], bodies: Bodies
) -> dict[str, Any]:
    with measuring(name, plan, plan_path) as (stack, result):
        log(f"deployments tiny: starting {name}")
        stack.start()
        result["ready_s"] = stack.ready_s
        models = [m for m in plan["models"] if m != serving.PIPELINE]
        warm_every_model(stack, models, bodies)
        for answer in (stack.post(serving.PIPELINE, body) for body in bodies.pipeline(2)):
            if answer.status != 200:
                raise RuntimeError(f"{name}: warm-up pipeline -> {answer.status}: {str(answer.body)[:300]}")
        result["memory"] = stack.rss_mib()
        log(
            f"deployments tiny: {name} ready in {stack.ready_s:.1f}s, "
            f"RSS {result['memory']['rss_mib'] / 1024:.2f} GiB over {len(result['memory']['processes'])} processes"
        )
        for model, key in ((serving.PIPELINE, "pipeline"), ("clip", "clip")):
            for concurrency in CONCURRENCY:
                count = requests_per[key][concurrency]
                total = count + concurrency  # the warm-up round first
                batch = bodies.pipeline(total) if model == serving.PIPELINE else bodies.clip(total, 64)
                log(f"deployments tiny: {name} {model} at {concurrency} in flight ({count} requests)")
                result[f"{key}@{concurrency}"] = load(stack, model, batch, concurrency)
        log(f"deployments tiny: {name} feature probes")
        result["probes"] = features.probe(stack, bodies)
    return result


def measure_arch_clip(
    name: str, plan: dict[str, Any], plan_path: Path, requests_per: dict[int, int], bodies: Bodies
) -> dict[str, Any]:
    with measuring(name, plan, plan_path) as (stack, result):
        log(f"deployments arch clip: starting {name}")
        stack.start()
        result["ready_s"] = stack.ready_s
        for concurrency in CONCURRENCY:
            count = requests_per[concurrency]
            log(f"deployments arch clip: {name} at {concurrency} in flight ({count} requests)")
            result[f"clip@{concurrency}"] = load(stack, "clip", bodies.clip(count + concurrency, 256), concurrency)
    return result


def glue_lines(stack_name: str) -> dict[str, int]:
    """Code lines (not blank, not comment-only) of each file a stack needed."""
    counts = {}
    for path in STACKS[stack_name].glue:
        lines = (bl.REPO / path).read_text().splitlines()
        counts[path] = sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))
    return counts


def run(
    quick: bool = False, stacks: list[str] | None = None, tiny_threads: int = 1, arch: bool = True, tiny: bool = True
) -> list[Figure]:
    chosen = [s for s in ORDER if s in (stacks or ORDER)]
    if threading.current_thread() is threading.main_thread():
        # a terminated benchmark still stops the stack it started (SystemExit runs the finally blocks)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    requests_per = request_plan(quick)
    bodies = Bodies()
    models = serving.pipeline_models()
    bl.ensure_weights("tiny", models)
    work = bl.WORK / "deployments"
    tiny_plan = serving.serving_plan("tiny", [*models, serving.PIPELINE], tiny_threads or None)
    tiny_path = serving.write_plan(work / "plan-tiny.json", tiny_plan)
    log(
        f"deployments: plan {tiny_path}: "
        + ", ".join(
            f"{m} batch {s['batch_size']}/{s['max_batch_delay_ms']} ms/"
            f"{s['workers']} worker(s)/{s['torch_threads']} thr"
            for m, s in tiny_plan["serving"].items()
        )
    )
    tiny_results = {}
    if tiny:
        tiny_results = {name: measure_tiny(name, tiny_plan, tiny_path, requests_per, bodies) for name in chosen}
    arch_results: dict[str, dict[str, Any]] = {}
    if arch:
        bl.ensure_weights("arch", ["clip"])
        # the same override as tiny: on a shared 2-core host a worker with 2 intra-op threads loses
        # several times over to descheduled OpenMP threads (TorchServe's clip: 0.25 vs 1.8 req/s)
        arch_plan = serving.serving_plan("arch", ["clip"], tiny_threads or None)
        arch_path = serving.write_plan(work / "plan-arch-clip.json", arch_plan)
        arch_results = {
            name: measure_arch_clip(name, arch_plan, arch_path, requests_per["clip-arch"], bodies) for name in chosen
        }
    cited = features.cited(chosen)
    report = {
        "tiny": tiny_results,
        "arch_clip": arch_results,
        "plan": {"tiny": tiny_plan},
        "glue_lines": {name: glue_lines(name) for name in chosen},
        "cited": cited,
        "requests": requests_per,
    }
    bl.write_json(bl.RESULTS / "deployments-raw.json", report)
    table = markdown(report, chosen)
    (bl.RESULTS / "deployments.md").write_text(table)
    print("\n" + table, flush=True)
    return figures(report, chosen)


# --- reporting -----------------------------------------------------------------------------------
def _cell(result: dict[str, Any] | None, key: str, field: str, fmt: str) -> str:
    if not result or result.get("failed") or key not in result:
        return "—"
    value = result[key].get(field)
    return "—" if value is None else format(value, fmt)


def _ratio(result: dict[str, Any] | None, base: dict[str, Any] | None, key: str, field: str) -> str:
    try:
        return f"{result[key][field] / base[key][field]:.2f}x"
    except (KeyError, TypeError, ZeroDivisionError):
        return "—"


def markdown(report: dict[str, Any], chosen: list[str]) -> str:
    tiny, arch = report["tiny"], report["arch_clip"]
    base_tiny, base_arch = tiny.get("torchserve"), arch.get("torchserve")
    m = bl.machine()
    lines = [
        f"## Deployment comparison ({m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']}, "
        f"{time.strftime('%Y-%m-%d')})",
        "",
        "| figure | " + " | ".join(chosen) + " |",
        "|---|" + "---|" * len(chosen),
    ]

    def row(title: str, cells: list[str]) -> None:
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    for key, label, results, base in [
        ("pipeline", "pipeline (tiny, image-in)", tiny, base_tiny),
        ("clip", "clip (tiny)", tiny, base_tiny),
        ("clip", "clip (arch ViT-B/32)", arch, base_arch),
    ]:
        if not results:
            continue
        for c in CONCURRENCY:
            k = f"{key}@{c}"
            row(
                f"{label} @{c}: req/s (vs TS)",
                [
                    f"{_cell(results.get(s), k, 'throughput_rps', '.2f')} "
                    f"({_ratio(results.get(s), base, k, 'throughput_rps')})"
                    for s in chosen
                ],
            )
            row(
                f"{label} @{c}: p50 / p99 s",
                [
                    f"{_cell(results.get(s), k, 'p50_s', '.3f')} / {_cell(results.get(s), k, 'p99_s', '.3f')}"
                    for s in chosen
                ],
            )
        if key == "clip":
            row(
                f"{label} @32: mean / max batch",
                [
                    f"{_cell(results.get(s), 'clip@32', 'batch_size_mean', '.1f')} / "
                    f"{_cell(results.get(s), 'clip@32', 'batch_size_max', 'd')}"
                    for s in chosen
                ],
            )

    def simple(title: str, get) -> None:
        cells = []
        for s in chosen:
            try:
                cells.append(get(s))
            except (KeyError, TypeError):
                cells.append("—")
        row(title, cells)

    simple("start-up to ready, tiny (s)", lambda s: f"{tiny[s]['ready_s']:.1f}")
    simple("start-up to ready, arch clip only (s)", lambda s: f"{arch[s]['ready_s']:.1f}")
    simple(
        "RSS, everything loaded, tiny (GiB, vs TS)",
        lambda s: (
            f"{tiny[s]['memory']['rss_mib'] / 1024:.2f} "
            f"({tiny[s]['memory']['rss_mib'] / base_tiny['memory']['rss_mib']:.2f}x), "
            f"{len(tiny[s]['memory']['processes'])} proc"
        ),
    )
    simple(
        "glue code lines (files)",
        lambda s: (f"{sum(report['glue_lines'][s].values())} ({len(report['glue_lines'][s])})"),
    )
    simple(
        "others' CPU during tiny / arch (cores)",
        lambda s: (f"{tiny[s]['busy']['others_cores']} / {arch[s]['busy']['others_cores'] if s in arch else '—'}"),
    )
    failed = [
        (s, part, r["failed"])
        for part, results in (("tiny", tiny), ("arch", arch))
        for s, r in results.items()
        if r.get("failed")
    ]
    lines += [
        "",
        "### Features (probe: measured by this run; cited: the installed package, file and symbol checked)",
        "",
        "| feature | " + " | ".join(chosen) + " |",
        "|---|" + "---|" * len(chosen),
    ]
    for feature in features.FEATURES:
        cells = []
        for s in chosen:
            cell = features.cell(feature, s, tiny.get(s, {}).get("probes", {}), report["cited"])
            cells.append(cell.replace("|", "\\|"))
        row(feature, cells)
    if failed:
        lines += ["", "Could not run:"] + [f"- {s} ({part}): {why}" for s, part, why in failed]
    lines += [
        "",
        "Glue files: "
        + "; ".join(f"{s}: " + ", ".join(f"{p} ({n})" for p, n in report["glue_lines"][s].items()) for s in chosen),
    ]
    return "\n".join(lines) + "\n"


def figures(report: dict[str, Any], chosen: list[str]) -> list[Figure]:
    """The headline ratios as run.py figures (7a-7f); the full table is results/deployments.md."""
    out: list[Figure] = []
    tiny, arch = report["tiny"], report["arch_clip"]
    base = tiny.get("torchserve") or {}
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    for key, results, base_results, label in (
        ("pipeline@8", tiny, base, "pipeline tiny, 8 in flight"),
        ("pipeline@32", tiny, base, "pipeline tiny, 32 in flight"),
        ("clip@32", tiny, base, "clip tiny, 32 in flight"),
        ("clip@32", arch, arch.get("torchserve") or {}, "clip arch, 32 in flight"),
    ):
        for s in chosen:
            if s == "torchserve":
                continue
            r = results.get(s) or {}
            try:
                ratio = base_results[key]["throughput_rps"] / r[key]["throughput_rps"]
            except (KeyError, TypeError, ZeroDivisionError):
                ratio = None
            note = r.get("failed") or (
                f"TorchServe {base_results.get(key, {}).get('throughput_rps') or 0:.2f} req/s vs "
                f"{s} {r.get(key, {}).get('throughput_rps') or 0:.2f} req/s"
            )
            out.append(
                figure(
                    f"7{next(letters)}",
                    f"{label}: throughput, TorchServe / {s}",
                    ratio,
                    "x",
                    busy=r.get("busy", {}),
                    note=note,
                    details={"result": r.get(key)},
                )
            )
    out.append(
        figure(
            "7z",
            "deployment comparison table",
            None,
            note=f"see {bl.RESULTS / 'deployments.md'} (and deployments-raw.json)",
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", nargs="+", choices=ORDER, default=list(ORDER))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-arch", action="store_true", help="skip clip on the arch profile")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny profile (arch clip only)")
    parser.add_argument("--tiny-threads", type=int, default=1)
    args = parser.parse_args(argv)
    for fig in run(args.quick, args.stacks, args.tiny_threads, not args.no_arch, not args.no_tiny):
        print(fig.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
