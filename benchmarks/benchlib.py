"""What every benchmark shares: paths, private model stores, servers, load generation, figures.

Nothing here is a test: figures are measured and reported with their goals, never asserted.
Servers come from tests/server.py (``TorchServe``: free ports, a config generated from the repo's
``config.properties``); in-process handlers from tests/harness.py (``model_config``/``make_context``,
the exact handler code without a server).
"""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
WORK = RESULTS / ".work"  # private model stores and server run dirs (gitignored with results/)
WEIGHTS = REPO / "model_store" / "weights"
for _path in (REPO, REPO / "tests", REPO / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from served_models import weighted_models  # noqa: E402  (scripts/served_models.py: the one model list)

MODELS = tuple(weighted_models())  # serve.sh's registration order
THREADS = os.cpu_count() or 1


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- figures ------------------------------------------------------------------------------------
@dataclass
class Figure:
    """One reported number, with its goal. ``met`` is None for figures without a goal."""

    id: str
    title: str
    value: float | None
    unit: str = ""
    goal: str = ""  # e.g. ">= 0.90"
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    busy: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.3g}{(' ' + self.unit) if self.unit else ''}"
        status = {True: "MET", False: "NOT MET", None: "info"}[self.met]
        goal = f" (goal {self.goal})" if self.goal else ""
        busy = " [machine busy]" if self.busy.get("busy") else ""
        return f"  {self.id:<4} {self.title}: {value}{goal} -> {status}{busy}"


def judge(value: float | None, goal: str) -> bool | None:
    """``goal`` is '>= x' or '<= x'."""
    if value is None or not goal:
        return None
    op, threshold = goal.split()
    threshold = float(threshold.rstrip("x"))
    return value >= threshold if op == ">=" else value <= threshold


def figure(id: str, title: str, value: float | None, unit: str = "", goal: str = "", **kwargs: Any) -> Figure:
    return Figure(
        id=id,
        title=title,
        value=None if value is None else float(value),
        unit=unit,
        goal=goal,
        met=judge(value, goal),
        **kwargs,
    )


# --- how busy the machine was ---------------------------------------------------------------------
class CpuWatch:
    """CPU used by other people's processes while a figure was measured.

    busy = (all CPU time the kernel reports) - (this benchmark's process tree: servers, workers,
    the peer, in-process models) over the wall time, in cores. The machine is shared with other
    work; a figure taken while others used more than ``BUSY_CORES`` is marked busy.
    """

    BUSY_CORES = 0.25

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.total0 = _busy_cpu()
        self.own0 = _own_cpu()
        self.load0 = os.getloadavg()[0]

    def stop(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.started, 1e-6)
        total = _busy_cpu() - self.total0
        own = _own_cpu() - self.own0
        others = max(total - own, 0.0) / wall
        return {
            "others_cores": round(others, 2),
            "own_cores": round(own / wall, 2),
            "cores": THREADS,
            "load1_start": round(self.load0, 2),
            "load1_end": round(os.getloadavg()[0], 2),
            "wall_s": round(wall, 1),
            "busy": others > self.BUSY_CORES,
        }


def _busy_cpu() -> float:
    times = psutil.cpu_times()
    return (
        sum(times)
        - times.idle
        - getattr(times, "iowait", 0.0)
        - getattr(times, "guest", 0.0)
        - getattr(times, "guest_nice", 0.0)
    )


_seen_own: dict[tuple[int, float], float] = {}


def _own_cpu() -> float:
    """CPU seconds of this process and its descendants; a process that ended since the last call
    counts at its last seen value (so short-lived helpers between two calls are missed)."""
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            _seen_own[(proc.pid, proc.create_time())] = t.user + t.system
        except psutil.Error:
            continue
    return sum(_seen_own.values())


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": THREADS,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


# --- images and request bodies --------------------------------------------------------------------
def picture(width: int, height: int, seed: int) -> Image.Image:
    """A smooth picture that differs per seed (distinct pixels: no cache can serve it), small as PNG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.01, 0.08, 2).tolist() + [rng.uniform(0, 6.28)]
        channels.append(127.5 + 127.5 * np.sin(fx * x + fy * y + phase))
    return Image.fromarray(np.stack(channels, -1).astype(np.uint8))


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- private model stores -------------------------------------------------------------------------
def ensure_weights(profile: str, models: Iterable[str], sam_vit_base: bool = False) -> None:
    """Build missing weights for ``profile`` (tiny: seconds; arch: minutes for sd and sam)."""
    root = WEIGHTS / profile
    missing = [m for m in models if not (root / f".{m}.done").exists()]
    if sam_vit_base and "sam" not in missing and not (root / "sam-vit-base").is_dir():
        missing.append("sam")
    if missing:
        log(f"building {profile} weights for {', '.join(missing)} (scripts/build_models.py)")
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "build_models.py"), "--profile", profile, "--models", *missing],
            check=True,
        )


def build_store(name: str, profile: str, archives: Iterable[str]) -> Path:
    """Archive ``archives`` with scripts/archive.sh into a private store named ``model_store`` (as the
    server's ``allowed_urls`` expects). ``pipeline`` also writes the workflow's ``pipeline.war``."""
    store = WORK / name / "model_store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    result = subprocess.run(
        [str(REPO / "scripts" / "archive.sh"), "--profile", profile, "--store", str(store), *archives],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/archive.sh failed:\n{result.stderr[-3000:]}")
    return store


def variant_archive(store: Path, source: str, name: str, changes: dict[str, Any]) -> Path:
    """A copy of ``<source>.mar`` registered as ``name`` (``name == source``: in place) whose
    model-config.yaml is deep-merged with ``changes`` (batch size, weights, threads):
    models/*/model-config.yaml is never touched."""
    from render_model_config import deep_merge

    target = store / f"{name}.mar"
    staging = store / f".{name}.mar.tmp"
    with zipfile.ZipFile(store / f"{source}.mar") as src, zipfile.ZipFile(staging, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = name
                data = json.dumps(manifest, indent=2).encode()
            elif item.filename == "model-config.yaml":
                data = yaml.safe_dump(deep_merge(yaml.safe_load(data), changes), sort_keys=False).encode()
            dst.writestr(item, data)
    staging.replace(target)
    return target


def rendered_config(name: str, profile: str, **changes: Any) -> dict[str, Any]:
    """models/<name>/model-config.yaml as archive.sh renders it for ``profile``, deep-merged with ``changes``."""
    from render_model_config import deep_merge, render

    return deep_merge(render(REPO / "models" / name / "model-config.yaml", profile, WEIGHTS), changes)


# --- in-process handlers -------------------------------------------------------------------------
def in_process_handler(
    handler_class: type, name: str, profile: str, batch_size: int = 8, **handler_overrides: Any
) -> Any:
    """``name``'s handler loaded in this process from its yaml rendered for ``profile`` (with
    ``handler_overrides`` merged into its ``handler:`` section), as its worker loads it: a real
    TorchServe ``Context`` (tests/harness.py)."""
    from harness import make_context

    handler = handler_class()
    handler.initialize(make_context(name, rendered_config(name, profile, handler=handler_overrides), batch_size))
    return handler


def timed_batch(handler: Any, bodies: list[Any]) -> tuple[float, list[dict[str, Any]]]:
    """One batch through ``handler.handle`` as the worker runs it: (seconds, the answers); an answer
    other than 200 raises, so a figure is never of errors."""
    from harness import run_batch

    started = time.perf_counter()
    results = run_batch(handler, bodies)
    seconds = time.perf_counter() - started
    for status, body in results:
        if status != 200:
            raise RuntimeError(f"{handler.context.model_name} answered {status}: {body}")
    return seconds, [body for _, body in results]


# --- servers --------------------------------------------------------------------------------------
def start_server(name: str, store: Path, **overrides: str):
    """A TorchServe (tests/server.py) on free loopback ports over ``store``; returns it started."""
    from server import TorchServe

    run_dir = WORK / name / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    # the server runs in its run dir, so its logs/ land there, not in the repo's logs/
    return TorchServe(run_dir, store, config_overrides=overrides or None).start(timeout=300)


def register(server, name: str, workflow: bool = False) -> float:
    """Register and wait for the workers; the seconds it took."""
    started = time.perf_counter()
    server.register(name, workflow=workflow, timeout=900)
    return time.perf_counter() - started


class Caller:
    """Thread-safe inference calls with the server's token (one HTTP session per thread)."""

    def __init__(self, server):
        self.server = server
        self.base = server.url("inference")
        self.local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def post(self, path: str, body: Any, timeout: float = 1800) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        headers = {"Authorization": f"Bearer {self.server.token('inference')}", "Content-Type": "application/json"}
        return self.session().post(self.base + path, data=data, headers=headers, timeout=timeout)

    def ok(self, path: str, body: Any, timeout: float = 1800) -> dict[str, Any]:
        response = self.post(path, body, timeout)
        if response.status_code != 200:
            raise RuntimeError(f"POST {path} -> HTTP {response.status_code}: {response.text[:500]}")
        return response.json()


# --- load generation ------------------------------------------------------------------------------
@dataclass
class Load:
    starts: list[float]
    ends: list[float]
    errors: list[str]
    wall: float

    @property
    def latencies(self) -> list[float]:
        return [e - s for s, e in zip(self.starts, self.ends)]


def closed_loop(
    send: Callable[[int], None], concurrency: int, *, requests_total: int | None = None, duration: float | None = None
) -> Load:
    """``concurrency`` threads, each sending its next request as soon as the last one answered, until
    ``requests_total`` were sent or ``duration`` seconds passed (requests in flight then finish)."""
    lock = threading.Lock()
    counter = iter(range(10**9))
    starts: list[float] = []
    ends: list[float] = []
    errors: list[str] = []
    began = time.perf_counter()

    def worker() -> None:
        while True:
            with lock:
                i = next(counter)
            if requests_total is not None and i >= requests_total:
                return
            if duration is not None and time.perf_counter() - began >= duration:
                return
            t0 = time.perf_counter()
            try:
                send(i)
            except Exception as exc:  # an error is reported with the figure, not raised mid-load
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            t1 = time.perf_counter()
            with lock:
                starts.append(t0)
                ends.append(t1)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Load(starts, ends, errors, time.perf_counter() - began)


def steady_rate(ends: list[float], skip: int, gap: float = 0.05) -> tuple[float | None, int]:
    """Items per second in steady state, from completion times: completions close together (within
    ``gap`` s) form one burst (a batch); the rate is the items of bursts after the ``skip``-th
    divided by the time from the end of that burst to the end of the last. Batch-quantised windows
    would otherwise be off by up to a batch. Needs batches more than ``gap`` apart (true of the arch
    models measured here; tiny batches merge, and the rate is then None). Returns (rate, items counted)."""
    times = sorted(ends)
    bursts: list[list[float]] = []
    for t in times:
        if bursts and t - bursts[-1][-1] <= gap:
            bursts[-1].append(t)
        else:
            bursts.append([t])
    if len(bursts) <= skip + 1:
        return None, 0
    items = sum(len(b) for b in bursts[skip + 1 :])
    return items / (bursts[-1][-1] - bursts[skip][-1]), items


def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    array = np.asarray(values)
    return {
        "n": len(values),
        "p50": float(np.percentile(array, 50)),
        "p90": float(np.percentile(array, 90)),
        "p99": float(np.percentile(array, 99)),
        "mean": float(array.mean()),
        "max": float(array.max()),
    }


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- memory ---------------------------------------------------------------------------------------
def frontend_process(server) -> psutil.Process:
    """The Java frontend among the ``torchserve --foreground`` launcher's descendants."""
    launcher = psutil.Process(server.process.pid)
    for proc in [launcher, *launcher.children(recursive=True)]:
        try:
            if proc.name().startswith("java"):
                return proc
        except psutil.Error:
            continue
    raise RuntimeError("no java process under the TorchServe launcher")


def process_memory(proc: psutil.Process) -> dict[str, float]:
    """RSS and PSS in MiB (PSS splits pages shared between processes, e.g. mmapped weight files)."""
    try:
        info = proc.memory_full_info()
        return {"rss_mib": info.rss / 2**20, "pss_mib": getattr(info, "pss", info.rss) / 2**20}
    except psutil.AccessDenied:
        return {"rss_mib": proc.memory_info().rss / 2**20, "pss_mib": float("nan")}


def server_memory(server) -> dict[str, Any]:
    """Frontend JVM + every worker (all descendants of the JVM), per process, in MiB."""
    java = frontend_process(server)
    processes = {java.pid: {"role": "frontend", **process_memory(java)}}
    for proc in java.children(recursive=True):
        try:
            processes[proc.pid] = {"role": "worker", **process_memory(proc)}
        except psutil.Error:
            continue
    return {
        "processes": processes,
        "rss_mib": sum(p["rss_mib"] for p in processes.values()),
        "pss_mib": sum(p["pss_mib"] for p in processes.values()),
    }


def worker_pids(server, model: str) -> set[int]:
    try:
        return {int(w["pid"]) for w in server.describe(model)["workers"] if w.get("pid") is not None}
    except Exception:  # function nodes of a workflow may not be listed under /models
        return set()


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Figure):
        return asdict(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
