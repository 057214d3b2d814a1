"""What the parity tests share: the served models' weights, and the served answers decoded.

The reference side of every parity test loads the SAME weights directory the server loads (the
tiny profile's, as scripts/archive.sh writes it into each model-config.yaml) with the library's own
classes, and runs the library's own pre- and post-processing. Nothing of handlers/ is used on that
side, so a handler that drifts from its library fails here.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import model_config
from PIL import Image


def served_weights(name: str) -> Path:
    """The weights directory the served ``name`` loads (its rendered model-config.yaml)."""
    return Path(model_config(name)["handler"]["weights_dir"])


def handler_settings(name: str) -> dict[str, Any]:
    """The served model's ``handler:`` section (defaults and limits the reference must match)."""
    return model_config(name)["handler"]


def sampling(steps: int, guidance: float, seed: int) -> dict[str, Any]:
    """A diffusers pipeline's keyword arguments for a request's ``steps``, ``guidance_scale`` and
    ``seed``, called the plain way: the seed as a CPU generator, as the handlers seed each image."""
    return {
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "generator": torch.Generator("cpu").manual_seed(seed),
    }


def decode_png_array(text: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return np.asarray(image)


# generated images (sd): worker and test process may run oneDNN with other thread counts, whose float
# sums can round apart by ~1e-6 before the uint8 conversion
MAX_LEVEL_DIFF = 1
MAX_DIFFERING_FRACTION = 0.005


def assert_same_image(served: np.ndarray, reference: np.ndarray) -> None:
    assert served.shape == reference.shape
    diff = np.abs(served.astype(np.int16) - reference.astype(np.int16))
    assert diff.max() <= MAX_LEVEL_DIFF, f"max level difference {diff.max()}"
    assert (diff > 0).mean() <= MAX_DIFFERING_FRACTION, f"{(diff > 0).mean():.2%} of values differ"


def ok(response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()
