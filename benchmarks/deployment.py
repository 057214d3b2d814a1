"""Figure 5: start-up time to all-ready, and memory with everything registered, per profile.

One server per profile, over a private store archived by scripts/archive.sh from models/ as they
are. Start-up is timed from launching ``torchserve`` to the last registration returning (models in
scripts/serve.sh's order with ``synchronous=true``, i.e. their workers loaded, then the ``pipeline``
model, then the ``pipeline`` workflow): what ``scripts/serve.sh`` waits for before it says ready.
Weights come from the page cache when they were read recently (a cold disk adds its read time).

Memory is RSS over the frontend JVM and every worker (psutil over the JVM's process tree), after
every model has served at least one request: weights are safetensors files mapped lazily, so a
worker that has only loaded holds a fraction of them (its RSS right after registration is kept in
the details). Each model's "alone" figure is its own workers' RSS (a worker is its own process:
nothing is shared with the other models' workers, so it is what that model costs alone), and the
frontend's is the bare server's before any registration. The ratio

    everything registered (frontend + five models + pipeline model + workflow nodes)
    / (bare frontend + sum of the five models alone)

is 1.0 when the pipeline model and the workflow hold no weights of their own, i.e. no model is
resident twice; what they do cost (Python processes with torch imported, no weights) is the excess.
The server is returned running for the pipeline figures.
"""

from __future__ import annotations

import time
from typing import Any

import benchlib as bl
from benchlib import Figure, figure, log


class Deployment:
    """A profile's full deployment: five models, the pipeline model and the workflow."""

    def __init__(self, profile: str, threads: int | None = None):
        self.profile = profile
        self.threads = threads  # handler.torch_threads for every model (None: as models/ ship it)
        self.server = None
        self.figures: list[Figure] = []
        self.bare: dict[str, Any] = {}
        self.idle: dict[str, Any] = {}

    def start(self) -> Deployment:
        profile = self.profile
        bl.ensure_weights(profile, bl.MODELS, sam_vit_base=False)
        log(f"deployment {profile}: archiving {', '.join(bl.MODELS)}, pipeline and the workflow into a private store")
        store = bl.build_store(f"deploy-{profile}", profile, [*bl.MODELS, "pipeline"])
        if self.threads:
            for name in bl.MODELS:
                bl.variant_archive(store, name, name, {"handler": {"torch_threads": self.threads}})

        watch = bl.CpuWatch()
        log(f"deployment {profile}: starting TorchServe")
        started = time.perf_counter()
        self.server = bl.start_server(f"deploy-{profile}", store)
        steps = {"frontend_healthy": time.perf_counter() - started}
        measuring = time.perf_counter()
        bare = bl.server_memory(self.server)
        measured = time.perf_counter() - measuring  # memory snapshots are not start-up time
        alone: dict[str, dict[str, float]] = {}
        attributed: set[int] = set(bare["processes"])
        for name in [*bl.MODELS, "pipeline", "workflow:pipeline"]:
            workflow = name.startswith("workflow:")
            log(f"deployment {profile}: registering {name}")
            steps[name] = bl.register(self.server, name.split(":")[-1], workflow=workflow)
            measuring = time.perf_counter()
            memory = bl.server_memory(self.server)
            pids = set(memory["processes"]) - attributed if workflow else bl.worker_pids(self.server, name)
            pids = {pid for pid in pids if pid in memory["processes"]}
            attributed |= pids
            alone[name] = {
                "workers": len(pids),
                "rss_mib": sum(memory["processes"][p]["rss_mib"] for p in pids),
                "pss_mib": sum(memory["processes"][p]["pss_mib"] for p in pids),
            }
            measured += time.perf_counter() - measuring
        ready = time.perf_counter() - started - measured
        busy = watch.stop()
        self.bare = bare
        self.idle = {"after_registration": bl.server_memory(self.server), "alone": alone}
        self.figures.append(
            figure(
                f"5{'a' if profile == 'tiny' else 'c'}",
                f"start-up to all-ready, {profile} profile",
                ready,
                "s",
                details={
                    "steps_s": steps,
                    "order": [*bl.MODELS, "pipeline", "workflow pipeline"],
                    "torch_threads": self.threads or "default (all cores)",
                },
                busy=busy,
                note="launch -> /ping healthy -> each registration (synchronous: workers loaded); "
                "weights from the page cache",
            )
        )
        return self

    def memory_figure(self, exercised: set[str]) -> Figure:
        """RSS with everything registered and every model used once (safetensors weights are mapped
        lazily: a worker's RSS only holds the weights its forward passes touched), vs the bare
        frontend + each model's workers. Models not in ``exercised`` get one request first."""
        profile = self.profile
        caller = bl.Caller(self.server)
        warm_ups = {
            "sd": (
                "sd",
                {
                    "prompt": "warm-up",
                    "seed": 0,
                    **({} if profile == "tiny" else {"steps": 2, "width": 128, "height": 128}),
                },
            ),
            "clip": ("clip", {"image": bl.png_b64(bl.picture(128, 128, 7))}),
            "sam": ("sam", {"image": bl.png_b64(bl.picture(128, 128, 8)), "roi": [[10, 10, 100, 100]]}),
            "depth": ("depth", {"image": bl.png_b64(bl.picture(128, 128, 9))}),
            "pose": ("pose", {"image": bl.png_b64(bl.picture(128, 128, 10))}),
        }
        watch = bl.CpuWatch()
        for name in bl.MODELS:
            if name not in exercised:
                log(f"deployment {profile}: one {name} request (touches its weights)")
                model, body = warm_ups[name]
                caller.ok(f"/predictions/{model}", body)
        everything = bl.server_memory(self.server)
        busy = watch.stop()
        per_model = {}
        for name in bl.MODELS:
            pids = [p for p in bl.worker_pids(self.server, name) if p in everything["processes"]]
            per_model[name] = sum(everything["processes"][p]["rss_mib"] for p in pids)
        known = {p for name in bl.MODELS for p in bl.worker_pids(self.server, name)}
        frontend_bare = next(p for p in self.bare["processes"].values() if p["role"] == "frontend")
        frontend_now = next(p for p in everything["processes"].values() if p["role"] == "frontend")
        others = sum(
            v["rss_mib"] for pid, v in everything["processes"].items() if v["role"] == "worker" and pid not in known
        )
        baseline = frontend_bare["rss_mib"] + sum(per_model.values())
        idle = self.idle["after_registration"]
        return figure(
            f"5{'b' if profile == 'tiny' else 'd'}",
            f"server RSS, everything registered / (frontend + each model alone), {profile}",
            everything["rss_mib"] / baseline,
            "x",
            "<= 1.1",
            busy=busy,
            details={
                "everything_rss_mib": everything["rss_mib"],
                "everything_pss_mib": everything["pss_mib"],
                "frontend_bare_rss_mib": frontend_bare["rss_mib"],
                "frontend_now_rss_mib": frontend_now["rss_mib"],
                "models_alone_rss_mib": per_model,
                "pipeline_model_and_workflow_workers_rss_mib": others,
                "idle_after_registration": {
                    "everything_rss_mib": idle["rss_mib"],
                    "per_registration": self.idle["alone"],
                },
                "processes": len(everything["processes"]),
            },
            note=(
                f"{everything['rss_mib'] / 1024:.2f} GiB vs {baseline / 1024:.2f} GiB; the pipeline model's and the "
                f"workflow's workers hold {others / 1024:.2f} GiB (Python + torch, no weights), the frontend grew "
                f"{(frontend_now['rss_mib'] - frontend_bare['rss_mib']):.0f} MiB"
            ),
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
