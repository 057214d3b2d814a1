"""Weight builders: one module per model, each writing ``model_store/weights/<profile>/...``.

Every module exposes
- ``build(profile, root)`` for ``tiny`` and ``arch``: the real architecture with random weights,
  saved with the library's own ``save_pretrained`` so handlers load every profile the same way;
- ``PRETRAINED``: ``{directory under root: hub repo id}`` for the ``pretrained`` profile.
"""
from __future__ import annotations

from . import clip

BUILDERS = {"clip": clip}

# Registered as their modules land; order is build order (cheap first).
for _name in ("sd", "sam", "depth", "pose"):
    try:
        BUILDERS[_name] = __import__(f"{__name__}.{_name}", fromlist=[_name])
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_name}":
            raise
