"""Weight builders: one module per model with weights, named as the model, each writing
``model_store/weights/<profile>/...``.

Every module exposes
- ``build(profile, root)`` for ``tiny`` and ``arch``: the real architecture with random weights,
  saved with the library's own ``save_pretrained`` so handlers load every profile the same way;
- ``PRETRAINED``: ``{directory under root: hub repo id}`` for the ``pretrained`` profile.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from served_models import weighted_models  # scripts/served_models.py: the one list of models

BUILDERS: dict[str, ModuleType] = {name: import_module(f"{__name__}.{name}") for name in weighted_models()}
