"""The client's CLI (``python -m client``) run as a user runs it, pointed at a test TorchServe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

from server import REPO, TorchServe


def run_cli(
    server: TorchServe, *args: str, transport: Literal["rest", "grpc"] = "rest", out: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m client`` with ``args`` (a command and its options) against ``server``: its addresses
    and key file, its gRPC ports with ``--grpc`` for the grpc transport, ``--out`` where given. The
    command must succeed (its stderr is the failure's message); its output is returned as text."""
    connection = [
        "--url",
        server.url("inference"),
        "--management-url",
        server.url("management"),
        "--key-file",
        str(server.key_file),
    ]
    if transport == "grpc":
        connection += [
            "--grpc",
            "--grpc-inference-port",
            str(server.ports["grpc_inference"]),
            "--grpc-management-port",
            str(server.ports["grpc_management"]),
        ]
    if out is not None:
        connection += ["--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "client", *connection, *args],
        cwd=REPO,
        # the checkout's client package, whatever PYTHONPATH the test run itself has
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result
