"""The feature table: a probe this run makes where one can be made, else a cited fact.

A cited fact names a file of the installed package (the stack's venv; the project's own .venv for
TorchServe and Flask) and a string in it; the benchmark checks the file holds the string, so a
citation that an upgrade made untrue shows as "not found" instead of staying in the table.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import benchlib as bl
import requests
import serving
import venvs

FEATURES = (
    "per-request errors in a batch",
    "dynamic batching",
    "model versions",
    "gRPC",
    "streaming",
    "composition without a second copy of weights",
    "auth",
    "metrics",
    "Kubernetes path",
)

# (feature, stack) -> (venv or None for the project's .venv, file under site-packages or repo:<path>, needle, fact)
CITED: dict[tuple[str, str], tuple[str | None, str, str, str]] = {
    ("model versions", "ray"): (
        "ray",
        "ray/serve/api.py",
        "def multiplexed",
        "no versions: a redeploy replaces the app; serve.multiplexed routes by model id",
    ),
    ("model versions", "bentoml"): (
        "bentoml",
        "bentoml/_internal/tag.py",
        "class Tag",
        "model store tags name:version; one service serves one version",
    ),
    ("model versions", "flask"): (None, "flask/app.py", "class Flask", "none (your own routes)"),
    ("gRPC", "ray"): (
        "ray",
        "ray/serve/config.py",
        "grpc_servicer_functions",
        "gRPC proxy, given compiled servicer functions (not set up here)",
    ),
    ("gRPC", "bentoml"): (
        "bentoml",
        "bentoml_cli/serve.py",
        'name="serve-grpc", hidden=True',
        "only for legacy 1.x services (hidden serve-grpc); none for @bentoml.service",
    ),
    ("gRPC", "flask"): (None, "flask/app.py", "class Flask", "none (WSGI: HTTP only)"),
    ("streaming", "torchserve"): (
        None,
        "ts/handler_utils/utils.py",
        "def send_intermediate_predict_response",
        "intermediate responses (HTTP chunks, gRPC StreamPredictions)",
    ),
    ("streaming", "ray"): (
        "ray",
        "ray/serve/handle.py",
        "class DeploymentResponseGenerator",
        "generator deployments, StreamingResponse over HTTP",
    ),
    ("streaming", "bentoml"): ("bentoml", "_bentoml_sdk/method.py", "is_stream", "generator APIs stream their items"),
    ("streaming", "pytriton"): (
        "pytriton",
        "pytriton/model_config/model_config.py",
        "decoupled: bool",
        "decoupled models (many responses per request)",
    ),
    ("streaming", "flask"): (None, "flask/helpers.py", "def stream_with_context", "generator responses"),
    ("auth", "pytriton"): (
        "pytriton",
        "pytriton/triton.py",
        "http_restricted_api",
        "restricted API groups behind a header key; inference itself open",
    ),
    ("Kubernetes path", "torchserve"): (
        None,
        "repo:scripts/kserve.sh",
        "InferenceService",
        "KServe InferenceService per model (scripts/kserve.sh; ts kservev2 envelope)",
    ),
    ("Kubernetes path", "ray"): (
        "ray",
        "ray/autoscaler/v2/instance_manager/cloud_providers/kuberay/cloud_provider.py",
        "KubeRay",
        "KubeRay (RayService)",
    ),
    ("Kubernetes path", "bentoml"): (
        "bentoml",
        "bentoml_cli/containerize.py",
        "def containerize_command",
        "bentoml containerize -> OCI image; BentoCloud/Yatai outside the package",
    ),
    ("Kubernetes path", "pytriton"): (
        "pytriton",
        "pytriton/triton.py",
        "class Triton",
        "nothing in the wheel: a container of your own (Triton's server repo has Helm charts)",
    ),
    ("Kubernetes path", "flask"): (None, "flask/app.py", "class Flask", "nothing: a container of your own"),
    ("composition without a second copy of weights", "torchserve"): (
        None,
        "repo:handlers/pipeline.py",
        "pipeline_caller",
        "pipeline model calls /predictions/<model> (REST)",
    ),
    ("composition without a second copy of weights", "ray"): (
        None,
        "repo:benchmarks/deployments/peer_ray.py",
        "get_deployment_handle",
        "DeploymentHandle per model",
    ),
    ("composition without a second copy of weights", "bentoml"): (
        None,
        "repo:benchmarks/deployments/peer_bentoml.py",
        "bentoml.depends",
        "bentoml.depends per model",
    ),
    ("composition without a second copy of weights", "pytriton"): (
        None,
        "repo:benchmarks/deployments/peer_pytriton.py",
        "/v2/models",
        "pipeline model calls the models' v2 endpoints (native Triton: ensembles, BLS)",
    ),
    ("composition without a second copy of weights", "flask"): (
        None,
        "repo:benchmarks/peer_flask.py",
        "Stages(call",
        "in-process calls, one process",
    ),
}


def _site_packages(venv: str | None) -> Path:
    root = venvs.VENVS / venv if venv else bl.REPO / ".venv"
    found = sorted((root / "lib").glob("python3*/site-packages"))
    return found[0] if found else root


def cited(stacks: list[str]) -> dict[str, dict[str, Any]]:
    """Every citation for ``stacks``, checked against the installed files."""
    out: dict[str, dict[str, Any]] = {}
    for (feature, stack), (venv, rel, needle, fact) in CITED.items():
        if stack not in stacks:
            continue
        path = bl.REPO / rel[5:] if rel.startswith("repo:") else _site_packages(venv) / rel
        try:
            found = needle in path.read_text(errors="replace")
        except OSError:
            found = False
        where = rel[5:] if rel.startswith("repo:") else f"{venv or 'project .venv'}: {rel}"
        out[f"{feature}|{stack}"] = {"fact": fact, "file": where, "needle": needle, "found": found}
    return out


def cell(feature: str, stack: str, probes: dict[str, Any], citations: dict[str, dict[str, Any]]) -> str:
    probe = probes.get(feature)
    if probe is not None:
        return f"{probe} *(probe)*"
    citation = citations.get(f"{feature}|{stack}")
    if citation:
        mark = "cited" if citation["found"] else "cited, NOT FOUND in the installed package"
        return f"{citation['fact']} *({mark}: {citation['file']})*"
    return "—"


# --- probes ------------------------------------------------------------------------------------
def probe(stack: Any, bodies: Any) -> dict[str, str]:
    results: dict[str, str] = {}
    for name, fn in (
        ("per-request errors in a batch", _errors_in_batch),
        ("dynamic batching", _batching),
        ("model versions", _versions),
        ("gRPC", _grpc),
        ("streaming", _streaming),
        ("auth", _auth),
        ("metrics", _metrics),
    ):
        try:
            outcome = fn(stack, bodies)
        except Exception as exc:  # a probe that breaks says so in its cell
            outcome = f"probe failed: {type(exc).__name__}: {str(exc)[:120]}"
        if outcome is not None:
            results[name] = outcome
    return results


def _together(stack: Any, model: str, bodies: list[dict[str, Any]]) -> list[Any]:
    """Send ``bodies`` at the same instant (one thread each), so a batcher can put them in one batch."""
    barrier = threading.Barrier(len(bodies))
    answers: list[Any] = [None] * len(bodies)

    def send(i: int) -> None:
        barrier.wait()
        answers[i] = stack.post(model, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def _errors_in_batch(stack: Any, bodies: Any) -> str:
    batch = bodies.clip(8, 64)
    batch[3] = {"image": "not base64!", "texts": ["a"]}
    best = None
    for _ in range(3):  # until the bad request shared a batch with good ones (where sizes are known)
        answers = _together(stack, "clip", batch)
        bad, good = answers[3], [a for i, a in enumerate(answers) if i != 3]
        shared = bad.batch_size is None or bad.batch_size > 1
        best = (bad, good)
        if shared:
            break
        batch = bodies.clip(8, 64)
        batch[3] = {"image": "not base64!", "texts": ["a"]}
    bad, good = best
    ok = sum(1 for a in good if a.status == 200)
    in_band = " in-band (HTTP 200; status in the answer)" if bad.http_status == 200 else f" HTTP {bad.http_status}"
    size = f", batch of {bad.batch_size}" if bad.batch_size else ""
    isolated = bad.status in range(400, 500) and ok == len(good)
    if bad.batch_size == 1:  # nothing shared a batch: isolation untested by this stack
        return f"no batches: bad one {bad.status}{in_band}, {ok}/{len(good)} others 200 (each ran alone)"
    return f"{'yes' if isolated else 'no'}: bad one {bad.status}{in_band}{size}, {ok}/{len(good)} others 200"


def _batching(stack: Any, bodies: Any) -> str:
    answers = _together(stack, "clip", bodies.clip(16, 64))
    sizes = [a.batch_size for a in answers if a.batch_size]
    limit = stack.plan["serving"]["clip"]["batch_size"]
    if not sizes:
        return "batch size not visible"
    biggest = max(sizes)
    return f"{'yes' if biggest > 1 else 'no'}: 16 at once ran in batches of up to {biggest} (limit {limit})"


def _versions(stack: Any, bodies: Any) -> str | None:
    body = bodies.clip(1, 64)[0]
    if stack.name == "torchserve":
        described = stack.server.describe("clip")
        version = (described[0] if isinstance(described, list) else described)["modelVersion"]
        response = stack.session().post(f"{stack.base}/predictions/clip/{version}", json=body, headers=stack.headers())
        return (
            f"{'yes' if response.status_code == 200 else 'no'}: /predictions/clip/{version} -> {response.status_code}"
        )
    if stack.name == "pytriton":
        response = stack.session().post(f"{stack.base}/v2/models/clip/versions/1/infer", json=serving.v2_request(body))
        return f"{'yes' if response.status_code == 200 else 'no'}: /v2/models/clip/versions/1 -> {response.status_code}"
    return None


def _grpc(stack: Any, bodies: Any) -> str | None:
    port = stack.grpc_port()
    if port is None:
        return None
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    return f"yes: gRPC port {port} accepts connections"


def _streaming(stack: Any, bodies: Any) -> str | None:
    if stack.name != "torchserve":
        return None
    body = {**bodies.pipeline(1)[0], "stream": True}
    with stack.session().post(
        f"{stack.base}/predictions/pipeline", json=body, headers=stack.headers(), stream=True, timeout=120
    ) as response:
        chunks = [chunk for chunk in response.iter_content(chunk_size=None) if chunk]
    return f"{'yes' if len(chunks) > 1 else 'no'}: pipeline with stream=true sent {len(chunks)} chunks"


def _auth(stack: Any, bodies: Any) -> str:
    body = bodies.clip(1, 64)[0]
    if stack.name == "pytriton":
        response = requests.post(f"{stack.base}/v2/models/clip/infer", json=serving.v2_request(body), timeout=60)
    else:
        path = "/predictions/clip"
        response = requests.post(stack.base + path, json=body, timeout=60)  # no token
    if response.status_code == 200:
        return "none: a request without credentials was answered (200)"
    return f"yes: a request without a token was refused ({response.status_code})"


def _metrics(stack: Any, bodies: Any) -> str:
    url = stack.metrics_url()
    if url is None:
        response = requests.get(stack.base + "/metrics", timeout=10)
        return f"none: GET /metrics -> {response.status_code}"
    response = requests.get(url, timeout=10)
    series = sorted(
        {line.split("{")[0].split(" ")[0] for line in response.text.splitlines() if line and not line.startswith("#")}
    )
    if response.status_code != 200 or not series:
        return f"no: {url} -> {response.status_code}"
    return f"yes: Prometheus, {len(series)} series (e.g. {series[0]})"
