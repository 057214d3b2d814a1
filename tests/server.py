"""A real TorchServe for integration tests: free loopback ports, a generated config, its own run dir.

The generated config is the repo's ``config.properties`` with only the addresses and the stores
changed, so tests exercise the configuration operators run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import requests

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def loopback_addresses(ports: dict[str, int]) -> dict[str, str]:
    """TorchServe's listening settings (config.properties keys) for ``ports``, all on loopback."""
    return {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
    }


def render_config(model_store: Path, ports: dict[str, int], overrides: dict[str, str] | None = None) -> str:
    values = {
        **loopback_addresses(ports),
        "model_store": str(model_store),
        "workflow_store": str(model_store),
        **(overrides or {}),
    }
    lines = []
    for line in (REPO / "config.properties").read_text().splitlines():
        key = line.split("=", 1)[0]
        if key in values:
            line = f"{key}={values.pop(key)}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


class ChildServer:
    """A server run as this process's child in a session of its own (``start_new_session=True``), so
    that stopping it stops whatever it started: TorchServe here, the studio in tests/studio_harness.py.
    A subclass says how to tell it is ready and where to look when it is not."""

    name: str  # the server, in errors
    poll_interval: float  # seconds between readiness checks
    stop_grace: float  # seconds from SIGTERM to SIGKILL
    # what a readiness check raises while the server is still starting: the check counts as "not yet"
    not_yet: tuple[type[Exception], ...] = (requests.RequestException,)
    process: subprocess.Popen | None = None
    log: IO[str]  # the server's output, opened by the subclass before it launches

    def ready(self) -> bool:
        raise NotImplementedError

    def where_to_look(self) -> str:
        raise NotImplementedError

    def launch(self, command: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float) -> None:
        """Run ``command`` (its output into :attr:`log`) and wait until it is ready."""
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_until_ready(timeout)

    def wait_until_ready(self, timeout: float) -> None:
        """RuntimeError as soon as the process has exited, TimeoutError after ``timeout`` seconds."""
        assert self.process is not None, "start the process first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.where_to_look()}")
            try:
                if self.ready():
                    return
            except self.not_yet:
                pass
            time.sleep(self.poll_interval)
        raise TimeoutError(f"{self.name} not ready after {timeout}s: {self.where_to_look()}")

    def stop_process(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class TorchServe(ChildServer):
    name = "TorchServe"
    poll_interval = 0.5
    stop_grace = 60
    # until the key file is written and /ping answers JSON, a check fails in one of these ways
    not_yet = (requests.RequestException, FileNotFoundError, KeyError, ValueError)

    def __init__(
        self,
        run_dir: Path,
        model_store: Path,
        config_overrides: dict[str, str] | None = None,
        *,
        config_text: str | None = None,
        snapshots: bool = False,
    ):
        """``config_text`` replaces the rendered config (tests/kserve: a generated pod config, with
        :attr:`env` overriding its addresses through ``TS_*`` variables); ``snapshots`` lets TorchServe
        write its config snapshots, as KServe's runtime starts it (no ``--ncs``)."""
        self.run_dir = run_dir
        self.model_store = model_store
        names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
        self.ports = dict(zip(names, free_ports(len(names))))
        self.config_path = run_dir / "config.properties"
        self.config_overrides = config_overrides
        self.config_text = config_text
        self.snapshots = snapshots
        self.env: dict[str, str] = {}  # added to the server's environment
        self.process: subprocess.Popen | None = None
        self.session = requests.Session()

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> TorchServe:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = self.config_text or render_config(self.model_store, self.ports, self.config_overrides)
        self.config_path.write_text(config)
        # workers inherit this environment: the pipeline finds the server's ports and key file here
        env = {
            **os.environ,
            "TMPDIR": str(self.run_dir),
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "TS_CONFIG_FILE": str(self.config_path),
            "TS_KEY_FILE": str(self.key_file),
            **self.env,
        }
        self.log = open(self.run_dir / "torchserve.out", "w")
        # --foreground keeps the JVM our child, so a crashed test run never leaves it behind
        self.launch(
            [
                str(VENV_BIN / "torchserve"),
                "--start",
                "--foreground",
                *([] if self.snapshots else ["--ncs"]),
                "--ts-config",
                str(self.config_path),
                "--model-store",
                str(self.model_store),
            ],
            cwd=self.run_dir,
            env=env,
            timeout=timeout,
        )
        return self

    def ready(self) -> bool:
        return self.get("inference", "/ping", timeout=2).json().get("status") == "Healthy"

    def where_to_look(self) -> str:
        return f"see {self.run_dir / 'torchserve.out'}"

    def stop(self) -> None:
        self.stop_process()
        self.session.close()

    def register(self, name: str, workflow: bool = False, timeout: float = 600) -> None:
        if workflow:
            response = self.post("management", f"/workflows?url={name}.war", timeout=timeout)
        else:
            response = self.post("management", f"/models?url={name}.mar&synchronous=true", timeout=timeout)
        response.raise_for_status()

    # --- HTTP with the server's tokens ---------------------------------------------------------
    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    def token(self, kind: str) -> str:
        return json.loads(self.key_file.read_text())[kind]["key"]

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.ports[kind]}"

    def request(
        self, kind: str, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        """``kind`` is inference, management or metrics; the right token is sent unless ``token`` is given."""
        headers = dict(kwargs.pop("headers", None) or {})
        # a server with token authorization off (a KServe pod's config) writes no key file
        if kind != "metrics" and "Authorization" not in headers and (token is not None or self.key_file.exists()):
            headers["Authorization"] = f"Bearer {token if token is not None else self.token(kind)}"
        kwargs.setdefault("timeout", 120)
        return self.session.request(method, self.url(kind) + path, headers=headers, **kwargs)

    def get(self, kind: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request(kind, "GET", path, **kwargs)

    def post(self, kind: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request(kind, "POST", path, **kwargs)

    def predict(self, model: str, body: Any = None, *, raw: bytes | None = None, **kwargs: Any) -> requests.Response:
        if raw is not None:
            return self.post("inference", f"/predictions/{model}", data=raw, **kwargs)
        return self.post("inference", f"/predictions/{model}", json=body, **kwargs)

    def describe(self, model: str) -> dict[str, Any]:
        response = self.get("management", f"/models/{model}")
        response.raise_for_status()
        return response.json()[0]

    def worker_pids(self, model: str) -> set[int]:
        return {worker["pid"] for worker in self.describe(model)["workers"]}
