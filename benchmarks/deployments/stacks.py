"""The five serving stacks of the comparison, each started and stopped on loopback by the benchmark.

Every stack serves the same handlers (serving.ModelRunner, or TorchServe's own workers) with the
same plan (serving.serving_plan: batch sizes, delays, workers, threads from models/*/model-config.yaml)
at ``/predictions/<model>`` and ``/predictions/pipeline`` (Triton: its KServe v2 routes), and
exposes one client call, :meth:`Stack.post`, that returns (HTTP status, the request's own status,
its JSON, the batch size it ran in).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib as bl
import psutil
import requests
import serving
import venvs

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Answer:
    http_status: int
    status: int  # the request's own status (in-band for Triton)
    body: Any
    batch_size: int | None


class Stack:
    """One serving stack; subclasses say how to start it and how a request travels."""

    name = ""
    glue: tuple[str, ...] = ()  # repo-relative files this stack needed (counted by the benchmark)

    def __init__(self, plan: dict[str, Any], plan_path: Path):
        self.plan = plan
        self.plan_path = plan_path
        self.local = threading.local()
        self.process: subprocess.Popen | None = None
        self.ready_s: float | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Stack:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def processes(self) -> list[psutil.Process]:
        """The stack's process tree (the launched process and all its descendants)."""
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def rss_mib(self) -> dict[str, Any]:
        per_process = {}
        for proc in self.processes():
            try:
                per_process[proc.pid] = {"name": proc.name(), "rss_mib": proc.memory_info().rss / 2**20}
            except psutil.Error:
                continue
        return {"rss_mib": sum(p["rss_mib"] for p in per_process.values()), "processes": per_process}

    # --- requests ----------------------------------------------------------------------------
    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def post(self, model: str, body: dict[str, Any], timeout: float = 600) -> Answer:
        response = self.session().post(
            f"{self.base}/predictions/{model}",
            data=json.dumps(body),
            headers={"Content-Type": "application/json", **self.headers()},
            timeout=timeout,
        )
        size = response.headers.get("x-batch-size")
        try:
            payload = response.json()
        except ValueError:
            payload = response.text[:300]
        return Answer(response.status_code, response.status_code, payload, int(size) if size else None)

    def headers(self) -> dict[str, str]:
        return {}

    # --- features ------------------------------------------------------------------------------
    def metrics_url(self) -> str | None:
        return None

    def grpc_port(self) -> int | None:
        return None


class TorchServeStack(Stack):
    """This deployment as shipped: scripts/archive.sh's archives, tests/server.py's TorchServe."""

    name = "torchserve"
    glue = ("handlers/pipeline.py", "workflows/connect.py", "config.properties", "scripts/archive.sh")

    def start(self) -> Stack:
        profile = self.plan["profile"]
        models = [m for m in self.plan["models"] if m != serving.PIPELINE]
        bl.ensure_weights(profile, models)
        label = f"deployments-{profile}-{'-'.join(self.plan['models'])}"
        store = bl.build_store(label, profile, self.plan["models"])
        # the plan's torch_threads, as every peer uses them (a copy of the archive: models/ untouched)
        for name in models:
            bl.variant_archive(
                store, name, name, {"handler": {"torch_threads": self.plan["serving"][name]["torch_threads"]}}
            )
        started = time.perf_counter()
        self.server = bl.start_server(label, store)
        self.process = self.server.process
        for name in self.plan["models"]:
            bl.register(self.server, name)
        self.ready_s = time.perf_counter() - started
        self.base = self.server.url("inference")
        return self

    def stop(self) -> None:
        if getattr(self, "server", None) is not None:
            self.server.stop()
            self.server = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.token('inference')}"}

    def metrics_url(self) -> str:
        return self.server.url("metrics") + "/metrics"

    def grpc_port(self) -> int:
        return self.server.ports["grpc_inference"]


class PeerStack(Stack):
    """A stack run as one launched process (its own venv), ready when it says so."""

    venv: str | None = None  # None: the project's own environment
    ready_path = ""

    def command(self, python: Path) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return venvs.peer_environment({"DEPLOY_PLAN": str(self.plan_path)})

    def start(self, timeout: float = 600) -> Stack:
        python = venvs.ensure(self.venv, log=bl.log) if self.venv else Path(sys.executable)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = bl.WORK / "deployments" / f"{self.name}-{self.plan['profile']}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.log_path, "w")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            self.command(python),
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            cwd=HERE,
            env=self.environment(),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = [line for line in self.log_path.read_text().splitlines() if line.strip()][-3:]
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} ({self.log_path.name}): "
                    + " / ".join(line.strip() for line in tail)
                )
            if self.is_ready():
                self.ready_s = time.perf_counter() - started
                return self
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready in {timeout}s: see {self.log_path}")

    def is_ready(self) -> bool:
        try:
            return requests.get(self.base + self.ready_path, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            tree = self.processes()
        except psutil.Error:
            tree = []
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        for proc in tree:  # whatever the launched process left behind: only our own pids
            try:
                if proc.is_running():
                    proc.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(tree, timeout=10)
        self.process = None
        self.log_file.close()


class FlaskStack(PeerStack):
    """benchmarks/peer_flask.py (the seed's design) with a per-model route beside its /pipeline."""

    name = "flask"
    glue = ("benchmarks/peer_flask.py", "benchmarks/deployments/peer_flask_routes.py")
    ready_path = "/health"

    def command(self, python: Path) -> list[str]:
        return [str(python), str(HERE / "peer_flask_routes.py"), "--port", str(self.port)]

    def post(self, model: str, body: dict[str, Any], timeout: float = 600) -> Answer:
        if model != serving.PIPELINE:
            return super().post(model, body, timeout)
        response = self.session().post(f"{self.base}/pipeline", json=body, timeout=timeout)
        return Answer(response.status_code, response.status_code, response.json(), None)


class RayStack(PeerStack):
    name = "ray"
    venv = "ray"
    glue = ("benchmarks/deployments/peer_ray.py", "benchmarks/deployments/serving.py")

    def command(self, python: Path) -> list[str]:
        self.metrics_port = free_port()
        return [
            str(python),
            str(HERE / "peer_ray.py"),
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
        ]

    def is_ready(self) -> bool:
        return "READY" in self.log_path.read_text()

    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


class BentoStack(PeerStack):
    name = "bentoml"
    venv = "bentoml"
    glue = ("benchmarks/deployments/peer_bentoml.py", "benchmarks/deployments/serving.py")
    ready_path = "/readyz"

    def command(self, python: Path) -> list[str]:
        return [
            str(python.with_name("bentoml")),
            "serve",
            "peer_bentoml:Gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    def environment(self) -> dict[str, str]:
        # no usage statistics sent anywhere (the machine has no route out anyway)
        return {**super().environment(), "BENTOML_DO_NOT_TRACK": "True"}

    def metrics_url(self) -> str:
        return self.base + "/metrics"


class TritonStack(PeerStack):
    name = "pytriton"
    venv = "pytriton"
    glue = ("benchmarks/deployments/peer_pytriton.py", "benchmarks/deployments/serving.py")

    def command(self, python: Path) -> list[str]:
        self.grpc, self.metrics = free_port(), free_port()
        return [
            str(python),
            str(HERE / "peer_pytriton.py"),
            "--http-port",
            str(self.port),
            "--grpc-port",
            str(self.grpc),
            "--metrics-port",
            str(self.metrics),
        ]

    def environment(self) -> dict[str, str]:
        # the bundled Python backend stub links the system's libpython3.11; when the venv's
        # interpreter is another build (pyenv's 3.11.7 here) its stdlib then fails in the stub
        # ('_thread.RLock' has no '_recursion_count'): load the interpreter's own libpython first
        import sysconfig

        python = venvs.python(self.venv)
        libdir = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True,
            text=True,
        ).stdout.strip() or sysconfig.get_config_var("LIBDIR")
        paths = [libdir, *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
        return {**super().environment(), "LD_LIBRARY_PATH": os.pathsep.join(paths)}

    def is_ready(self) -> bool:
        return "READY" in self.log_path.read_text()

    def post(self, model: str, body: dict[str, Any], timeout: float = 600) -> Answer:
        from serving import v2_answer, v2_request

        response = self.session().post(f"{self.base}/v2/models/{model}/infer", json=v2_request(body), timeout=timeout)
        if response.status_code != 200:
            return Answer(response.status_code, response.status_code, response.text[:300], None)
        status, result, size = v2_answer(response.json())
        return Answer(response.status_code, status, result, size)

    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics}/metrics"

    def grpc_port(self) -> int:
        return self.grpc


STACKS: dict[str, type[Stack]] = {
    "torchserve": TorchServeStack,
    "ray": RayStack,
    "bentoml": BentoStack,
    "pytriton": TritonStack,
    "flask": FlaskStack,
}
