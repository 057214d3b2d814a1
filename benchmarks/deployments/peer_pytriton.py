"""Triton Inference Server through PyTriton: every model a Triton model with dynamic batching.

PyTriton starts the ``tritonserver`` binary its wheel bundles and binds Python functions as models;
Triton's dynamic batcher collects up to the plan's batch size within its batch delay
(``max_queue_delay_microseconds``), then this process runs the handler on the batch. A request is
one BYTES tensor (the JSON body, as the other stacks receive it); the answer is its status code,
its JSON and the batch size it ran in (a Triton batch has no per-request HTTP status: each request's
status travels as an output tensor). The pipeline is a Triton model too, whose stage calls go to the
models' KServe v2 endpoints on the same server, through their batchers (one copy of the weights).

    DEPLOY_PLAN=plan.json python peer_pytriton.py --http-port N --grpc-port M --metrics-port K
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import requests
import serving
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

INPUTS = [Tensor(name="body", dtype=bytes, shape=(1,))]
OUTPUTS = [
    Tensor(name="status", dtype=np.int32, shape=(1,)),
    Tensor(name="response", dtype=bytes, shape=(1,)),
    Tensor(name="batch_size", dtype=np.int32, shape=(1,)),
]


def _outputs(results: list[tuple[int, dict[str, Any]]]) -> dict[str, np.ndarray]:
    size = len(results)
    return {
        "status": np.array([[status] for status, _ in results], dtype=np.int32),
        "response": np.array([[json.dumps(body).encode()] for _, body in results], dtype=object),
        "batch_size": np.full((size, 1), size, dtype=np.int32),
    }


def model_function(runner: serving.ModelRunner) -> Callable:
    @batch
    def infer(body: np.ndarray) -> dict[str, np.ndarray]:
        return _outputs(runner.run([bytes(row[0]) for row in body]))

    return infer


def pipeline_function(profile: str, http_port: int, threads: int) -> Callable:
    local = threading.local()
    base = f"http://127.0.0.1:{http_port}/v2/models"

    def call(model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        try:
            response = local.session.post(f"{base}/{model}/infer", json=serving.v2_request(body), timeout=timeout)
        except requests.Timeout:
            raise serving.stage_failure(504, {"message": f"{model} did not answer within {timeout}s"}, model) from None
        if response.status_code != 200:  # Triton itself refused (queue full, bad tensor)
            raise serving.stage_failure(502, {"message": response.text[:300]}, model)
        status, result, _ = serving.v2_answer(response.json())
        if status != 200:
            raise serving.stage_failure(status, result, model)
        return result

    runner = serving.PipelineRunner(profile, call)
    pool = ThreadPoolExecutor(max_workers=threads)  # a batch's requests run at once, as in the pipeline model

    @batch
    def infer(body: np.ndarray) -> dict[str, np.ndarray]:
        return _outputs(list(pool.map(runner.run, [bytes(row[0]) for row in body])))

    return infer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args(argv)
    plan = serving.read_plan()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        exit_on_error=True,
    )
    with Triton(config=config) as triton:
        for name in plan["models"]:
            settings = plan["serving"][name]
            if name == serving.PIPELINE:
                functions = [
                    pipeline_function(plan["profile"], args.http_port, settings.batch_size)
                    for _ in range(settings.workers)
                ]
            else:
                functions = [
                    model_function(serving.ModelRunner(name, plan["profile"], settings))
                    for _ in range(settings.workers)
                ]
            triton.bind(
                model_name=name,
                infer_func=functions,
                inputs=INPUTS,
                outputs=OUTPUTS,
                config=ModelConfig(
                    max_batch_size=settings.batch_size,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=settings.max_batch_delay_ms * 1000),
                ),
                strict=False,
            )
            print(f"pytriton: {name} bound", flush=True)
        triton.run()  # starts tritonserver and loads the models; returns once they are ready
        print("READY", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
