"""Shared by the robustness tests: crafted malformed images, config parsing, a bounded load runner."""

from __future__ import annotations

import base64
import io
import json
import statistics
import struct
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from harness import REPO, png_bytes, sample_image
from PIL import Image
from served_models import served_models

from workflows.connect import read_properties

MODEL_NAMES = tuple(served_models())


# --- configuration -------------------------------------------------------------------------------


def properties(path: Path = REPO / "config.properties") -> dict[str, str]:
    """config.properties as TorchServe reads it (key=value lines; # comments)."""
    return read_properties(path)


def model_yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "models" / name / "model-config.yaml").read_text())


def limits(name: str) -> dict[str, Any]:
    return dict(model_yaml(name)["handler"].get("limits") or {})


# --- crafted images ------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int, idat: bytes | None = b"\0" * 64) -> bytes:
    """A valid PNG signature and IHDR declaring ``width`` x ``height`` RGB, with a tiny (wrong) IDAT:
    a decompression bomb's shape, whatever size it declares (a few dozen bytes in all)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr)
    if idat is not None:
        body += _chunk(b"IDAT", zlib.compress(idat))
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF header is patched to declare ``width`` x ``height``."""
    buffer = io.BytesIO()
    sample_image(16, 16).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xC3:  # SOFn: length, precision, height, width
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker in the JPEG")


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def good_image(width: int = 64, height: int = 48, seed: int = 0) -> str:
    return b64(png_bytes(sample_image(width, height, seed)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# --- worker processes ----------------------------------------------------------------------------


def all_worker_pids(server, names=MODEL_NAMES) -> dict[str, set[int]]:
    """pids of every model's workers, and of the workflow's function nodes (pipeline__prepare, ...)."""
    pids = {name: server.worker_pids(name) for name in names}
    for entry in server.get("management", "/models?limit=100").json()["models"]:
        if entry["modelName"].startswith("pipeline__"):
            pids[entry["modelName"]] = server.worker_pids(entry["modelName"])
    return pids


def wait_ready(server, model: str, timeout: float, exclude: set[int] = frozenset()) -> set[int]:
    """Until ``model`` has its minimum workers READY with none of the ``exclude`` pids; their pids."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            described = server.describe(model)
            workers = described["workers"]
            last = workers
            ready = {w["pid"] for w in workers if w["status"] == "READY"}
            if len(ready) >= max(1, described["minWorkers"]) and not ready & set(exclude):
                return ready
        except (requests.RequestException, KeyError, ValueError) as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{model} not ready within {timeout}s: {last}")


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    label: str
    status: int | None  # None: no HTTP answer (exception, e.g. the client timeout)
    seconds: float
    body: Any = None
    error: str | None = None
    started: float = 0.0
    mismatch: str | None = None  # a 200 whose body is not the answer to this request


@dataclass
class LoadResult:
    outcomes: list[Outcome]
    seconds: float
    sent: int
    labels: dict[str, list[Outcome]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for outcome in self.outcomes:
            self.labels.setdefault(outcome.label, []).append(outcome)

    def report(self, title: str) -> str:
        lines = [
            f"{title}: {len(self.outcomes)} answered of {self.sent} sent in {self.seconds:.1f}s "
            f"= {len(self.outcomes) / self.seconds:.1f} req/s"
        ]
        for label, outcomes in sorted(self.labels.items()):
            times = [o.seconds for o in outcomes]
            statuses: dict[Any, int] = {}
            for o in outcomes:
                statuses[o.status] = statuses.get(o.status, 0) + 1
            lines.append(
                f"  {label:<22} n={len(outcomes):<4} p50={statistics.median(times):6.2f}s "
                f"p99={percentile(times, 99):6.2f}s max={max(times):6.2f}s statuses={statuses}"
            )
        return "\n".join(lines)


# (label, path, JSON body, check): check(body of a 200) says why it is not this request's answer, or None
Request = tuple[str, str, dict[str, Any], Callable[[dict[str, Any]], str | None] | None]


def run_load(
    server, requests_: list[Request], concurrency: int, timeout: float, on_progress: Callable[[int], None] | None = None
) -> LoadResult:
    """Send every request (POST path, JSON body) with ``concurrency`` client threads, each request
    with a client timeout; one Outcome per request, whatever happened to it."""
    local = threading.local()
    done = [0]
    lock = threading.Lock()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session

    def one(item: Request) -> Outcome:
        label, path, body, check = item
        started = time.perf_counter()
        try:
            response = session().post(
                server.url("inference") + path,
                json=body,
                timeout=timeout,
                headers={"Authorization": f"Bearer {server.token('inference')}"},
            )
            try:
                payload = response.json()
            except ValueError:
                payload = response.text[:500]
            mismatch = None
            if response.status_code == 200:  # keep the small part: outcomes are held until the end
                if not isinstance(payload, dict):
                    mismatch = f"not a JSON object: {str(payload)[:100]}"
                else:
                    mismatch = check(payload) if check else None
                    # (the workflow's answer has no request_id: TorchServe 0.12's engine gives its
                    # nodes their own request ids, not the client's x-request-id)
                    if path.startswith("/predictions/") and payload.get("request_id") != response.headers.get(
                        "x-request-id"
                    ):
                        mismatch = f"request_id {payload.get('request_id')} != {response.headers.get('x-request-id')}"
                    payload = {k: v for k, v in payload.items() if k in ("request_id", "message")}
            outcome = Outcome(
                label, response.status_code, time.perf_counter() - started, payload, started=started, mismatch=mismatch
            )
        except requests.RequestException as exc:
            outcome = Outcome(
                label, None, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}", started=started
            )
        with lock:
            done[0] += 1
            if on_progress:
                on_progress(done[0])
        return outcome

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, requests_))
    return LoadResult(outcomes, time.perf_counter() - started, len(requests_))


def error_message(outcome: Outcome) -> str:
    body = outcome.body
    if isinstance(body, dict):
        return str(body.get("message", ""))
    return str(body or outcome.error or "")


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- the load's requests ---------------------------------------------------------------------------

SIZES = [(64, 48), (48, 64), (96, 72), (80, 80)]


def expect(**checks: Callable[[Any], bool]) -> Callable[[dict[str, Any]], str | None]:
    def check(body: dict[str, Any]) -> str | None:
        for key, ok in checks.items():
            try:
                good = ok(body)
            except (KeyError, IndexError, TypeError) as exc:
                return f"{key}: {type(exc).__name__} {exc}"
            if not good:
                return f"{key} does not match the request"
        return None

    return check


def build(i: int, label: str, images: list[tuple[str, tuple[int, int]]]) -> Request:
    """Request ``i``: each carries something its answer must echo (a unique text, the seed, the
    image size), so a 200 that answers another request is caught."""
    image, (width, height) = images[i % len(images)]
    nonce = f"nonce {i}"
    if label == "clip":
        return (
            label,
            "/predictions/clip",
            {"image": image, "texts": [nonce, "a dog", "a cat"]},
            expect(concepts=lambda b: b["concepts"] == [nonce, "a dog", "a cat"]),
        )
    if label == "sam box":
        return (
            label,
            "/predictions/sam",
            {"image": image, "roi": [[2, 2, width // 2, height // 2]]},
            expect(masks=lambda b: len(b["masks"]) == 1 and b["rle"][0]["size"] == [height, width]),
        )
    if label == "sam automatic":
        return (
            label,
            "/predictions/sam",
            {"image": image},
            expect(masks=lambda b: all(r["size"] == [height, width] for r in b["rle"])),
        )
    if label == "depth":
        return (
            label,
            "/predictions/depth",
            {"image": image},
            expect(size=lambda b: (b["width"], b["height"]) == (width, height)),
        )
    if label == "pose":
        return (
            label,
            "/predictions/pose",
            {"image": image},
            expect(people=lambda b: isinstance(b["people"], list) and "overlay" in b),
        )
    if label in ("pipeline", "pipeline (workflow)"):
        path = "/predictions/pipeline" if label == "pipeline" else "/wfpredict/pipeline"
        return (
            label,
            path,
            {"image": image, "texts": [nonce, "b"]},
            expect(
                concepts=lambda b: b["clip_analysis"]["concepts"] == [nonce, "b"] and b["image"] == image,
                masks=lambda b: len(b["basic_segmentation"]["masks"]) >= 1,
            ),
        )
    if label == "sd":
        return (
            label,
            "/predictions/sd",
            {"prompt": nonce, "width": 64, "height": 64, "steps": 2, "seed": i},
            expect(seed=lambda b: b["seeds"] == [i] and len(b["images"]) == 1),
        )
    raise ValueError(label)
