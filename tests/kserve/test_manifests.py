"""scripts/kserve.sh's manifests, validated offline against KServe's InferenceService CRD schema.

No cluster is reachable here, so every generated InferenceService is checked with ``jsonschema``
against the CRD's ``spec.versions[v1beta1].schema.openAPIV3Schema``. The CRD is read from
``../shared/kserve/serving.kserve.io_inferenceservices.yaml`` (beside the repo, copied unchanged from
kserve/kserve: see that folder's README) or, where that is absent, from the file named by
``KSERVE_CRD`` (a path to the same YAML). Without either the tests fail and say so.

The CRD's schema accepts any unknown field (Kubernetes prunes them silently), so a typo such as
``minReplica`` would pass it and vanish on apply. The tests close it: every object schema that lists
``properties`` and says nothing of ``additionalProperties`` (and does not preserve unknown fields)
gets ``additionalProperties: false``, and a test shows the typo failing.
"""

from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import REPO
from served_models import served_models, weighted_models

CRD_NAME = "serving.kserve.io_inferenceservices.yaml"


def crd_path() -> Path:
    shared = REPO.parent / "shared" / "kserve" / CRD_NAME
    if shared.is_file():
        return shared
    configured = os.environ.get("KSERVE_CRD")
    if configured and Path(configured).is_file():
        return Path(configured)
    pytest.fail(
        f"KServe's InferenceService CRD is neither at {shared} nor at $KSERVE_CRD ({configured!r}): "
        f"set KSERVE_CRD to a copy of {CRD_NAME} from kserve/kserve (config/crd/full)"
    )


def close(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it names its fields."""
    if isinstance(schema, dict):
        closed = {key: close(value) for key, value in schema.items()}
        if (
            "properties" in closed
            and "additionalProperties" not in closed
            and not closed.get("x-kubernetes-preserve-unknown-fields")
        ):
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [close(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    """The v1beta1 openAPIV3Schema as shipped (2 MB of YAML: the C loader where PyYAML has it)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(crd_path().read_text(), Loader=loader)
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def validator(crd_schema) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(close(crd_schema))


def documents(out: Path, folder: str) -> dict[str, dict[str, Any]]:
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted((out / folder).glob("*.yaml"))}


def errors(validator: jsonschema.Draft7Validator, document: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def test_every_inference_service_matches_the_closed_crd_schema(kserve_out, validator):
    services = documents(kserve_out, "inferenceservices")
    assert sorted(services) == sorted(served_models())
    for name, service in services.items():
        assert errors(validator, service) == [], name


def test_a_misspelt_field_fails_the_closed_schema_but_passes_the_crd_as_shipped(kserve_out, validator, crd_schema):
    service = documents(kserve_out, "inferenceservices")["clip"]
    typo = copy.deepcopy(service)
    typo["spec"]["predictor"]["minReplica"] = typo["spec"]["predictor"].pop("minReplicas")
    found = errors(validator, typo)
    assert len(found) == 1 and "spec.predictor" in found[0] and "minReplica" in found[0], found
    nested = copy.deepcopy(service)
    nested["spec"]["predictor"]["model"]["modelFormat"]["nmae"] = "pytorch"
    assert any("nmae" in error for error in errors(validator, nested))
    # why the schema is closed: KServe's CRD alone lets the typo through
    assert list(jsonschema.Draft7Validator(crd_schema).iter_errors(typo)) == []


def test_each_model_gets_its_numbers_from_its_yaml(kserve_out):
    """Replicas, scale target, resources and GPUs from ``kserve:``; timeout and snapshot from TorchServe's keys."""
    services = documents(kserve_out, "inferenceservices")
    for name, service in services.items():
        config = yaml.safe_load((REPO / "models" / name / "model-config.yaml").read_text())
        section = config["kserve"]
        predictor = service["spec"]["predictor"]
        model = predictor["model"]
        assert model["modelFormat"]["name"] == "pytorch" and model["runtime"] == "kserve-torchserve"
        assert model["storageUri"] == f"pvc://image-interpreter-models/{name}"
        assert (predictor["minReplicas"], predictor["maxReplicas"]) == (section["minReplicas"], section["maxReplicas"])
        assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", section["scaleTarget"])
        assert predictor["timeout"] == config["responseTimeout"]
        requests, limits = model["resources"]["requests"], model["resources"]["limits"]
        assert requests["cpu"] == str(section["resources"]["requests"]["cpu"])
        assert limits["memory"] == str(section["resources"]["limits"]["memory"])
        assert limits.get("nvidia.com/gpu", "0") == str(section["gpus"])
        properties = read_properties(kserve_out / "storage" / name / "config" / "config.properties")
        snapshot = json.loads(properties["model_snapshot"])
        entry = snapshot["models"][name]["1.0"]
        for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
            assert entry[key] == config[key], (name, key)
        assert entry["marName"] == f"{name}.mar"
        assert (kserve_out / "storage" / name / "model-store" / f"{name}.mar").is_file()
    assert services["sd"]["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert services["sam"]["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in services["clip"]["spec"]["predictor"]["model"]["resources"]["limits"]


def read_properties(path: Path) -> dict[str, str]:
    from kserve_manifests import read_properties as pairs

    return dict(pairs(path))


def test_the_pod_config_is_the_servers_config_as_kserve_runs_it(kserve_out):
    """Limits from config.properties; KServe's addresses and stores; token off, management on loopback."""
    from kserve_manifests import read_properties as pairs

    server = dict(pairs(REPO / "config.properties"))
    pod = read_properties(kserve_out / "storage" / "clip" / "config" / "config.properties")
    for key in ("max_request_size", "max_response_size", "allowed_urls", "job_queue_size", "metrics_mode"):
        assert pod[key] == server[key], key
    assert pod["inference_address"] == "http://0.0.0.0:8080" and pod["metrics_address"] == "http://0.0.0.0:8082"
    assert pod["management_address"] == "http://127.0.0.1:8081"
    assert pod["grpc_inference_address"] == pod["grpc_management_address"] == "127.0.0.1"
    assert pod["model_store"] == "/mnt/models/model-store"
    assert (pod["enable_envvars_config"], pod["disable_token_authorization"], pod["enable_model_api"]) == (
        "true",
        "true",
        "false",
    )
    # the archive reads its weights where KServe mounts the storage, and the layout carries them
    with zipfile.ZipFile(kserve_out / "storage" / "clip" / "model-store" / "clip.mar") as mar:
        handler = yaml.safe_load(mar.read("model-config.yaml"))["handler"]
    assert handler["weights_dir"] == "/mnt/models/weights/tiny/clip"
    assert any((kserve_out / "storage" / "clip" / "weights" / "tiny" / "clip").iterdir())


def test_callers_reach_the_models_at_their_cluster_urls_and_only_they_and_the_gateway_may(kserve_out):
    services = documents(kserve_out, "inferenceservices")
    policies = documents(kserve_out, "networkpolicies")
    env = {item["name"]: item["value"] for item in services["pipeline"]["spec"]["predictor"]["model"]["env"]}
    urls = json.loads(env["MODEL_URLS"])
    assert urls["clip"] == "http://clip-predictor.image-interpreter.svc.cluster.local"
    # the models with weights of their own are called; those without (pipeline, interpret) call them
    assert set(urls) == set(weighted_models()) and "pipeline" not in urls
    assert "env" not in services["clip"]["spec"]["predictor"]["model"]
    (callers,) = policies["clip"]["spec"]["ingress"][0]["from"][1]["podSelector"]["matchExpressions"]
    assert callers["key"] == "serving.kserve.io/inferenceservice" and "pipeline" in callers["values"]
    assert set(callers["values"]).isdisjoint(weighted_models())
    assert len(policies["pipeline"]["spec"]["ingress"][0]["from"]) == 1  # only the gateway reaches the pipeline
    for name, policy in policies.items():
        assert policy["spec"]["podSelector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": name}
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["ingress"][-1]["ports"] == [{"protocol": "TCP", "port": 8082}]


def test_kustomization_lists_every_manifest(kserve_out):
    kustomization = yaml.safe_load((kserve_out / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {str(p.relative_to(kserve_out)) for p in kserve_out.glob("*/*.yaml") if p.parent.name != "storage"}
    assert listed == on_disk and len(listed) == 2 * len(served_models())
    assert kustomization["namespace"] == "image-interpreter"


def test_options_reach_the_manifests(tmp_path, validator):
    import kserve_manifests

    options = kserve_manifests.parse_args(
        [
            "--out",
            str(tmp_path),
            "--namespace",
            "vision",
            "--storage-uri-prefix",
            "s3://bucket/ii/",
            "--protocol",
            "v2",
            "--image",
            "registry.example/ii:1",
        ]
    )
    service = kserve_manifests.inference_service("clip", kserve_manifests.model_config("clip", "tiny"), options, None)
    assert errors(validator, service) == []
    model = service["spec"]["predictor"]["model"]
    assert service["metadata"]["namespace"] == "vision"
    assert (model["storageUri"], model["protocolVersion"], model["image"]) == (
        "s3://bucket/ii/clip",
        "v2",
        "registry.example/ii:1",
    )


def test_a_model_without_a_kserve_section_is_refused_naming_it():
    import kserve_manifests

    config = kserve_manifests.model_config("clip", "tiny")
    del config["kserve"]
    assert kserve_manifests.kserve_problems("clip", config) == [
        "models/clip/model-config.yaml has no kserve: section (keys: minReplicas, maxReplicas, scaleTarget, gpus, "
        "resources)"
    ]
    config = kserve_manifests.model_config("clip", "tiny")
    config["kserve"]["maxReplica"] = 3
    assert kserve_manifests.kserve_problems("clip", config) == [
        "models/clip/model-config.yaml kserve.maxReplica: unknown key"
    ]
