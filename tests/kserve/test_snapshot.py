"""A KServe pod's TorchServe comes up from its generated config.properties alone.

TorchServe 0.12 forgets workflows at restart and KServe restarts pods at will, so nothing may depend
on a registration script: the generated config names the model in ``model_snapshot`` (workers,
batching, timeouts from its yaml). TorchServe is started as KServe's runtime starts it (``torchserve
--start --model-store=<layout>/model-store --ts-config=<layout>/config/config.properties``, no
``--ncs``; in the foreground here so the test owns it), with ``TS_SERVICE_ENVELOPE=kserve`` and
loopback ports through ``TS_*`` variables, from the unmodified generated config; nothing is
registered. Every pod start, first or after a restart, is this start: a container starts afresh.
"""

from __future__ import annotations

import yaml
from conftest import REPO, kserve_env
from harness import png_b64, sample_image
from server import TorchServe
from test_envelopes import wait_until_ready

from handlers.common.envelopes import V1


def test_a_pod_comes_up_with_its_model_registered_from_the_config_alone(local_layouts, tmp_path):
    layout = local_layouts / "storage" / "clip"
    config = yaml.safe_load((REPO / "models" / "clip" / "model-config.yaml").read_text())
    ts = TorchServe(
        tmp_path / "pod",
        layout / "model-store",
        config_text=(layout / "config" / "config.properties").read_text(),
        snapshots=True,
    )
    ts.env.update(kserve_env(ts.ports, V1))
    ts.start()
    try:
        wait_until_ready(ts, ("clip",))
        models = ts.get("management", "/models").json()["models"]
        assert [m["modelName"] for m in models] == ["clip"]
        described = ts.describe("clip")
        for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay"):
            assert described[key] == config[key], key
        assert len([w for w in described["workers"] if w["status"] == "READY"]) == config["minWorkers"]
        answer = ts.post(
            "inference",
            "/v1/models/clip:predict",
            json={"instances": [{"image": png_b64(sample_image()), "texts": ["cat", "dog"]}]},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["concepts"] == ["cat", "dog"]
        # the pod's model set is its snapshot: management (on loopback) registers nothing
        refused = ts.post("management", "/models?url=clip.mar")
        assert refused.status_code >= 400, refused.text
    finally:
        ts.stop()
