"""Ray Serve: one deployment per model with ``@serve.batch``, the pipeline a deployment calling their handles.

Each model is its own Serve application at ``/predictions/<name>`` (one replica per ``workers``),
whose ``@serve.batch`` queue is sized from the plan (serving.py: batch size and batch delay of
models/<name>/model-config.yaml). The pipeline application at ``/predictions/pipeline`` holds a
``DeploymentHandle`` to each model deployment: its stage calls go through the same batching queues
as direct traffic and no weights are loaded twice. A local Ray instance on 127.0.0.1, started and
stopped with this process (``python peer_ray.py --port N``; ``DEPLOY_PLAN`` names the plan).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
import serving
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

QUEUE = 100  # requests a replica accepts at once (TorchServe's default job_queue_size)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=QUEUE)
class Model:
    def __init__(self, name: str) -> None:
        plan = serving.read_plan()
        settings = plan["serving"][name]
        self.runner = serving.ModelRunner(name, plan["profile"], settings)
        self.batched.set_max_batch_size(settings.batch_size)
        self.batched.set_batch_wait_timeout_s(settings.max_batch_delay_ms / 1000)
        self.pool = ThreadPoolExecutor(max_workers=1)  # one batch at a time, off the replica's event loop

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)  # sized from the plan in __init__
    async def batched(self, bodies: list[Any]) -> list[tuple[int, dict[str, Any], int]]:
        results = await asyncio.get_running_loop().run_in_executor(self.pool, self.runner.run, bodies)
        return [(status, body, len(bodies)) for status, body in results]

    async def predict(self, body: Any) -> tuple[int, dict[str, Any]]:
        """What the pipeline's handle calls."""
        status, result, _ = await self.batched(body)
        return status, result

    async def __call__(self, request: Request) -> JSONResponse:
        status, body, size = await self.batched(await request.body())
        return JSONResponse(body, status_code=status, headers={"x-batch-size": str(size)})


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=QUEUE)
class Pipeline:
    def __init__(self, models: list[str]) -> None:
        plan = serving.read_plan()
        self.handles = {name: serve.get_deployment_handle("Model", app_name=name) for name in models}
        self.runner = serving.PipelineRunner(plan["profile"], self.call)
        # one thread per request in flight, as the pipeline model's worker runs a batch's requests
        self.pool = ThreadPoolExecutor(max_workers=plan["serving"][serving.PIPELINE].batch_size)

    def call(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        # a blocking handle call from a pool thread (not the replica's event loop)
        status, result = self.handles[model].predict.remote(body).result(timeout_s=timeout)
        if status != 200:
            raise serving.stage_failure(status, result, model)
        return result

    async def __call__(self, request: Request) -> JSONResponse:
        body = await request.body()
        status, result = await asyncio.get_running_loop().run_in_executor(self.pool, self.runner.run, body)
        return JSONResponse(result, status_code=status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True, help="Ray's Prometheus endpoint")
    args = parser.parse_args(argv)
    plan = serving.read_plan()
    ray.init(
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
        _metrics_export_port=args.metrics_port,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    models = [m for m in plan["models"] if m != serving.PIPELINE]
    for name in models:
        workers = plan["serving"][name].workers
        serve.run(Model.options(num_replicas=workers).bind(name), name=name, route_prefix=f"/predictions/{name}")
        print(f"ray: {name} ready", flush=True)
    if serving.PIPELINE in plan["models"]:
        workers = plan["serving"][serving.PIPELINE].workers
        serve.run(
            Pipeline.options(num_replicas=workers).bind(models),
            name=serving.PIPELINE,
            route_prefix="/predictions/pipeline",
        )
        print("ray: pipeline ready", flush=True)
    print("READY", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
