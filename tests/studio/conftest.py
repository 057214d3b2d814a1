"""Fixtures for the studio's tests: studios (tests/studio_harness.py) on the session's tiny TorchServe
(tests/conftest.py's ``server``; its ``browser`` and ``picture`` too)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server import free_ports
from studio_harness import StudioProcess


@pytest.fixture
def make_studio(tmp_path: Path) -> Iterator[Any]:
    """make_studio(server=..., **limits) -> a started StudioProcess; every one is stopped after the test."""
    started: list[StudioProcess] = []

    def make(
        server: Any = None, name: str = "studio", data_from: StudioProcess | None = None, **limits: Any
    ) -> StudioProcess:
        if server is not None:
            studio = StudioProcess(
                tmp_path / name, server.url("inference"), server.url("management"), server.key_file, **limits
            )
        else:  # a TorchServe that is not there: two free ports nobody listens on
            dead = free_ports(2)
            studio = StudioProcess(
                tmp_path / name, f"http://127.0.0.1:{dead[0]}", f"http://127.0.0.1:{dead[1]}", None, **limits
            )
        if data_from is not None:
            shutil.copytree(data_from.data_dir, studio.data_dir)
        started.append(studio)
        return studio.start()

    yield make
    for studio in started:
        studio.stop()


@pytest.fixture(scope="module")
def recorded(server: Any, tmp_path_factory: Any, picture: bytes) -> Iterator[tuple[StudioProcess, dict[str, Any]]]:
    """A studio that has one finished run (depth, 2 samples, started by ada), shared by a module's tests."""
    studio = StudioProcess(
        tmp_path_factory.mktemp("recorded"), server.url("inference"), server.url("management"), server.key_file
    ).start()
    try:
        run = studio.run_interpret(picture, started_by="ada", priors=["depth"], samples=2)
        assert run["status"] == "done", run
        yield studio, run
    finally:
        studio.stop()
