"""The session's real TorchServe (fixtures `model_store` and `server`) lives in tests/conftest.py,
shared with tests/robustness so a full run starts one server.

Here: the project's clients pointed at it, one of each per module (module scope: a module's tests
share one connection, as they did when each module made its own)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from harness import REPO

from client import Client

if TYPE_CHECKING:
    from client.grpc_client import GrpcClient


@pytest.fixture(scope="module")
def rest(server) -> Client:
    return Client(server.url("inference"), server.url("management"), key_file=server.key_file)


@pytest.fixture(scope="module")
def grpc_client_class() -> type[GrpcClient]:
    """``client.GrpcClient``, its stubs generated first if missing (``make setup`` generates them; a
    bare ``pytest`` run may not have)."""
    if not (REPO / "client" / "stubs" / "inference_pb2_grpc.py").exists():
        subprocess.run([str(REPO / "scripts" / "gen_grpc_stubs.sh")], check=True, timeout=120)
    from client import GrpcClient  # imports the stubs: only once they exist

    return GrpcClient


@pytest.fixture(scope="module")
def grpc_client(server, grpc_client_class: type[GrpcClient]) -> Iterator[GrpcClient]:
    client = grpc_client_class(
        inference_port=server.ports["grpc_inference"],
        management_port=server.ports["grpc_management"],
        key_file=server.key_file,
        management_url=server.url("management"),
    )
    yield client
    client.close()
