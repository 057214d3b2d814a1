"""Tokens on both APIs, loopback-only listeners, registration only from the model store, and a
metrics port that carries no secret."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import urllib.parse
from pathlib import Path

import pytest
import requests
from robustness.tools import good_image, properties

IMAGE = good_image()
LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # a JVM's IPv4 socket shows as ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def token_kinds(server) -> dict[str, str]:
    keys = json.loads(server.key_file.read_text())
    return {"inference": keys["inference"]["key"], "management": keys["management"]["key"], "API": keys["API"]["key"]}


# (kind, method, path, JSON body) of calls each of which needs its API's token
CALLS = [
    ("inference", "GET", "/ping", None),
    ("inference", "POST", "/predictions/clip", {"image": IMAGE}),
    ("inference", "POST", "/predictions/pipeline", {"image": IMAGE}),
    ("inference", "POST", "/wfpredict/pipeline", {"image": IMAGE}),
    ("management", "GET", "/models", None),
    ("management", "GET", "/models/clip", None),
    ("management", "GET", "/workflows", None),
    ("management", "GET", "/workflows/pipeline", None),
    ("management", "PUT", "/models/clip?min_worker=1&max_worker=4&synchronous=true", None),
    ("management", "POST", "/models?url=clip.mar&model_name=robust_token_probe&synchronous=true", None),
    ("management", "DELETE", "/models/robust_token_probe", None),
]


@pytest.mark.parametrize("kind,method,path,body", CALLS, ids=[f"{c[0]}:{c[1]} {c[2].split('?')[0]}" for c in CALLS])
def test_every_call_needs_its_token(server, kind, method, path, body):
    keys = token_kinds(server)
    url = server.url(kind) + path
    wrong = {
        "none": {},
        "empty": {"Authorization": "Bearer "},
        "wrong": {"Authorization": "Bearer not-a-token"},
        "bare token without Bearer": {"Authorization": keys[kind]},
        "the other API's token": {
            "Authorization": f"Bearer {keys['management' if kind == 'inference' else 'inference']}"
        },
        "the API key": {"Authorization": f"Bearer {keys['API']}"},
    }
    for name, headers in wrong.items():
        response = requests.request(method, url, json=body, headers=headers, timeout=60)
        # TorchServe 0.12 refuses a missing or wrong token with 400 InvalidKeyException (not 401)
        assert response.status_code == 400, f"{name}: {response.status_code} {response.text[:200]}"
        assert response.json()["type"] == "InvalidKeyException", f"{name}: {response.text[:200]}"
        assert keys[kind] not in response.text and keys["API"] not in response.text
    if path.startswith("/models?url="):
        return  # the right token registers a model: done once, in the test below
    if path.startswith("/models/robust_token_probe"):
        return
    response = requests.request(method, url, json=body, headers={"Authorization": f"Bearer {keys[kind]}"}, timeout=120)
    assert response.status_code == 200, f"{response.status_code} {response.text[:300]}"


def test_registration_needs_the_management_token_and_works_with_it(server):
    probe = "/models?url=clip.mar&model_name=robust_token_probe&synchronous=true"
    assert server.post("management", probe, token="nope").status_code == 400
    assert server.post("management", probe, token=server.token("inference")).status_code == 400
    names = [m["modelName"] for m in server.get("management", "/models?limit=100").json()["models"]]
    assert "robust_token_probe" not in names
    response = server.post("management", probe, timeout=300)
    try:
        assert response.status_code == 200, response.text
    finally:
        server.request("management", "DELETE", "/models/robust_token_probe", timeout=120)


def test_every_configured_address_is_loopback():
    config = properties()
    addresses = {key: value for key, value in config.items() if key.endswith("_address")}
    assert {"inference_address", "management_address", "metrics_address"} <= set(addresses)
    if config.get("enable_grpc", "true").lower() == "true":
        # TorchServe's gRPC default is 0.0.0.0: the file must name loopback explicitly
        assert {"grpc_inference_address", "grpc_management_address"} <= set(addresses)
    for key, value in addresses.items():
        host = urllib.parse.urlsplit(value).hostname if "://" in value else value
        assert host and is_loopback(host), f"{key}={value} is not loopback"
        if "://" in value:
            assert urllib.parse.urlsplit(value).scheme in ("http", "https"), value
    assert config.get("disable_token_authorization", "false").lower() == "false"


def listening_sockets() -> dict[int, set[str]]:
    """port -> local addresses of every listening TCP socket on this host (/proc/net/tcp{,6})."""
    found: dict[int, set[str]] = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)
            if family == socket.AF_INET:
                raw = raw[::-1]
            else:  # four little-endian 32-bit words
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
            found.setdefault(int(port_hex, 16), set()).add(socket.inet_ntop(family, raw))
    return found


def test_the_running_server_listens_on_loopback_only(server):
    """The session's server runs the repo's config.properties (only its ports changed): each of its
    five listeners (REST x3, gRPC x2) is bound to a loopback address and nothing else."""
    sockets = listening_sockets()
    for name, port in server.ports.items():
        assert port in sockets, f"{name} port {port} is not listening"
        addresses = sockets[port]
        assert all(is_loopback(a) for a in addresses), f"{name} port {port} listens on {addresses}"


def test_registration_from_outside_the_model_store_is_refused(server, tmp_path):
    """allowed_urls: no URL (remote or file://) is accepted, so only archives already in the model
    store (registered by file name) can be served. Refusals happen before any download."""
    store = server.model_store
    outside = tmp_path / "outside"
    lookalike = tmp_path / "elsewhere" / "model_store"  # a directory that is merely NAMED model_store
    for directory in (outside, lookalike):
        directory.mkdir(parents=True)
        shutil.copy(store / "clip.mar", directory / "robust_outside.mar")
        shutil.copy(store / "pipeline.war", directory / "robust_outside.war")
    before = sorted(m["modelName"] for m in server.get("management", "/models?limit=100").json()["models"])
    store_before = sorted(p.name for p in store.iterdir())
    attempts = [
        ("models", "https://example.com/x.mar"),
        ("models", "http://127.0.0.1:9/x.mar"),
        ("models", "s3://bucket/x.mar"),
        ("models", f"file://{outside}/robust_outside.mar"),
        ("models", f"file://{lookalike}/robust_outside.mar"),
        ("models", f"file://{store}/clip.mar"),
        ("models", "../outside/robust_outside.mar"),
        ("models", f"{outside}/robust_outside.mar"),
        ("workflows", "https://example.com/x.war"),
        ("workflows", f"file://{outside}/robust_outside.war"),
        ("workflows", f"file://{lookalike}/robust_outside.war"),
    ]
    accepted = []
    for api, url in attempts:
        query = (
            f"/{api}?url={urllib.parse.quote(url, safe='')}&{'model_name' if api == 'models' else 'workflow_name'}"
            f"=robust_outside&synchronous=true"
        )
        response = server.post("management", query, timeout=120)
        print(f"  {api} {url}: {response.status_code} {response.json().get('message', '')[:100]}")
        if response.status_code < 400:
            accepted.append((api, url, response.text))
            server.request("management", "DELETE", f"/{api}/robust_outside", timeout=120)
        else:
            assert response.status_code in (400, 403, 404, 500), response.text  # refused, never registered
    assert not accepted, f"registered from outside the model store: {accepted}"
    after = sorted(m["modelName"] for m in server.get("management", "/models?limit=100").json()["models"])
    assert after == before
    assert sorted(p.name for p in store.iterdir()) == store_before, "something was copied into the store"


def test_metrics_port_needs_no_token_and_carries_no_secret(server):
    # make sure there are metrics to read: traffic on a few models
    assert server.predict("clip", {"image": IMAGE}).status_code == 200
    assert server.predict("sam", {"image": IMAGE, "roi": [[0, 0, 10, 10]]}).status_code == 200
    keys = token_kinds(server)
    secrets = set(keys.values()) | {json.dumps(json.loads(server.key_file.read_text()))}
    texts = []
    for path in ("/metrics", "/metrics?name[]=ts_inference_requests_total", "/"):
        response = requests.get(server.url("metrics") + path, timeout=60)
        texts.append(response.text)
        if path == "/metrics":
            assert response.status_code == 200 and "ts_inference_requests_total" in response.text, response.text[:300]
    for text in texts:
        for secret in secrets:
            assert secret not in text, "a token appears on the metrics port"
    assert "key_file" not in "".join(texts)
