"""Everything a Kubernetes cluster with KServe needs to serve the models, one InferenceService each.

``scripts/kserve.sh --out DIR`` runs this. From the same ``models/<name>/model-config.yaml`` and
``config.properties`` that ``scripts/serve.sh`` uses (nothing is typed twice), it writes::

    DIR/kustomization.yaml                    kubectl apply -k DIR
    DIR/inferenceservices/<name>.yaml         one InferenceService per model (KServe's kserve-torchserve runtime)
    DIR/networkpolicies/<name>.yaml           who may reach each predictor
    DIR/storage/<name>/config/config.properties   what the runtime starts TorchServe with
    DIR/storage/<name>/model-store/<name>.mar     built with scripts/archive.sh
    DIR/storage/<name>/weights/<profile>/...      the profile's weights, which the archive points at

``DIR/storage/<name>/`` is what ``storageUri`` (``<prefix>/<name>``) must hold: KServe copies it to
``/mnt/models`` in the pod, where the runtime runs ``torchserve --start
--model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties``.

The numbers come from each model's yaml: TorchServe's (workers, batch size, batch delay, timeouts)
go into the config's ``model_snapshot``, so a restarted pod comes up with its model registered and no
registration script; KServe's (replicas, scale target, resources, GPUs) from its ``kserve:``
section. A model whose ``handler.weights`` is null (``pipeline``) calls the others: its pod gets their
cluster URLs in ``MODEL_URLS`` and speaks their protocol (workflows/connect.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import yaml
from render_model_config import deep_merge
from served_models import served_models

REPO = Path(__file__).resolve().parent.parent
WEIGHTS_ROOT = REPO / "model_store" / "weights"

# Where KServe puts the storageUri's contents in the predictor pod, and what the kserve-torchserve
# runtime passes TorchServe (KServe's kserve-torchserve ClusterServingRuntime).
MOUNT = "/mnt/models"
RUNTIME = "kserve-torchserve"
# KServe sends a predictor's traffic to its container port 8080; the runtime's prometheus annotation
# scrapes 8082. Management stays on loopback inside the pod (TorchServe's token is off there).
INFERENCE_PORT, METRICS_PORT = 8080, 8082
POD_ADDRESSES = {
    "inference_address": f"http://0.0.0.0:{INFERENCE_PORT}",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": f"http://0.0.0.0:{METRICS_PORT}",
    "grpc_inference_address": "127.0.0.1",
    "grpc_management_address": "127.0.0.1",
}
# KServe's protocolVersion -> the TS_SERVICE_ENVELOPE KServe then sets in the pod
PROTOCOLS = {"v1": "kserve", "v2": "kservev2"}
# config.properties keys that only mean something for scripts/serve.sh's single server
HOST_ONLY_KEYS = ("token_expiration_min",)
PART_OF = "image-interpreter"


def model_config(name: str, profile: str) -> dict[str, Any]:
    """models/<name>/model-config.yaml with its profile's overrides merged, as archive.sh renders it."""
    config = yaml.safe_load((REPO / "models" / name / "model-config.yaml").read_text())
    overrides = (config.pop("profile_overrides", None) or {}).get(profile) or {}
    return deep_merge(config, overrides)


KSERVE_KEYS = ("minReplicas", "maxReplicas", "scaleTarget", "gpus", "resources")


def kserve_problems(name: str, config: dict[str, Any]) -> list[str]:
    """What is wrong with a model's ``kserve:`` section (the one home of its replicas and resources)."""
    where = f"models/{name}/model-config.yaml"
    section = config.get("kserve")
    if not isinstance(section, dict):
        return [f"{where} has no kserve: section (keys: {', '.join(KSERVE_KEYS)})"]
    problems = [f"{where} kserve.{key}: missing" for key in KSERVE_KEYS if key not in section]
    problems += [f"{where} kserve.{key}: unknown key" for key in section if key not in KSERVE_KEYS]
    return problems


def calls_others(config: dict[str, Any]) -> bool:
    """A model without weights of its own (``pipeline``) only calls the others (scripts/served_models.py)."""
    return not (config.get("handler") or {}).get("weights")


def read_properties(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs.append((key.strip(), value.strip()))
    return pairs


def model_snapshot(name: str, version: str, config: dict[str, Any], defaults: dict[str, str]) -> dict[str, Any]:
    """TorchServe's startup snapshot naming this one model with its yaml's workers, batching and timeouts."""
    entry = {
        "defaultVersion": True,
        "marName": f"{name}.mar",
        "minWorkers": config["minWorkers"],
        "maxWorkers": config["maxWorkers"],
        "batchSize": config["batchSize"],
        "maxBatchDelay": config["maxBatchDelay"],
        "responseTimeout": config["responseTimeout"],
        "startupTimeout": config.get("startupTimeout", int(defaults["default_startup_timeout"])),
    }
    return {"name": "startup.cfg", "modelCount": 1, "models": {name: {version: entry}}}


def pod_properties(name: str, version: str, config: dict[str, Any], mount: str) -> str:
    """The repo's config.properties as the pod runs it: addresses, stores, token and snapshot replaced."""
    base = [(k, v) for k, v in read_properties(REPO / "config.properties") if k not in HOST_ONLY_KEYS]
    defaults = dict(base)
    settings = {
        **POD_ADDRESSES,
        "model_store": f"{mount}/model-store",
        "workflow_store": f"{mount}/model-store",
        # KServe sets TS_SERVICE_ENVELOPE (and operators may set any TS_* key) in the environment
        "enable_envvars_config": "true",
        # KServe fronts TorchServe: only the inference port leaves the pod, and the NetworkPolicy
        # says who reaches it; management is on loopback and registers nothing (enable_model_api)
        "disable_token_authorization": "true",
        "enable_model_api": "false",
        "load_models": f"{name}.mar",
        "model_snapshot": json.dumps(model_snapshot(name, version, config, defaults), separators=(",", ":")),
    }
    lines = [
        f"# {name}: TorchServe in a KServe predictor pod, generated by scripts/kserve.sh from",
        "# config.properties and models/" + name + "/model-config.yaml. Do not edit: regenerate.",
        "# Token authorization is off inside the pod: KServe fronts TorchServe, only the inference port",
        "# (8080) and metrics (8082) listen beyond loopback, and a NetworkPolicy limits who reaches them.",
    ]
    written = set()
    for key, value in base:
        if key in written:
            continue
        written.add(key)
        lines.append(f"{key}={settings.get(key, value)}")
    lines += [f"{key}={value}" for key, value in settings.items() if key not in written]
    return "\n".join(lines) + "\n"


def archive(name: str, profile: str, store: Path, mount: str) -> str:
    """``model-store/<name>.mar`` with scripts/archive.sh, its weights_dir pointing into the pod's mount.
    Returns the archive's version (from its manifest)."""
    env = {**os.environ, "SERVED_WEIGHTS_ROOT": f"{mount}/weights"}
    result = subprocess.run(
        [str(REPO / "scripts" / "archive.sh"), "--profile", profile, "--store", str(store), name],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"error: scripts/archive.sh {name} failed:\n{result.stderr}")
    # the workflow (pipeline.war) is served by scripts/serve.sh only: KServe serves the pipeline model
    for extra in store.glob("*.war"):
        extra.unlink()
    with zipfile.ZipFile(store / f"{name}.mar") as mar:
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    return str(manifest["model"]["modelVersion"])


def place_weights(config: dict[str, Any], profile: str, weights_root: Path, target: Path) -> None:
    """The profile's weights beside the archive, hard-linked where the filesystem allows (GBs for arch
    and pretrained), so that syncing ``storage/<name>/`` to the store carries them."""
    weights = (config.get("handler") or {}).get("weights")
    if not weights:
        return
    source = weights_root / profile / weights
    if not source.is_dir():
        raise SystemExit(f"error: no weights at {source}: run scripts/build_models.sh --profile {profile} first")
    destination = target / profile / weights
    if destination.exists():
        shutil.rmtree(destination)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=link_or_copy)


def resources(section: dict[str, Any]) -> dict[str, Any]:
    spec = {
        kind: {key: str(value) for key, value in (section["resources"].get(kind) or {}).items()}
        for kind in ("requests", "limits")
    }
    if section["gpus"]:
        # Kubernetes schedules extended resources by their limit; a request must equal it
        spec["limits"]["nvidia.com/gpu"] = str(section["gpus"])
        spec["requests"]["nvidia.com/gpu"] = str(section["gpus"])
    return spec


def labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/name": name}


def inference_service(
    name: str, config: dict[str, Any], options: argparse.Namespace, model_urls: dict[str, str] | None
) -> dict[str, Any]:
    section = config["kserve"]
    model: dict[str, Any] = {
        "modelFormat": {"name": "pytorch"},
        "runtime": RUNTIME,
        "protocolVersion": options.protocol,
        "storageUri": f"{options.storage_uri_prefix.rstrip('/')}/{name}",
        # the project's image: the stock TorchServe image lacks diffusers and transformers 5
        "image": options.image,
        "resources": resources(section),
        # TorchServe answers /ping once its frontend is up; the snapshot's workers load first
        "readinessProbe": {
            "httpGet": {"path": "/ping", "port": INFERENCE_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
    }
    if model_urls is not None:
        # workflows/connect.py: where this model's stages call the others
        model["env"] = [{"name": "MODEL_URLS", "value": json.dumps(model_urls, separators=(",", ":"))}]
    predictor: dict[str, Any] = {
        "minReplicas": section["minReplicas"],
        "maxReplicas": section["maxReplicas"],
        "scaleMetric": "concurrency",
        "scaleTarget": section["scaleTarget"],
        # the longest a request may take: TorchServe's own limit for this model
        "timeout": config["responseTimeout"],
        "model": model,
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": options.namespace, "labels": labels(name)},
        "spec": {"predictor": predictor},
    }


def network_policy(name: str, callers: list[str], options: argparse.Namespace) -> dict[str, Any]:
    """Ingress to the predictor's pods from KServe's serving path (gateway, activator), from the
    models that call it, and metrics (8082) from the monitoring namespace; nothing else."""
    peers: list[dict[str, Any]] = [
        {
            "namespaceSelector": {
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(options.gateway_namespaces)}
                ]
            }
        }
    ]
    if callers:
        peers.append(
            {
                "podSelector": {
                    "matchExpressions": [
                        {"key": "serving.kserve.io/inferenceservice", "operator": "In", "values": callers}
                    ]
                }
            }
        )
    ingress = [{"from": peers}]
    if options.monitoring_namespace:
        monitoring = {"matchLabels": {"kubernetes.io/metadata.name": options.monitoring_namespace}}
        ingress.append(
            {
                "from": [{"namespaceSelector": monitoring}],
                "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{name}-predictor", "namespace": options.namespace, "labels": labels(name)},
        "spec": {
            "podSelector": {"matchLabels": {"serving.kserve.io/inferenceservice": name}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def write_yaml(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# generated by scripts/kserve.sh; regenerate rather than edit\n" + yaml.safe_dump(document, sort_keys=False)
    )


def generate(options: argparse.Namespace) -> list[Path]:
    names = options.models or served_models(REPO)
    configs = {name: model_config(name, options.profile) for name in names}
    problems = [problem for name in names for problem in kserve_problems(name, configs[name])]
    if problems:  # all of them, before anything is written
        raise SystemExit("error: " + "\n       ".join(problems))
    callers = [name for name in names if calls_others(configs[name])]
    called = [name for name in names if name not in callers]
    urls = {name: options.model_url_template.format(name=name, namespace=options.namespace) for name in called}
    out: Path = options.out
    written = []
    for name in names:
        config = configs[name]
        storage = out / "storage" / name
        for stale in (storage / "model-store", storage / "config"):
            shutil.rmtree(stale, ignore_errors=True)
        (storage / "model-store").mkdir(parents=True)
        mount = str(storage.resolve()) if options.mount_at_layout else MOUNT
        version = archive(name, options.profile, storage / "model-store", mount)
        place_weights(config, options.profile, options.weights_root, storage / "weights")
        (storage / "config").mkdir(parents=True)
        (storage / "config" / "config.properties").write_text(pod_properties(name, version, config, mount))
        service = inference_service(name, config, options, urls if name in callers else None)
        write_yaml(out / "inferenceservices" / f"{name}.yaml", service)
        policy = network_policy(name, callers if name in called else [], options)
        write_yaml(out / "networkpolicies" / f"{name}.yaml", policy)
        written += [out / "inferenceservices" / f"{name}.yaml", out / "networkpolicies" / f"{name}.yaml"]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": options.namespace,
        "resources": [str(path.relative_to(out)) for path in written],
    }
    write_yaml(out / "kustomization.yaml", kustomization)
    return written


def default_image() -> str:
    """deploy/kserve/Dockerfile's image, tagged with the project's version (pyproject.toml)."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return f"image-interpreter-predictor:{version}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/kserve.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write (created)")
    parser.add_argument("--profile", default="tiny", help="weights profile: tiny, arch or pretrained (default tiny)")
    parser.add_argument(
        "--namespace", default="image-interpreter", help="Kubernetes namespace (default image-interpreter)"
    )
    parser.add_argument(
        "--storage-uri-prefix",
        default="pvc://image-interpreter-models",
        help="storageUri of model <name> is PREFIX/<name>: pvc://<claim>[/path], s3://, gs://, ... "
        "(default pvc://image-interpreter-models)",
    )
    parser.add_argument(
        "--image",
        default=default_image(),
        help="predictor image, built from deploy/kserve/Dockerfile (default: %(default)s)",
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="v1",
        help="KServe protocol of every InferenceService: v1 (instances/predictions) or v2 "
        "(Open Inference Protocol); the pipeline calls the models in it (default v1)",
    )
    parser.add_argument(
        "--model-url-template",
        default="http://{name}-predictor.{namespace}.svc.cluster.local",
        help="cluster URL of model {name}, for the models that call others",
    )
    parser.add_argument(
        "--gateway-namespaces",
        type=lambda text: [n for n in text.split(",") if n],
        default=["istio-system", "knative-serving"],
        help="comma-separated namespaces whose pods may reach every predictor "
        "(KServe's ingress gateway and Knative's activator)",
    )
    parser.add_argument(
        "--monitoring-namespace", default="monitoring", help="namespace allowed to scrape metrics on 8082 (empty: none)"
    )
    parser.add_argument("--weights-root", type=Path, default=WEIGHTS_ROOT, help=argparse.SUPPRESS)
    # tests/kserve: each model's config and archive name its layout DIR/storage/<name> where a pod
    # has /mnt/models, so the pod's TorchServe runs here as KServe runs it there
    parser.add_argument("--mount-at-layout", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("models", nargs="*", help="models to generate (default: every models/<name>/)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    options = parse_args(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    written = generate(options)
    print(
        f"wrote {len(written)} manifests, {options.out / 'kustomization.yaml'} and "
        f"{options.out / 'storage'}/<model>/ (copy each to its storageUri)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
