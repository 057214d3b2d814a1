"""BentoML: one service per model with a batchable API, the pipeline a service depending on them.

Every model is a ``@bentoml.service`` (its own worker process, ``workers`` from the plan) whose
``batch`` API is batchable with the plan's batch size; BentoML's adaptive dispatcher decides how
long to wait for a batch (it has no fixed batch delay: ``max_latency_ms`` is a deadline, set to the
model's responseTimeout). ``Gateway``, the entry service, depends on every model service
(``bentoml.depends``) and serves ``/predictions/<model>`` and ``/predictions/pipeline``; its calls
to a dependency go through that model's batching queue, so the pipeline's stage calls and direct
traffic share one copy of the weights. Only the entry service listens on TCP.

    DEPLOY_PLAN=plan.json bentoml serve peer_bentoml:Gateway --host 127.0.0.1 --port N
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import bentoml
import serving

PLAN = serving.read_plan()
MODEL_NAMES = [name for name in PLAN["models"] if name != serving.PIPELINE]


def model_service(name: str) -> Any:
    settings = PLAN["serving"][name]

    class ModelService:
        def __init__(self) -> None:
            self.runner = serving.ModelRunner(name, PLAN["profile"], settings)

        @bentoml.api(
            batchable=True, max_batch_size=settings.batch_size, max_latency_ms=settings.response_timeout_s * 1000
        )
        def batch(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
            # a batchable API answers one HTTP status for the whole batch: each request's own
            # status travels in its item, and the gateway turns it back into that request's status
            return [
                {"status": status, "body": body, "batch_size": len(bodies)} for status, body in self.runner.run(bodies)
            ]

    ModelService.__name__ = ModelService.__qualname__ = f"{name.capitalize()}Service"
    return bentoml.service(name=f"{name}-service", workers=settings.workers)(ModelService)


SERVICES = {name: model_service(name) for name in MODEL_NAMES}
globals().update({service.inner.__name__: service for service in SERVICES.values()})


def _unwrap(item: dict[str, Any], ctx: bentoml.Context) -> dict[str, Any]:
    ctx.response.status_code = item["status"]
    ctx.response.headers["x-batch-size"] = str(item["batch_size"])
    return item["body"]


class GatewayBase:
    """Routes; the dependencies are class attributes named after the models (added below)."""

    def __init__(self) -> None:
        self.loop_token: Any = None
        if serving.PIPELINE in PLAN["models"]:
            self.pipeline_runner = serving.PipelineRunner(PLAN["profile"], self.call)

    def call(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        # run_pipeline calls from its own threads; BentoML's sync dependency client only works in
        # the API's AnyIO worker thread, so these calls go to the service's event loop directly
        batch = getattr(self, model).to_async.batch

        async def bounded() -> list[dict[str, Any]]:
            with anyio.fail_after(timeout):
                return await batch([body])

        try:
            item = anyio.from_thread.run(bounded, token=self.loop_token)[0]
        except TimeoutError:
            raise serving.stage_failure(504, {"message": f"{model} did not answer within {timeout}s"}, model) from None
        if item["status"] != 200:
            raise serving.stage_failure(item["status"], item["body"], model)
        return item["body"]

    def forward(self, model: str, body: dict[str, Any], ctx: bentoml.Context) -> dict[str, Any]:
        return _unwrap(getattr(self, model).batch([body])[0], ctx)


def _route(model: str) -> Any:
    def predict(self, body: dict[str, Any], /, ctx: bentoml.Context) -> dict[str, Any]:
        return self.forward(model, body, ctx)

    predict.__name__ = predict.__qualname__ = f"predict_{model}"
    return bentoml.api(route=f"/predictions/{model}")(predict)


def _pipeline(self, body: dict[str, Any], /, ctx: bentoml.Context) -> dict[str, Any]:
    if self.loop_token is None:  # the service's event loop, seen from this API worker thread
        self.loop_token = anyio.from_thread.run_sync(anyio.lowlevel.current_token)
    status, result = self.pipeline_runner.run(body)
    ctx.response.status_code = status
    return result


_members: dict[str, Any] = {name: bentoml.depends(service) for name, service in SERVICES.items()}
_members.update({f"predict_{name}": _route(name) for name in MODEL_NAMES})
if serving.PIPELINE in PLAN["models"]:
    _pipeline.__name__ = "pipeline"
    _members["pipeline"] = bentoml.api(route="/predictions/pipeline")(_pipeline)
    threads = PLAN["serving"][serving.PIPELINE].batch_size  # requests the pipeline runs at once
else:
    threads = max(PLAN["serving"][name].batch_size for name in MODEL_NAMES) * 4
Gateway = bentoml.service(name="gateway", workers=1, threads=threads)(type("Gateway", (GatewayBase,), _members))
