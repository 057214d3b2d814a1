"""The peer baseline: the seed project's design, rebuilt from this project's own code.

One Flask process holds every model (loaded through the same handler classes TorchServe runs, with
the same model-config.yaml rendered for the same profile) and answers ``POST /pipeline`` by calling
the models one after another: generate -> CLIP on the image -> SAM -> CLIP on each region ->
priors. Each model runs one request at a time (a lock per model: a handler is not re-entrant), with
no batching across requests; Flask's threaded server lets requests overlap between models, as the
seed's ``app.run()`` did. The stage functions and the response shape are the deployment's own
(workflows/stages.py), so only the serving design differs.

Run by benchmarks/pipeline_bench.py: ``python benchmarks/peer_flask.py --profile tiny --port N``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO, REPO / "tests", REPO / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from served_models import weighted_models  # noqa: E402  (scripts/served_models.py: the one model list)

MODELS = tuple(weighted_models())


def handler_class(module_name: str) -> type:
    from handlers.common import BatchHandler

    module = importlib.import_module(f"handlers.{module_name}")
    classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, BatchHandler)
        and v is not BatchHandler
        and v.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise RuntimeError(f"handlers/{module_name}.py: expected one BatchHandler subclass, found {classes}")
    return classes[0]


def load_models(profile: str, models: tuple[str, ...]) -> dict[str, Any]:
    from harness import make_context, model_config

    handlers = {}
    for name in models:
        started = time.perf_counter()
        config = model_config(name, profile)
        handler = handler_class(config["handler"]["module"])()
        handler.initialize(make_context(name, config, batch_size=1))
        handlers[name] = handler
        print(f"peer: {name} ({profile}) loaded in {time.perf_counter() - started:.1f}s", flush=True)
    return handlers


def make_app(handlers: dict[str, Any], profile: str, threads: int | None = None):
    import torch
    from flask import Flask, jsonify, request
    from harness import model_config, run_batch

    from handlers.common import InputError, ServerError, load_settings
    from handlers.model_settings import PipelineSettings
    from workflows.stages import (
        StageFailure,
        Stages,
        _assemble,
        _describe_regions,
        generate,
        parse_request,
    )

    # the pipeline model's limits and stage timeouts, as the deployment uses them
    settings = load_settings(PipelineSettings, model_config("pipeline", profile)["handler"])
    locks = {name: threading.Lock() for name in handlers}

    def call(model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        with locks[model]:
            if threads:
                # intra-op threads are per calling thread: set them in the request's own thread, as
                # a TorchServe worker's handler.torch_threads sets them in the worker's
                torch.set_num_threads(threads)
            status, result = run_batch(handlers[model], [body])[0]
        if status != 200:
            raise StageFailure(status, result.get("message") or f"HTTP {status}")
        return result

    app = Flask("peer")

    @app.get("/health")
    def health():
        return jsonify(status="Healthy", models=sorted(handlers))

    @app.post("/pipeline")
    def pipeline():
        try:
            payload = request.get_json(force=True)
            if not isinstance(payload, dict):
                raise InputError("body", "expected a JSON object")
            req = parse_request(payload, settings)
            stage = Stages(call, settings)
            # in sequence: no stage overlaps another within a request
            image, generated = generate(req, stage)
            texts = {"texts": req.texts} if req.texts else {}
            clip = stage("concepts", "clip", {"image": image, **texts})
            masks = stage("segment", "sam", {"image": image, **({"roi": req.roi} if req.roi else {})})
            regions = _describe_regions(stage, image, masks, texts)
            priors = {name: stage(name, name, {"image": image}) for name in req.priors}
            response = _assemble(req, generated, image, clip, masks, regions, priors)
            response["timings"] = dict(stage.timings)
            return jsonify({"request_id": "peer", **response})
        except (InputError, ServerError) as error:
            return jsonify(error.body()), error.code

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per model call (default: torch's)")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per request
    handlers = load_models(args.profile, tuple(args.models))
    app = make_app(handlers, args.profile, args.threads)
    print(f"peer: serving on 127.0.0.1:{args.port}", flush=True)
    app.run(host="127.0.0.1", port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
