"""Figures 3 and 4: what the pipeline costs over its models, and the peer baseline.

The request (both figures, both profiles) is the seed API's prompt-in pipeline with two ``roi``
boxes, so that every request does the same work whatever its seed: sd generates the image, clip
scores it against five texts, sam segments the two boxes (box prompts: the automatic grid's mask
count would vary with the image), clip scores the two regions. Every request has its own seed, so
its image is new to sam's embedding cache. On ``arch`` sd is kept cheap: 2 denoising steps at
128x128 (SD v1.4's UNet and VAE at full size, random weights); sam is ViT-H, the default.

3. Pipeline overhead: the pipeline's latency / the sum of the latencies of its four model calls made
   directly (the same bodies the stages send, one after another, through the same server), at one
   request at a time; medians over the repetitions. The pipeline runs clip and sam concurrently, so
   it can beat the sum; the critical path (sd + max(clip, sam + region clip)) is reported beside it.
4. Peer baseline: the seed project's design (benchmarks/peer_flask.py: one Flask process, the same
   handler classes and profile, the models called in sequence per request) vs this deployment's
   ``/predictions/pipeline`` (and ``/wfpredict/pipeline``), at 1 and 8 requests in flight:
   throughput and p50/p99 latency. Sides alternate so that other work on the machine hits both.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import benchlib as bl
import requests
from benchlib import Figure, figure, log

TEXTS = ["a red bicycle", "a tree", "a cat", "a car", "a house"]
PROMPT = "a red bicycle leaning on a tree"
ENDPOINTS = {"model": "/predictions/pipeline", "workflow": "/wfpredict/pipeline"}


def generation(profile: str) -> dict[str, Any]:
    # tiny: the handler's defaults (64x64, 25 steps); arch: cheap on purpose (2 steps, 128x128)
    return {} if profile == "tiny" else {"steps": 2, "width": 128, "height": 128}


def side(profile: str) -> int:
    return 64 if profile == "tiny" else 128


def roi(profile: str) -> list[list[float]]:
    s = side(profile)
    return [[s * 0.1, s * 0.1, s * 0.6, s * 0.7], [s * 0.4, s * 0.3, s * 0.95, s * 0.9]]


def pipeline_body(profile: str, seed: int) -> dict[str, Any]:
    return {"prompt": PROMPT, "texts": TEXTS, "roi": roi(profile), "seed": seed, **generation(profile)}


def direct_chain(caller: bl.Caller, profile: str, seed: int) -> dict[str, float]:
    """The pipeline's four model calls, made one after another; seconds each."""
    from workflows.stages import _usable_box

    times: dict[str, float] = {}

    def timed(key: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        result = caller.ok(f"/predictions/{model}", body)
        times[key] = time.perf_counter() - started
        return result

    image = timed("sd", "sd", {"prompt": PROMPT, "seed": seed, **generation(profile)})["images"][0]
    timed("clip", "clip", {"image": image, "texts": TEXTS})
    masks = timed("sam", "sam", {"image": image, "roi": roi(profile)})
    timed("clip_regions", "clip", {"image": image, "texts": TEXTS, "roi": [_usable_box(b) for b in masks["boxes"]]})
    times["sum"] = sum(times.values())
    times["critical_path"] = times["sd"] + max(times["clip"], times["sam"] + times["clip_regions"])
    return times


def timed_pipeline(caller: bl.Caller, path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    result = caller.ok(path, body)
    return time.perf_counter() - started, result.get("timings") or {}


class Seeds:
    """A new seed for every request of the run: every image is new to sam's cache."""

    def __init__(self, start: int = 1000):
        self.next = start

    def __call__(self) -> int:
        self.next += 1
        return self.next


def overhead(deployment, seeds: Seeds, repetitions: int, endpoints: list[str]) -> list[Figure]:
    """Figure 3 for the deployment's profile."""
    profile = deployment.profile
    caller = bl.Caller(deployment.server)
    log(f"pipeline overhead {profile}: warm-up")
    if profile == "tiny":
        direct_chain(caller, profile, seeds())
        for name in endpoints:
            timed_pipeline(caller, ENDPOINTS[name], pipeline_body(profile, seeds()))
    else:
        # one sam encoder run is ~1 min here: sam is not warmed up; sd and clip are (first calls pay
        # one-off initialisation), and the pipeline runs before the direct calls (conservative)
        caller.ok("/predictions/sd", {"prompt": "warm-up", "seed": 0, **generation(profile)})
        image = bl.png_b64(bl.picture(128, 128, seed=1))
        caller.ok("/predictions/clip", {"image": image, "texts": TEXTS, "roi": roi(profile)})
    watch = bl.CpuWatch()
    direct: list[dict[str, float]] = []
    piped: dict[str, list[float]] = {name: [] for name in endpoints}
    stage_timings: dict[str, list[dict[str, Any]]] = {name: [] for name in endpoints}
    for r in range(repetitions):
        order = endpoints + ["direct"] if (r % 2 == 0) else ["direct"] + endpoints
        for side_name in order:
            log(f"pipeline overhead {profile}: repetition {r + 1}/{repetitions}: {side_name}")
            if side_name == "direct":
                direct.append(direct_chain(caller, profile, seeds()))
            else:
                latency, timings = timed_pipeline(caller, ENDPOINTS[side_name], pipeline_body(profile, seeds()))
                piped[side_name].append(latency)
                stage_timings[side_name].append(timings)
    busy = watch.stop()
    direct_sum = bl.median([d["sum"] for d in direct])
    critical = bl.median([d["critical_path"] for d in direct])
    figures = []
    for n, name in enumerate(endpoints):
        latency = bl.median(piped[name])
        # the same request's own stage calls (each a REST call to the model, timed by the pipeline):
        # immune to load changing between the pipeline and the direct calls
        internal = bl.median(
            [
                total / _stage_critical_path(t)
                for total, t in zip(piped[name], stage_timings[name])
                if _stage_critical_path(t)
            ]
        )
        fid = f"3{'ab'[n] if profile == 'tiny' else 'cd'[n]}"
        details = {
            "pipeline_latency_s": piped[name],
            "direct_calls_s": direct,
            "median_pipeline_s": latency,
            "median_direct_sum_s": direct_sum,
            "median_critical_path_s": critical,
            "vs_critical_path": latency / critical,
            "stage_timings_s": stage_timings[name],
            "same_request_vs_own_stage_critical_path": internal,
            "repetitions": repetitions,
            "request": _describe_request(profile),
        }
        figures.append(
            figure(
                fid,
                f"pipeline overhead, {profile}, {ENDPOINTS[name]} (pipeline / sum of direct calls)",
                latency / direct_sum,
                "x",
                "<= 1.10",
                busy=busy,
                details=details,
                note=(
                    f"{latency:.2f} s vs {direct_sum:.2f} s, medians of {repetitions}; the direct calls' critical path "
                    f"(clip alongside sam, as the pipeline runs them) {critical:.2f} s: {latency / critical:.2f}x"
                ),
            )
        )
        if internal:
            figures.append(
                figure(
                    f"{fid}-same",
                    f"pipeline overhead, {profile}, {ENDPOINTS[name]}, within each request "
                    f"(pipeline / its own stage calls' critical path)",
                    internal,
                    "x",
                    "<= 1.10",
                    busy=busy,
                    details=details,
                    note="the stage calls are the same REST calls to the models, timed by the pipeline in the same "
                    "request: no load drift between the two sides",
                )
            )
    return figures


def _stage_critical_path(timings: dict[str, float]) -> float | None:
    """generate, then concepts (clip) alongside segment (sam) -> describe_regions (clip)."""
    try:
        return timings.get("generate", 0.0) + max(
            timings["concepts"], timings["segment"] + timings.get("describe_regions", 0.0)
        )
    except KeyError:
        return None


def _describe_request(profile: str) -> str:
    gen = generation(profile)
    sd = (
        "sd at the handler's defaults (64x64, 25 steps)"
        if not gen
        else f"sd {gen['width']}x{gen['height']}, {gen['steps']} steps"
    )
    return f"prompt-in, {sd}, clip on {len(TEXTS)} texts, sam on 2 roi boxes, clip on the 2 regions"


# --- the peer -----------------------------------------------------------------------------------
class Peer:
    """benchmarks/peer_flask.py in its own process."""

    def __init__(self, profile: str, threads: int | None = None):
        self.profile = profile
        self.threads = threads
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = bl.WORK / f"peer-{profile}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> Peer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "w")
        command = [sys.executable, str(bl.BENCH / "peer_flask.py"), "--profile", self.profile, "--port", str(self.port)]
        if self.threads:
            command += ["--threads", str(self.threads)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=bl.REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the peer exited: see {self.log_path}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the peer did not start in {timeout}s: see {self.log_path}")

    def rss_mib(self) -> float:
        return bl.process_memory(bl.psutil.Process(self.process.pid))["rss_mib"]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()


def peer_baseline(deployment, seeds: Seeds, plan: dict[int, int], endpoints: list[str]) -> list[Figure]:
    """Figure 4: ``plan`` maps requests in flight -> requests sent per side."""
    profile = deployment.profile
    log(f"peer baseline {profile}: starting the Flask peer (the same handlers, in one process)")
    peer = Peer(profile, deployment.threads).start()
    try:
        caller = bl.Caller(deployment.server)
        local = threading.local()

        def peer_send(body: dict[str, Any]) -> None:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            response = local.session.post(
                peer.url + "/pipeline",
                data=json.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=1800,
            )
            if response.status_code != 200:
                raise RuntimeError(f"peer -> HTTP {response.status_code}: {response.text[:300]}")

        senders = {
            "peer": peer_send,
            **{name: (lambda body, p=ENDPOINTS[name]: caller.ok(p, body)) for name in endpoints},
        }
        for send in senders.values():  # warm-up, one each
            send(pipeline_body(profile, seeds()))
        peer_rss = peer.rss_mib()
        results: dict[str, dict[str, Any]] = {}
        watch = bl.CpuWatch()
        rounds = 2  # each side twice per concurrency, interleaved, half the requests each time
        for concurrency, total in plan.items():
            pooled: dict[str, dict[str, Any]] = {
                name: {"done": 0, "wall": 0.0, "latencies": [], "errors": []} for name in senders
            }
            for r in range(rounds):
                for name, send in senders.items() if r % 2 == 0 else reversed(senders.items()):
                    count = total // rounds
                    log(
                        f"peer baseline {profile}: {name} at {concurrency} in flight ({count} requests, "
                        f"round {r + 1}/{rounds})"
                    )
                    bodies = [pipeline_body(profile, seeds()) for _ in range(count)]
                    load = bl.closed_loop(lambda i: send(bodies[i]), concurrency, requests_total=count)
                    side_totals = pooled[name]
                    side_totals["done"] += len(load.ends)
                    side_totals["wall"] += load.wall
                    side_totals["latencies"] += load.latencies
                    side_totals["errors"] += load.errors
            for name, side_totals in pooled.items():
                results[f"{name}@{concurrency}"] = {
                    "throughput_rps": side_totals["done"] / side_totals["wall"],
                    "latency_s": bl.percentiles(side_totals["latencies"]),
                    "errors": side_totals["errors"][:5],
                    "requests": total,
                    "rounds": rounds,
                }
        busy = watch.stop()
    finally:
        peer.stop()
    figures = []
    for concurrency in plan:
        ours = results[f"{endpoints[0]}@{concurrency}"]
        theirs = results[f"peer@{concurrency}"]
        ratio = ours["throughput_rps"] / theirs["throughput_rps"] if theirs["throughput_rps"] else None
        note = "; ".join(
            f"{name} {r['throughput_rps']:.2f} req/s p50 {r['latency_s'].get('p50', 0):.2f} s "
            f"p99 {r['latency_s'].get('p99', 0):.2f} s"
            for name, r in ((n, results[f"{n}@{concurrency}"]) for n in [*endpoints, "peer"])
        )
        figures.append(
            figure(
                f"4{'a' if concurrency == 1 else 'b'}{'' if profile == 'tiny' else '-arch'}",
                f"peer baseline, {profile}, {concurrency} in flight: pipeline throughput, "
                "TorchServe / one Flask process",
                ratio,
                "x",
                ">= 2" if concurrency == 8 else "",
                busy=busy,
                details={
                    "results": {k: v for k, v in results.items() if k.endswith(f"@{concurrency}")},
                    "peer_rss_mib": peer_rss,
                    "request": _describe_request(profile),
                    "torch_threads": deployment.threads or "default",
                },
                note=note + (f"; peer process RSS {peer_rss / 1024:.2f} GiB" if concurrency == 8 else ""),
            )
        )
    return figures
