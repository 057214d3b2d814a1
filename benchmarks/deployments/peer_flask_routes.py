"""The Flask peer of benchmarks/peer_flask.py, with a ``/predictions/<model>`` route beside its ``/pipeline``.

peer_flask.py is reused as it is (its model loading and its app); this adds the per-model route
the comparison's model-alone figures need, and reads the profile, models and threads from the
comparison's plan (``DEPLOY_PLAN``). Flask has no batching: every call is a batch of one. The
route takes its own lock per model; the benchmark never sends model traffic and pipeline traffic
to it at the same time (the app's own per-model locks are private to peer_flask.make_app).

    DEPLOY_PLAN=plan.json python peer_flask_routes.py --port N
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

import peer_flask
import serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    plan = serving.read_plan()
    models = tuple(name for name in plan["models"] if name != serving.PIPELINE)
    threads = {plan["serving"][name].torch_threads for name in models}
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    handlers = peer_flask.load_models(plan["profile"], models)
    app = peer_flask.make_app(handlers, plan["profile"], threads.pop() if len(threads) == 1 else None)

    from flask import Response, request
    from harness import run_batch

    locks = {name: threading.Lock() for name in handlers}

    @app.post("/predictions/<model>")
    def predict(model: str) -> Response:
        import json

        import torch

        if model not in handlers:
            return Response(
                json.dumps({"code": 404, "type": "ModelNotFound", "message": f"model: {model}"}),
                status=404,
                mimetype="application/json",
            )
        with locks[model]:
            torch.set_num_threads(plan["serving"][model].torch_threads)
            status, result = run_batch(handlers[model], [request.get_data()])[0]
        return Response(json.dumps(result), status=status, mimetype="application/json", headers={"x-batch-size": "1"})

    print(f"flask: serving on 127.0.0.1:{args.port}", flush=True)
    app.run(host="127.0.0.1", port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
