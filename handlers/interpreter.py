"""``interpret``: a picture -> its priors -> new images generated from them, ranked by CLIP.

A light model like ``pipeline`` (no weights): it runs the stage functions of workflows/interpret.py,
which call ``caption``, ``depth``, ``pose``, ``sd`` (with ``control``) and ``clip`` through the
inference API, so interpreter traffic shares each model's batching queue and workers and no second
copy of any weights is loaded. Over REST and gRPC ``Predictions``; with ``"stream": true`` it sends
``{"stage", "result"}`` for the caption, each prior and the scored samples, then the response.
"""

from __future__ import annotations

from handlers.common.light import LightModelHandler
from handlers.model_settings import InterpretSettings
from workflows.interpret import parse_request, run_interpret


class Interpreter(LightModelHandler):
    model_label = "interpret"
    settings: InterpretSettings
    parse_request = staticmethod(parse_request)
    run_request = staticmethod(run_interpret)
