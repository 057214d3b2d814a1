"""docs/openapi.yaml stays true: valid OpenAPI 3.1, one endpoint per model, request fields equal to the
parsers' accepted fields, and every limit equal to models/<name>/model-config.yaml.

Adding a model or a field needs no change here: give the request schema `x-fields: <module>:<NAME>`
(the handler's accepted-fields tuple), put `x-limits: {<keyword>: <model>.<limits key>}` beside each
yaml-bound limit, and add the /predictions/<model> path (docs/openapi.yaml's header says how).
A model whose yaml has a limits key the document never names fails here until the document says it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from robustness.contract import (
    LIMIT_KEYWORDS,
    all_yaml_limits,
    deref,
    json_request_schemas,
    load_document,
    model_names,
    nodes,
    python_constant,
    resolve,
    source_value,
    yaml_sources,
)

# Limits that need no x-limits source: they say what a value is, not how much of it is allowed.
# (keyword, value): non-empty strings and lists, non-negative numbers, sd's positive step count,
# and sd's sides being multiples of 8 (the VAE's scale factor; handlers/text_to_image.py); fractions
# at most 1 (sd's control start and end); and fixed-length tuples (minItems == maxItems: a box's 4 numbers).
STRUCTURAL = {("minItems", 1), ("minLength", 1), ("minimum", 0), ("minimum", 1), ("multipleOf", 8), ("maximum", 1)}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return load_document()


def test_document_is_valid_openapi_3_1_and_every_reference_resolves(document):
    assert document["openapi"].startswith("3.1")
    validate(document)  # openapi-spec-validator: the 3.1 meta-schema, JSON Schema 2020-12 schemas
    unresolved = []
    for pointer, node in nodes(document):
        if isinstance(node.get("$ref"), str):
            try:
                resolve(document, node["$ref"])
            except (KeyError, IndexError, ValueError) as exc:
                unresolved.append(f"{pointer}: {exc}")
    assert not unresolved, "\n".join(unresolved)


def test_every_model_has_an_endpoint_and_the_workflow_too(document):
    predictions = {path.removeprefix("/predictions/") for path in document["paths"] if path.startswith("/predictions/")}
    assert predictions == set(model_names()), "every models/<name>/ is served at /predictions/<name>"
    assert "/wfpredict/pipeline" in document["paths"]
    for path, item in document["paths"].items():
        assert set(item) == {"post"}, f"{path}: only POST is served"
        responses = item["post"]["responses"]
        assert {"200", "400", "404", "413"} <= set(responses), f"{path}: {sorted(responses)}"
        for code, response in responses.items():
            schema = deref(document, response)["content"]["application/json"]["schema"]
            if code != "200":
                assert schema == {"$ref": "#/components/schemas/Error"}, f"{path} {code}: the error body"


def test_request_properties_are_the_parsers_accepted_fields(document):
    for path, schema in json_request_schemas(document).items():
        fields = python_constant(schema["x-fields"])
        assert len(set(fields)) == len(fields), f"{schema['x-fields']} repeats a field"
        assert sorted(schema["properties"]) == sorted(fields), (
            f"{path}: the schema's properties {sorted(schema['properties'])} are not "
            f"{schema['x-fields']} {sorted(fields)}"
        )
        assert schema["additionalProperties"] is False, f"{path}: unknown fields are refused"
        assert set(schema.get("required", [])) <= set(fields)


def test_analyzers_take_a_raw_image_body_too(document):
    raw = {"image/png", "image/jpeg", "application/octet-stream"}
    for model in ("clip", "sam", "depth", "pose"):
        content = document["paths"][f"/predictions/{model}"]["post"]["requestBody"]["content"]
        assert raw <= set(content), model
        for media in raw:
            assert deref(document, content[media]["schema"])["format"] == "binary"
    for path in ("/predictions/sd", "/predictions/pipeline", "/wfpredict/pipeline"):
        assert set(document["paths"][path]["post"]["requestBody"]["content"]) == {"application/json"}, path


def test_bearer_token_security_and_the_error_body(document):
    schemes = document["components"]["securitySchemes"]
    assert document["security"] == [{name: []} for name in schemes]
    assert [(s["type"], s["scheme"]) for s in schemes.values()] == [("http", "bearer")]
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "type", "message"]


def limit_mismatches(document: dict[str, Any], limits: dict[str, dict[str, Any]]) -> list[str]:
    """Every annotated limit whose value is not its source's (the yaml or the code)."""
    problems = []
    for pointer, node in nodes(document):
        for keyword, source in (node.get("x-limits") or {}).items():
            if keyword not in LIMIT_KEYWORDS:
                problems.append(f"{pointer}: x-limits names {keyword!r}, not a limit keyword")
                continue
            if keyword not in node:
                problems.append(f"{pointer}: x-limits has {keyword} but the schema does not")
                continue
            try:
                expected = source_value(source, limits)
            except KeyError as exc:
                problems.append(f"{pointer}: {exc.args[0]}")
                continue
            if node[keyword] != expected or type(node[keyword]) is bool:
                problems.append(f"{pointer}: {keyword} is {node[keyword]!r}, but {source} is {expected!r}")
    return problems


def test_every_limit_equals_its_yaml_or_code_source(document):
    problems = limit_mismatches(document, all_yaml_limits())
    assert not problems, "\n".join(problems)


def test_a_yaml_change_without_a_document_change_fails(document):
    # the check above reads the yaml files; with one value changed it must report that very limit
    limits = all_yaml_limits()
    changed = copy.deepcopy(limits)
    changed["sd"]["max_steps"] += 1
    changed["clip"]["max_texts"] += 1
    problems = limit_mismatches(document, changed)
    assert any("/SdRequest/properties/steps" in p and "sd.max_steps" in p for p in problems), problems
    # the pipeline's texts pass through clip too: the smaller of the two stays the limit
    assert any("/ClipRequest/properties/texts" in p for p in problems), problems
    changed["pipeline"]["max_texts"] = 0
    assert any("/PipelineRequest/properties/texts" in p for p in limit_mismatches(document, changed))


def test_every_yaml_limit_is_named_in_the_document(document):
    named = {
        pair
        for _, node in nodes(document)
        for source in (node.get("x-limits") or {}).values()
        for pair in yaml_sources(source)
    }
    missing = [
        f"models/{model}/model-config.yaml handler.limits.{key}"
        for model, keys in all_yaml_limits().items()
        for key in keys
        if (model, key) not in named
    ]
    assert not missing, "not in docs/openapi.yaml (add it with an x-limits source):\n" + "\n".join(missing)


def test_unannotated_limits_are_structural(document):
    problems = []
    for pointer, node in nodes(document["components"]["schemas"], "#/components/schemas"):
        if pointer.endswith(("/x-limits", "/properties")):  # maps of names, not schemas
            continue
        annotated = set(node.get("x-limits") or {})
        # a fixed-length tuple ([x1, y1, x2, y2]) is minItems == maxItems (not prefixItems + items: false,
        # which openapi-python-client 0.29 cannot read)
        tuple_length = node.get("minItems") if node.get("minItems") == node.get("maxItems") else None
        for keyword in LIMIT_KEYWORDS:
            if keyword not in node or keyword in annotated:
                continue
            value = node[keyword]
            if keyword in ("minItems", "maxItems") and value == tuple_length and "minItems" not in annotated:
                continue
            if (keyword, value) not in STRUCTURAL:
                problems.append(f"{pointer}: {keyword}: {value} has no x-limits source")
    assert not problems, "\n".join(problems)


def test_enums_equal_the_code(document):
    checked = 0
    for pointer, node in nodes(document):
        if "x-enum" in node:
            assert sorted(node["enum"]) == sorted(python_constant(node["x-enum"])), pointer
            checked += 1
    assert checked >= 2  # sd's schedulers, the pipeline's priors


def validator(document: dict[str, Any], schema_name: str) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator for one component schema (its local $refs resolve in the document)."""
    registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(document))
    return Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{schema_name}"}, registry=registry)


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


@pytest.mark.parametrize(
    "schema, body, valid",
    [
        ("SdRequest", {"prompt": "a red bicycle", "seed": 7}, True),
        (
            "SdRequest",
            {
                "prompt": ["a", "b"],
                "negative_prompt": ["x", "y"],
                "width": 64,
                "height": 128,
                "steps": 2,
                "guidance_scale": 7.5,
                "scheduler": "dpm++",
                "stream": True,
            },
            True,
        ),
        ("SdRequest", {"promt": "a"}, False),
        ("SdRequest", {"prompt": "a", "steps": 51}, False),
        ("SdRequest", {"prompt": "a", "width": 100}, False),
        ("SdRequest", {"prompt": "a", "seed": 2**32}, False),
        ("SdRequest", {"prompt": "a", "scheduler": "warp"}, False),
        ("SdRequest", {"prompt": ""}, False),
        ("ClipRequest", {"image": PNG, "texts": ["a cat"], "roi": [[0, 0, 1, 1]]}, True),
        ("ClipRequest", {"image": PNG, "roi": [[0, 0, 1]]}, False),
        ("ClipRequest", {"image": PNG, "texts": []}, False),
        ("SamRequest", {"image": PNG, "points": [[0, 0]], "point_labels": [0]}, True),
        ("SamRequest", {"image": PNG, "point_labels": [1]}, False),
        ("SamRequest", {"image": PNG, "points": [[0, 0]], "point_labels": [2]}, False),
        ("DepthRequest", {"image": PNG}, True),
        ("DepthRequest", {"image": PNG, "roi": [[0, 0, 1, 1]]}, False),
        ("PoseRequest", {"image": PNG, "roi": [[0, 0, 1, 1]]}, True),
        ("PipelineRequest", {"prompt": "a red bicycle", "priors": ["depth", "pose"], "steps": 2}, True),
        ("PipelineRequest", {"image": PNG, "texts": ["cat", "dog"]}, True),
        ("PipelineRequest", {}, False),
        ("PipelineRequest", {"prompt": "a", "image": PNG}, False),
        ("PipelineRequest", {"image": PNG, "steps": 10}, False),
        ("PipelineRequest", {"image": PNG, "priors": ["normals"]}, False),
        ("ClipRequest", {"images": [PNG, PNG], "texts": ["a cat"], "reference_image": PNG}, True),
        ("ClipRequest", {"images": [PNG], "image": PNG}, False),
        ("ClipRequest", {"images": [PNG], "roi": [[0, 0, 1, 1]]}, False),
        ("ClipRequest", {"image": PNG, "reference_image": PNG}, False),
        ("ClipRequest", {"images": []}, False),
        (
            "InterpretRequest",
            {
                "image": PNG,
                "priors": ["depth", "canny"],
                "mode": "combined",
                "samples": 2,
                "scales": {"depth": 0.5},
                "prior_images": {"canny": PNG},
                "caption": "a cat",
                "seed": 1,
                "steps": 2,
                "stream": True,
            },
            True,
        ),
        ("InterpretRequest", {"image": PNG, "priors": ["normals"]}, False),
        ("InterpretRequest", {"image": PNG, "priors": ["depth", "depth"]}, False),
        ("InterpretRequest", {"image": PNG, "samples": 5}, False),
        ("InterpretRequest", {"image": PNG, "mode": "all"}, False),
        ("InterpretRequest", {"image": PNG, "scales": {"normals": 1}}, False),
        ("InterpretRequest", {"image": PNG, "prompt": "a cat"}, False),
        ("InterpretRequest", {"caption": "a cat"}, False),
        (
            "SdRequest",
            {
                "prompt": "a",
                "control": [
                    {"type": "depth", "image": PNG, "scale": 0.8, "start": 0, "end": 0.5},
                    {"type": "pose", "image": PNG},
                ],
            },
            True,
        ),
        ("SdRequest", {"prompt": "a", "control": []}, False),
        ("SdRequest", {"prompt": "a", "control": [{"type": "seg", "image": PNG}]}, False),
        ("SdRequest", {"prompt": "a", "control": [{"type": "depth"}]}, False),
        ("SdRequest", {"prompt": "a", "control": [{"type": "depth", "image": PNG, "scale": 2.5}]}, False),
        ("SdRequest", {"prompt": "a", "control": [{"type": "depth", "image": PNG, "end": 1.5}]}, False),
        ("SdRequest", {"prompt": "a", "control": [{"type": "depth", "image": PNG, "weight": 1}]}, False),
        (
            "SdRequest",
            {
                "interpolate": {"seeds": [1, 2], "prompts": ["a cat", "a dog"], "frames": 8},
                "steps": 2,
                "control": [{"type": "depth", "image": PNG}],
            },
            True,
        ),
        ("SdRequest", {"interpolate": {"seeds": [1, 2], "frames": 2}}, True),
        ("SdRequest", {"interpolate": {"seeds": [1, 2], "frames": 2}, "prompt": "a"}, False),
        ("SdRequest", {"interpolate": {"seeds": [1, 2], "frames": 2}, "seed": 1}, False),
        ("SdRequest", {"interpolate": {"seeds": [1], "frames": 2}}, False),
        ("SdRequest", {"interpolate": {"seeds": [1, 2], "frames": 1}}, False),
        ("SdRequest", {"interpolate": {"seeds": [1, 2], "frames": 9}}, False),
        ("SdRequest", {"interpolate": {"seeds": [1, 2]}}, False),
        ("SdRequest", {}, False),
        (
            "UpscaleRequest",
            {
                "image": PNG,
                "prompt": "a cat",
                "steps": 2,
                "guidance_scale": 9,
                "noise_level": 20,
                "seed": 3,
                "tile": 64,
            },
            True,
        ),
        ("UpscaleRequest", {"image": PNG, "prompt": ""}, True),
        ("UpscaleRequest", {"prompt": "a cat"}, False),
        ("UpscaleRequest", {"image": PNG, "noise_level": 351}, False),
        ("UpscaleRequest", {"image": PNG, "tile": 36}, False),
        ("UpscaleRequest", {"image": PNG, "tile": 256}, False),
        ("UpscaleRequest", {"image": PNG, "scale": 2}, False),
    ],
)
def test_schemas_accept_and_refuse_like_the_parsers(document, schema, body, valid):
    # the README's and test_bad_input.py's cases, judged by a JSON Schema 2020-12 validator
    errors = list(validator(document, schema).iter_errors(body))
    assert (not errors) == valid, [e.message for e in errors]
