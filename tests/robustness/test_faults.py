"""Faults: a worker killed with SIGKILL under load, the whole server stopped and started again by the
operator scripts, and generations too long for the response timeout refused up front."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from harness import REPO
from robustness.tools import (
    SIZES,
    all_worker_pids,
    build,
    error_message,
    good_image,
    limits,
    model_yaml,
    run_load,
    wait_ready,
)
from server import TorchServe, free_ports, render_config

RECOVERY_BOUND = 120  # s: generous; the kill-to-healthy time is printed
FAIL_FAST_BOUND = 60  # s: an in-flight request on a killed worker must not wait for responseTimeout


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.load
def test_kill_9_worker_under_load_fails_in_flight_fast_and_recovers(server):
    """kill -9 the sd worker while it runs a long generation and the other models are under load:
    the generation fails fast with a 5xx, TorchServe starts a new worker, sd is healthy again within
    a bounded time, requests sent during the outage are answered, and nothing else is disturbed."""
    victim = "sd"
    before = all_worker_pids(server)
    old_pids = before[victim]
    pid = next(iter(old_pids))
    images = [(good_image(w, h, seed=k), (w, h)) for k, (w, h) in enumerate(SIZES)]
    labels = ["clip", "sam box", "depth", "pose", "pipeline", "pipeline (workflow)"]
    background = [build(i, labels[i % len(labels)], images) for i in range(180)]
    results: dict[str, object] = {}
    load_thread = threading.Thread(target=lambda: results.update(load=run_load(server, background, 16, 300)))

    long_outcome: dict[str, object] = {}

    def long_generation():  # 4 images x 40 steps at 512x512: a minute or more on CPU
        try:
            response = server.predict(
                victim,
                {"prompt": ["a", "b", "c", "d"], "width": 512, "height": 512, "steps": 40, "seed": 5},
                timeout=600,
            )
            long_outcome.update(status=response.status_code, text=response.text[:300])
        except requests.RequestException as exc:
            long_outcome.update(status=None, text=repr(exc))
        long_outcome["finished"] = time.monotonic()

    load_thread.start()
    cpu_before = cpu_seconds(pid)
    long_thread = threading.Thread(target=long_generation)
    long_thread.start()
    # the generation is in flight on the worker once the worker has burnt a second of CPU on it
    # (the only sd request: the background load leaves sd alone)
    deadline = time.monotonic() + 120
    while cpu_seconds(pid) - cpu_before < 1.0:
        assert time.monotonic() < deadline, "the sd worker never started the generation"
        assert "finished" not in long_outcome, long_outcome
        time.sleep(0.1)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # requests that arrive during the outage: queued for the new worker, or a 5xx that says why
    outage = run_load_async(server, [build(1000 + i, "sd", images) for i in range(4)])

    long_thread.join(FAIL_FAST_BOUND + 30)
    assert not long_thread.is_alive(), "the in-flight request on the killed worker hangs"
    failed_after = long_outcome["finished"] - killed_at
    assert long_outcome["status"] is not None and long_outcome["status"] >= 500, long_outcome
    assert failed_after < FAIL_FAST_BOUND, f"in-flight request took {failed_after:.1f}s to fail"

    new_pids = wait_ready(server, victim, RECOVERY_BOUND, exclude=old_pids)
    ready_at = time.monotonic()
    while True:  # healthy: a generation succeeds
        response = server.predict(
            victim, {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1}, timeout=RECOVERY_BOUND
        )
        if response.status_code == 200 or time.monotonic() - killed_at > RECOVERY_BOUND:
            break
        time.sleep(0.5)
    healthy_at = time.monotonic()
    assert response.status_code == 200, response.text[:300]
    assert healthy_at - killed_at < RECOVERY_BOUND
    load_thread.join(600)
    assert not load_thread.is_alive(), "the background load did not finish"
    outage.join(RECOVERY_BOUND)
    load, during = results["load"], outage.result

    print(
        f"\nkill -9 {victim} worker {pid} under load: the in-flight generation answered "
        f"{long_outcome['status']} {failed_after:.2f}s after the kill; new worker {sorted(new_pids)} READY after "
        f"{ready_at - killed_at:.1f}s; healthy (a generation succeeded) {healthy_at - killed_at:.1f}s after the kill"
    )
    print(load.report("background load during the kill"))
    print(during.report("sd requests sent during the outage"))
    assert new_pids.isdisjoint(old_pids)
    for result, count in ((load, len(background)), (during, 4)):
        assert len(result.outcomes) == count and all(o.status is not None for o in result.outcomes), [
            o.error for o in result.outcomes if o.status is None
        ][:5]
    assert [(o.label, o.status, error_message(o)[:100]) for o in load.outcomes if o.status != 200] == [], (
        "requests to other models failed"
    )
    for o in during.outcomes:
        assert o.status == 200 or (o.status >= 500 and error_message(o)), (o.status, error_message(o))
    for o in load.outcomes + during.outcomes:
        assert o.status != 200 or not o.mismatch, o.mismatch
    after = all_worker_pids(server)
    assert {k: v for k, v in after.items() if k != victim} == {k: v for k, v in before.items() if k != victim}, (
        "a worker of another model restarted"
    )


class run_load_async(threading.Thread):
    """run_load in a thread; ``result`` once joined."""

    def __init__(self, server, requests_, concurrency: int = 4, timeout: float = 300):
        super().__init__(daemon=True)
        self.args = (server, requests_, concurrency, timeout)
        self.result = None
        self.start()

    def run(self) -> None:
        self.result = run_load(*self.args)


def run_script(name: str, env: dict[str, str], timeout: float = 300, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "scripts" / name), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.load
def test_stop_and_start_with_the_scripts_registers_everything_again(model_store, tmp_path):
    """scripts/stop.sh then scripts/serve.sh on a private store, run dir and ports (the env vars the
    scripts honour): the models and the pipeline workflow are registered again and answer."""
    store = tmp_path / "model_store"  # named model_store, like the real one
    store.mkdir()
    for archive in ("clip.mar", "sam.mar", "pipeline.mar", "pipeline.war"):
        shutil.copy(model_store / archive, store / archive)
    run = tmp_path / "run"
    run.mkdir()
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    ports = dict(zip(names, free_ports(len(names))))
    config = run / "config.properties"
    config.write_text(render_config(store, ports))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "TS_CONFIG": str(config),
        "TS_KEY_FILE": str(run / "key_file.json"),
        "TS_RUN_DIR": str(run),
        "MODEL_STORE": str(store),
    }
    client = TorchServe(run, store)  # only for its HTTP helpers: the scripts own the process
    client.ports = ports
    image = good_image()

    def check_serving(label: str) -> None:
        workflows = client.get("management", "/workflows").json()["workflows"]
        assert [w["workflowName"] for w in workflows] == ["pipeline"], (label, workflows)
        models = sorted(m["modelName"] for m in client.get("management", "/models").json()["models"])
        assert {"clip", "sam", "pipeline"} <= set(models), (label, models)
        response = client.post(
            "inference", "/wfpredict/pipeline", json={"image": image, "texts": ["a", "b"]}, timeout=300
        )
        assert response.status_code == 200, (label, response.text[:300])
        assert response.json()["clip_analysis"]["concepts"] == ["a", "b"]

    repo_key_file = REPO / "key_file.json"
    repo_key_before = repo_key_file.read_bytes() if repo_key_file.exists() else None
    try:
        started = time.monotonic()
        result = run_script("serve.sh", env)
        assert result.returncode == 0, result.stderr[-3000:]
        first_start = time.monotonic() - started
        assert (run / "key_file.json").exists(), "the key file is not where TS_KEY_FILE says"
        check_serving("first start")
        # idempotent: a second serve.sh finds it running and registers nothing twice
        result = run_script("serve.sh", env)
        assert result.returncode == 0 and "already running" in result.stderr, result.stderr[-2000:]

        started = time.monotonic()
        result = run_script("stop.sh", env, 120)
        assert result.returncode == 0, result.stderr[-2000:]
        stopped = time.monotonic() - started
        assert not (run / "key_file.json").exists()
        with pytest.raises(requests.ConnectionError):
            requests.get(client.url("inference") + "/ping", timeout=5)

        started = time.monotonic()
        result = run_script("serve.sh", env)
        assert result.returncode == 0, result.stderr[-3000:]
        restarted = time.monotonic() - started
        check_serving("after restart")
        print(
            f"\nscripts: serve.sh {first_start:.1f}s, stop.sh {stopped:.1f}s, serve.sh again {restarted:.1f}s; "
            "workflow pipeline registered again and answering"
        )
    finally:
        run_script("stop.sh", env, 120)
    # a private server never touches the repo's own key file
    assert (repo_key_file.read_bytes() if repo_key_file.exists() else None) == repo_key_before


@pytest.mark.load
def test_generations_too_long_for_the_response_timeout_are_refused_up_front(server):
    """sd's limits (steps, size, prompts) bound the longest legal generation; anything over them is a
    4xx at parse time, before the worker spends a second on it, so no request can outlast
    responseTimeout and get the worker killed."""
    sd, config = limits("sd"), model_yaml("sd")
    timeout = config["responseTimeout"]
    pids = server.worker_pids("sd")
    over = [
        ({"steps": sd["max_steps"] + 1}, "steps"),
        ({"steps": 10_000}, "steps"),
        ({"width": sd["max_side"] + 8}, "width"),
        ({"height": 4096, "width": 4096}, "width"),
        ({"width": sd["max_side"], "height": sd["max_side"]}, "width"),  # sides legal, pixels not
        ({"prompt": ["a"] * (sd["max_prompts"] + 1)}, "prompt"),
        ({"prompt": ["a"] * 1000, "steps": 1000, "width": 4096, "height": 4096}, "prompt"),
    ]
    for extra, field in over:
        body = {"prompt": "a", **extra}
        started = time.monotonic()
        response = server.predict("sd", body, timeout=timeout)
        elapsed = time.monotonic() - started
        assert response.status_code == 400, response.text[:300]
        assert response.json()["message"].startswith(f"{field}: "), response.json()
        print(f"  refused {extra if len(str(extra)) < 60 else str(extra)[:60] + '...'} in {elapsed * 1000:.0f} ms")
    assert server.worker_pids("sd") == pids

    # what the limits allow, measured here (printed, not asserted: speed depends on the machine)
    def generate(steps: int) -> float:
        started = time.monotonic()
        response = server.predict(
            "sd", {"prompt": "a", "width": 256, "height": 256, "steps": steps, "seed": 1}, timeout=timeout
        )
        assert response.status_code == 200, response.text[:300]
        return time.monotonic() - started

    generate(1)  # warm
    short, long = generate(2), generate(6)
    per_step = max((long - short) / 4, 1e-6)  # one image-step at 256x256 on this machine
    pixels_factor = sd["max_pixels"] / (256 * 256)
    images = config["batchSize"] * sd["max_prompts"]
    worst = images * sd["max_steps"] * per_step * pixels_factor + images * short
    print(
        f"\nsd on this machine: {per_step * 1000:.0f} ms per 256x256 image-step; the worst legal batch "
        f"({config['batchSize']} requests x {sd['max_prompts']} prompts x {sd['max_steps']} steps at "
        f"{sd['max_pixels']} px) estimates at {worst:.0f}s against responseTimeout {timeout}s"
    )
    assert server.worker_pids("sd") == pids
