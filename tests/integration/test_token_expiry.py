"""A server whose tokens expire after one minute keeps answering: holders re-read and rotate."""

import subprocess
import time

import pytest
from harness import REPO, png_b64, sample_image
from server import TorchServe

from client import Client, GrpcClient


@pytest.fixture(scope="module")
def expiring_server(model_store, tmp_path_factory):
    ts = TorchServe(
        tmp_path_factory.mktemp("expiring"), model_store, config_overrides={"token_expiration_min": "1"}
    ).start()
    try:
        for name in ("clip", "sam", "pipeline"):
            ts.register(name)
        yield ts
    finally:
        ts.stop()


def test_clients_scripts_and_pipeline_survive_token_expiry(expiring_server):
    ts = expiring_server
    client = Client(ts.url("inference"), ts.url("management"), key_file=ts.key_file)
    image = png_b64(sample_image())
    assert client.concepts(image, texts=["a", "b"])["concepts"] == ["a", "b"]
    assert client.pipeline(image=image)["basic_segmentation"]["masks"]
    grpc = GrpcClient(
        inference_port=ts.ports["grpc_inference"],
        management_port=ts.ports["grpc_management"],
        key_file=ts.key_file,
        management_url=ts.url("management"),
    )
    assert grpc.concepts(image, texts=["a", "b"])["concepts"] == ["a", "b"]
    first = ts.token("inference")

    time.sleep(65)  # past token_expiration_min=1
    stale = ts.predict("clip", {"image": image}, token=first)
    assert stale.status_code == 400 and stale.json()["type"] == "InvalidKeyException"

    # the client re-reads the key file, finds the same (expired) token, rotates it with the API key
    assert client.concepts(image, texts=["a", "b"])["concepts"] == ["a", "b"]
    assert ts.token("inference") != first
    # a gRPC client that cached the expired token re-reads the key file and goes on
    assert grpc.concepts(image, texts=["a", "b"])["concepts"] == ["a", "b"]
    # the pipeline worker still holds the old token for its calls to clip and sam: it re-reads
    assert client.pipeline(image=image)["basic_segmentation"]["masks"]
    # the operator scripts rotate the (also expired) management token and go on
    env = {
        "TS_CONFIG": str(ts.config_path),
        "TS_KEY_FILE": str(ts.key_file),
        "TS_RUN_DIR": str(ts.run_dir),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [str(REPO / "scripts" / "scale.sh"), "clip", "1", "2"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "clip: " in result.stdout
