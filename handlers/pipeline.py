"""``pipeline``: the workflow's stages served as a model, with the three things the engine lacks.

TorchServe 0.12's workflow engine drops a node's status code, has no gRPC, and forwards only the
first chunk of a stream. This light model (no weights) runs the same stage functions and answers
a bad request with a real 4xx, works over gRPC ``Predictions``, and with ``"stream": true`` sends
each stage's result as it finishes. The five models are called through the inference API, so
pipeline traffic shares their batching queues and workers.
"""

from __future__ import annotations

from handlers.common.light import LightModelHandler
from handlers.model_settings import PipelineSettings
from workflows.stages import parse_request, run_pipeline


class Pipeline(LightModelHandler):
    model_label = "pipeline"
    settings: PipelineSettings
    parse_request = staticmethod(parse_request)
    run_request = staticmethod(run_pipeline)
