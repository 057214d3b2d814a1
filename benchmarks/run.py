"""Run the CPU benchmarks and report each figure with its goal: ``make bench``.

    python benchmarks/run.py                  # everything (CPU set: ~10-15 min on 2 cores)
    python benchmarks/run.py --only tiny      # sections: efficiency, tiny, arch, gpu, deployments, caption
    python benchmarks/run.py --only deployments   # the same models on TorchServe, Ray Serve, BentoML, PyTriton, Flask
    python benchmarks/run.py --quick          # fewer repetitions
    python benchmarks/run.py --smoke          # the harness on tiny weights only (~2 min; figures meaningless)
    python benchmarks/run.py --peer-arch      # also the peer baseline on arch (long: sam ViT-H per request)

Writes benchmarks/results/<section>.json, results/latest.json and results/latest.md (a table for
the README). Figures are measured, never asserted: a goal not met is reported, with the reason in
benchmarks/README.md. A figure taken while other processes used more than a quarter of a core is
marked busy (see benchlib.CpuWatch).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
from benchlib import Figure, log

SECTIONS = ("efficiency", "tiny", "arch", "gpu", "deployments", "caption")


def section_efficiency(args) -> list[Figure]:
    import efficiency

    return efficiency.run(quick=args.quick, profile="tiny" if args.smoke else "arch")


def section_deployment(profile: str, args) -> list[Figure]:
    import deployment
    import pipeline_bench

    seeds = pipeline_bench.Seeds()
    dep = deployment.Deployment(profile, threads=args.tiny_threads if profile == "tiny" else None)
    figures: list[Figure] = []
    try:
        dep.start()
        figures += dep.figures
        if profile == "tiny":
            reps = 2 if args.smoke else (3 if args.quick else 5)
            figures += pipeline_bench.overhead(dep, seeds, reps, ["model", "workflow"])
            plan = {1: 2, 8: 8} if args.smoke else ({1: 4, 8: 16} if args.quick else {1: 6, 8: 32})
            figures += pipeline_bench.peer_baseline(dep, seeds, plan, ["model", "workflow"])
        else:
            endpoints = ["model", "workflow"] if args.workflow_arch else ["model"]
            figures += pipeline_bench.overhead(dep, seeds, 1, endpoints)
            if args.peer_arch:
                figures += pipeline_bench.peer_baseline(dep, seeds, {1: 2, 8: 16}, ["model"])
        # fig 3's requests ran sd, clip and sam; depth and pose get one request each
        figures.append(dep.memory_figure(exercised={"sd", "clip", "sam"}))
    finally:
        dep.stop()
    return figures


def section_deployments(args) -> list[Figure]:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "deployments"))
    import bench as deployments_bench

    return deployments_bench.run(quick=args.quick, tiny_threads=args.tiny_threads, arch=not args.smoke)


def section_caption(args) -> list[Figure]:
    import caption_bench

    figures = caption_bench.run("tiny", quick=args.quick, threads=args.tiny_threads or None)
    if not args.smoke:  # arch at cheap settings (10 new tokens, 1 beam): ViT-L/16 at 384 per image
        figures += caption_bench.run("arch", quick=True)
    return figures


def section_gpu(args) -> list[Figure]:
    import gpu

    available, reason = gpu.cuda_available()
    if not available:
        return [
            bl.figure(
                "6",
                "GPU figures (benchmarks/gpu.py)",
                None,
                note=f"not measured: {reason}; run `python benchmarks/gpu.py` on a CUDA machine",
            )
        ]
    return gpu.run(quick=args.quick)


def _order(fig: Figure) -> tuple:
    """1a, 1b, 2, 3a, ... 5d, 6: the brief's numbering, whatever order the sections ran in."""
    import re

    digits = re.match(r"(\d+)", fig.id)
    return (int(digits.group(1)) if digits else 99, fig.id)


def markdown(figures: list[Figure], meta: dict) -> str:
    m = meta["machine"]
    lines = [
        "# Benchmarks (CPU set)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}; torch {m['torch']}, Python {m['python']}. "
        f"Run {meta['started']} ({meta['run_time_s'] / 60:.1f} min){', smoke run' if meta['smoke'] else ''}"
        f"{', quick' if meta['quick'] else ''}.",
        "",
        "| # | figure | value | goal | met | notes |",
        "|---|---|---|---|---|---|",
    ]
    for f in sorted(figures, key=_order):
        value = (
            "n/a"
            if f.value is None
            else f"{f.value:.3g}{(' ' + f.unit) if f.unit and f.unit != 'x' else ('x' if f.unit == 'x' else '')}"
        )
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        busy = (
            f" *(machine busy: others used {f.busy['others_cores']} of {f.busy['cores']} cores)*"
            if f.busy.get("busy")
            else ""
        )
        note = (f.note + busy).replace("|", "\\|")
        lines.append(f"| {f.id} | {f.title} | {value} | {f.goal} | {met} | {note} |")
    lines += [
        "",
        "Ratios are measured side by side in one run (alternating blocks); see benchmarks/README.md "
        "for what each figure measures and why a goal is not met on this machine.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--smoke", action="store_true", help="tiny weights everywhere, minimal repetitions")
    parser.add_argument(
        "--peer-arch",
        action="store_true",
        help="also the peer baseline on arch (long, and ~22 GB of RAM: the peer holds a second copy)",
    )
    parser.add_argument(
        "--workflow-arch", action="store_true", help="also /wfpredict/pipeline on arch (one more sam ViT-H run)"
    )
    parser.add_argument(
        "--tiny-threads",
        type=int,
        default=1,
        help="torch intra-op threads per model on the tiny deployment and its peer (0: torch's default)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.quick = True

    started = time.perf_counter()
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": bl.machine(),
        "quick": args.quick,
        "smoke": args.smoke,
        "sections": args.only,
    }
    log(f"benchmarks on {meta['machine']['cpu']} ({meta['machine']['cores']} cores): {', '.join(args.only)}")
    runners = {
        "efficiency": lambda: section_efficiency(args),
        "tiny": lambda: section_deployment("tiny", args),
        "arch": lambda: [] if args.smoke else section_deployment("arch", args),
        "gpu": lambda: section_gpu(args),
        "deployments": lambda: section_deployments(args),
        "caption": lambda: section_caption(args),
    }
    figures: list[Figure] = []
    failures: dict[str, str] = {}
    for section in SECTIONS:
        if section not in args.only:
            continue
        section_started = time.perf_counter()
        log(f"=== {section}")
        try:
            found = runners[section]()
        except Exception as exc:  # one broken section must not lose the others' figures
            traceback.print_exc()
            failures[section] = f"{type(exc).__name__}: {exc}"
            found = [bl.figure(section, f"section {section} failed", None, note=failures[section][:300])]
        for fig in found:
            print(fig.line(), flush=True)
        bl.write_json(
            bl.RESULTS / f"{section}.json",
            {"section": section, "seconds": time.perf_counter() - section_started, "figures": found, **meta},
        )
        figures += found

    meta["run_time_s"] = time.perf_counter() - started
    meta["failures"] = failures
    bl.write_json(bl.RESULTS / "latest.json", {**meta, "figures": figures})
    (bl.RESULTS / "latest.md").write_text(markdown(figures, meta))
    print(
        f"\n=== {len(figures)} figures in {meta['run_time_s'] / 60:.1f} min "
        f"({'machine: ' + meta['machine']['cpu']}, {meta['machine']['cores']} cores)"
    )
    for fig in figures:
        print(fig.line())
    print(f"results: {bl.RESULTS / 'latest.md'} and {bl.RESULTS}/*.json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
