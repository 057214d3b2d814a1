"""A studio under test: a real ``python -m studio serve`` process on a free loopback port with its own
data folder and a yaml pointing at a real TorchServe; and the page's steps over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from server import ChildServer, free_ports

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUTS = REPO / "outputs"


class StudioProcess(ChildServer):
    """One studio: its yaml (studio/studio.yaml with the port, data folder and TorchServe changed)."""

    name = "the studio"
    poll_interval = 0.2
    stop_grace = 20

    def __init__(self, root: Path, inference_url: str, management_url: str, key_file: Path | None, **limits: Any):
        self.root = root
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = root / "data"
        config = yaml.safe_load((REPO / "studio" / "studio.yaml").read_text())
        config.update(
            port=self.port,
            data_dir=str(self.data_dir),
            interpret_config=str(REPO / "models" / "interpret" / "model-config.yaml"),
        )
        config["torchserve"].update(
            inference_url=inference_url,
            management_url=management_url,
            key_file=str(key_file) if key_file else str(root / "no_key_file.json"),
            config_properties=None,
        )
        config["limits"].update(limits)
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "studio.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> StudioProcess:
        self.log = open(self.root / "studio.log", "a")  # appended to: a restart keeps what came before
        self.launch([sys.executable, "-m", "studio", "--config", str(self.config), "serve"], cwd=REPO, timeout=timeout)
        return self

    def ready(self) -> bool:
        # 503: the studio is up and answering, with TorchServe (or a model) not ready behind it
        return requests.get(self.url + "/healthz", timeout=5).status_code in (200, 503)

    def where_to_look(self) -> str:
        return f"{self.url}, its log ending: {(self.root / 'studio.log').read_text()[-2000:]}"

    def stop(self) -> None:
        self.stop_process()
        self.log.close()

    def restart(self) -> StudioProcess:
        self.stop()
        return self.start()

    # --- HTTP, as the page's script calls it ---------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", 300)
        response = requests.request(method, self.url + path, **kwargs)
        assert response.status_code < 400, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def wait_for_run(self, run_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api("GET", f"/api/runs/{run_id}")
            if run["status"] != "running":
                return run
            time.sleep(0.5)
        raise TimeoutError(f"run {run_id} still running after {timeout}s")

    def run_interpret(self, picture: bytes, started_by: str = "", **form: Any) -> dict[str, Any]:
        """The page's steps over HTTP: upload, caption, each prior, interpret; the finished run."""
        draft = self.api("POST", "/api/drafts", files={"image": ("picture.png", picture, "image/png")})
        caption = self.api("GET", f"/api/drafts/{draft['draft_id']}/caption")["caption"]
        priors = form.pop("priors", ["depth", "pose", "canny"])
        for prior in priors:
            self.api("GET", f"/api/drafts/{draft['draft_id']}/priors/{prior}")
        body = {
            "draft_id": draft["draft_id"],
            "started_by": started_by,
            "priors": priors,
            "mode": "each",
            "samples": 1,
            "seed": 3,
            "steps": 1,
            "caption": caption,
            **form,
        }
        run_id = self.api("POST", "/api/runs", json=body)["run_id"]
        return self.wait_for_run(run_id)


def tokens(key_file: Path) -> list[str]:
    keys = json.loads(key_file.read_text())
    return [entry["key"] for entry in keys.values() if isinstance(entry, dict) and entry.get("key")]
