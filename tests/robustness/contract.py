"""docs/openapi.yaml read for the tests: its request schemas, and its limits bound to the yaml files.

A limit keyword in the document carries its source beside it in ``x-limits``:

- ``<model>.<key>``: ``handler.limits.<key>`` of models/<model>/model-config.yaml;
- a list of those: the smallest of them (the request passes through each of those models);
- ``<module>:<NAME>``: a Python constant (a number, or a collection: its length).

tests/test_openapi.py checks that every annotated value equals its source; the fuzz test resolves
the same annotations against its own, smaller limits (:func:`with_limits`), so the document drives
both and no limit is written a second time.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
OPENAPI = REPO / "docs" / "openapi.yaml"
MODELS_DIR = REPO / "models"

# JSON Schema keywords that bound a value (and the document's own x- ones for what JSON Schema cannot say)
LIMIT_KEYWORDS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "multipleOf",
    "x-max-image-side",
    "x-max-image-pixels",
    "x-max-pixels",
    "x-max-response-bytes",
    "x-max-detected",
)

Limits = Mapping[str, Mapping[str, Any]]  # model -> handler.limits


def load_document(path: Path = OPENAPI) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def model_names() -> list[str]:
    return sorted(p.parent.name for p in MODELS_DIR.glob("*/model-config.yaml"))


def yaml_limits(model: str) -> dict[str, Any]:
    """``handler.limits`` of models/<model>/model-config.yaml (the one place limits are read from)."""
    config = yaml.safe_load((MODELS_DIR / model / "model-config.yaml").read_text())
    return dict((config.get("handler") or {}).get("limits") or {})


def all_yaml_limits() -> dict[str, dict[str, Any]]:
    return {name: yaml_limits(name) for name in model_names()}


def python_constant(source: str) -> Any:
    module, _, name = source.partition(":")
    return getattr(importlib.import_module(module), name)


def source_value(source: str | list[str], limits: Limits) -> Any:
    """The value an ``x-limits`` source names, given every model's limits."""
    if isinstance(source, list):
        return min(source_value(item, limits) for item in source)
    if ":" in source:
        value = python_constant(source)
        return value if isinstance(value, (int, float)) else len(value)
    model, _, key = source.partition(".")
    if model not in limits:
        raise KeyError(f"{source}: no models/{model}/model-config.yaml")
    if key not in limits[model]:
        raise KeyError(f"{source}: models/{model}/model-config.yaml has no handler.limits.{key}")
    return limits[model][key]


def yaml_sources(source: str | list[str]) -> list[tuple[str, str]]:
    """The (model, key) pairs an ``x-limits`` source reads from the yaml files."""
    items = source if isinstance(source, list) else [source]
    return [tuple(item.split(".", 1)) for item in items if ":" not in item]  # type: ignore[misc]


def nodes(node: Any, pointer: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mapping in the document with its JSON pointer, depth first."""
    if isinstance(node, dict):
        yield pointer, node
        for key, value in node.items():
            yield from nodes(value, f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from nodes(value, f"{pointer}/{i}")


def resolve(document: Mapping[str, Any], ref: str) -> Any:
    """The node a local ``$ref`` (``#/components/...``) points at; KeyError when it points nowhere."""
    if not ref.startswith("#/"):
        raise KeyError(f"{ref}: only local references are used")
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def deref(document: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """A schema with its ``$ref`` merged in (JSON Schema 2020-12: siblings of ``$ref`` apply too)."""
    merged: dict[str, Any] = {}
    seen = set()
    while "$ref" in schema:
        ref = schema["$ref"]
        if ref in seen:
            raise ValueError(f"{ref}: a reference cycle")
        seen.add(ref)
        merged = {**{k: v for k, v in schema.items() if k != "$ref"}, **merged}
        schema = resolve(document, ref)
    return {**schema, **merged}


def with_limits(document: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """A copy of the document whose annotated limits are the values of ``limits`` (e.g. a fuzz server's)."""
    resolved = copy.deepcopy(dict(document))
    for _, node in nodes(resolved):
        for keyword, source in (node.get("x-limits") or {}).items():
            node[keyword] = source_value(source, limits)
    return resolved


def json_request_schemas(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """POST path -> its JSON request body schema (dereferenced once)."""
    schemas = {}
    for path, item in document["paths"].items():
        content = item["post"]["requestBody"]["content"]
        schemas[path] = deref(document, content["application/json"]["schema"])
    return schemas


def property_schema(document: Mapping[str, Any], request: Mapping[str, Any], field: str) -> dict[str, Any]:
    return deref(document, request["properties"][field])
