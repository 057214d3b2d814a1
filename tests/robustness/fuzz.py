"""Request generation for tests/robustness/test_fuzz.py: valid and invalid requests drawn from
docs/openapi.yaml with Hypothesis, real decodable images, and what each answer must look like.

The generator reads only the document (resolved against the fuzz server's limits): a new endpoint
is fuzzed as soon as docs/openapi.yaml describes it. A request schema's `Image` properties get real
PNG/JPEG images inside their x-max-image-side/x-max-image-pixels, `Box`/`Point` values lie inside
that image; what JSON Schema cannot say (sd's width x height, sam's mask count, ...) is one small
function in FIXERS keyed by path.

Each generated request is a :class:`Probe` that says what must come back: ``valid`` -> 200 with a
body that validates against the documented response schema; ``invalid`` -> a handler 4xx JSON error
whose message starts with ``field`` (after a pipeline stage prefix such as ``generate: ``);
``maybe`` (a bit-flipped image) -> either; ``torchserve`` -> TorchServe's own 4xx (no request_id).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import string
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from PIL import Image
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from render_model_config import deep_merge
from robustness.contract import deref, json_request_schemas, with_limits
from robustness.tools import jpeg_declaring, png_header

# --- the fuzz server's configuration ----------------------------------------------------------------
# Deep-merged over each archive's rendered model-config.yaml: small images, few prompts and steps,
# a 4x4 automatic grid, so that every VALID request is cheap and every limit is easy to cross.
# Keep each pipeline limit at most the limit of the model it sends to (tests/unit/test_settings.py).
# 128 px a side, 8192 px in all: both limits can be crossed alone; 128:1 still resizes to tiny sam's 64 px input
SMALL_IMAGE = {"max_image_side": 128, "max_image_pixels": 8192}
FUZZ_OVERRIDES: dict[str, dict[str, Any]] = {
    "sd": {
        "handler": {
            "width": 64,
            "height": 64,
            "steps": 2,  # SMALL_IMAGE: its control images
            "limits": {
                "max_prompts": 2,
                "max_prompt_length": 200,
                "min_side": 64,
                "max_side": 96,
                "max_pixels": 7680,
                "max_steps": 3,
                "max_frames": 3,
                **SMALL_IMAGE,
            },
        }
    },
    "clip": {"handler": {"limits": {**SMALL_IMAGE, "max_texts": 8, "max_text_length": 64, "max_rois": 8}}},
    "sam": {
        "handler": {
            "automatic": {"points_per_side": 4, "max_masks": 6},
            "limits": {**SMALL_IMAGE, "max_boxes": 4, "max_points": 4, "max_masks": 6},
        }
    },
    "depth": {"handler": {"limits": SMALL_IMAGE}},
    "pose": {"handler": {"limits": {**SMALL_IMAGE, "max_rois": 4, "max_people": 4}}},
    "caption": {
        "handler": {
            "max_new_tokens": 4,
            "num_beams": 1,
            "limits": {**SMALL_IMAGE, "max_prompt_length": 64, "max_new_tokens": 6, "max_num_beams": 2},
        }
    },
    "pipeline": {
        "handler": {
            "limits": {**SMALL_IMAGE, "max_prompt_length": 200, "max_texts": 8, "max_text_length": 64, "max_rois": 4}
        }
    },
    # every legal input's 4x output within the output bound (16 x 8192 px), one tile, one or two steps
    "upscale": {
        "handler": {
            "steps": 1,
            "limits": {**SMALL_IMAGE, "max_output_pixels": 131072, "max_steps": 2, "max_prompt_length": 64},
        }
    },
    # one sample per prior, sd's fuzz sizes and steps: a valid interpretation is a handful of tiny calls
    "interpret": {
        "handler": {
            "samples": 1,
            "limits": {
                **SMALL_IMAGE,
                "max_caption_length": 64,
                "max_samples": 1,
                "min_side": 64,
                "max_side": 96,
                "max_pixels": 7680,
                "max_steps": 3,
            },
        }
    },
}
CONFIG_NAME = "model-config.yaml"


def rewrite_archive(source: Path, target: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Copy a .mar (or .war) with its model-config.yaml deep-merged with ``overrides``; the new config.
    A model with image limits and no entry in FUZZ_OVERRIDES still gets SMALL_IMAGE."""
    config: dict[str, Any] = {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == CONFIG_NAME:
                config = yaml.safe_load(data)
                if "max_image_side" in ((config.get("handler") or {}).get("limits") or {}):
                    config = deep_merge(config, {"handler": {"limits": SMALL_IMAGE}})
                config = deep_merge(config, overrides)
                data = yaml.safe_dump(config, sort_keys=False).encode()
            dst.writestr(info, data)
    return config


def fuzz_store(model_store: Path, target: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Archives of ``names`` (and pipeline.war) with the fuzz limits; each model's handler.limits."""
    target.mkdir(parents=True, exist_ok=True)
    limits = {}
    for name in names:
        config = rewrite_archive(model_store / f"{name}.mar", target / f"{name}.mar", FUZZ_OVERRIDES.get(name, {}))
        limits[name] = dict(config["handler"].get("limits") or {})
    if (model_store / "pipeline.war").exists():
        # the workflow's nodes read the pipeline's rendered yaml from inside the .war
        rewrite_archive(model_store / "pipeline.war", target / "pipeline.war", FUZZ_OVERRIDES.get("pipeline", {}))
    return limits


# --- probes --------------------------------------------------------------------------------------------
@dataclass
class Probe:
    path: str  # /predictions/<model> or /wfpredict/pipeline
    kind: str  # valid | invalid | maybe | torchserve
    what: str  # the mutation, for the summary ("limit steps", "image truncated", ...)
    field: str | None = None  # invalid: the message must start with this field (or one of `fields`)
    fields: tuple[str, ...] = ()  # alternatives (pipeline: prompt / image)
    json: Any = None  # a JSON body (sent with json=)
    data: bytes | None = None  # a raw body
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    method: str = "POST"
    token: str | None = None  # None: the right token
    status: int | None = None  # invalid: the exact 4xx expected (413 for sizes), when known
    schema_invalid: bool | None = None  # what the request schema must say of `json` (None: not checked)

    def describe(self) -> str:
        if self.json is not None:
            body = json.dumps(_short(self.json))
        else:
            body = repr((self.data or b"")[:80])
        return f"{self.method} {self.path} [{self.kind}: {self.what}] {body[:400]}"


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 60:
        return value[:40] + f"...({len(value)} chars)"
    if isinstance(value, list):
        return [_short(v) for v in value[:6]] + (["..."] if len(value) > 6 else [])
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    return value


# --- images ----------------------------------------------------------------------------------------------
MODES = ("RGB", "RGB", "RGBA", "L", "LA", "P", "1", "I;16")


@st.composite
def image_files(draw: Any, max_side: int, max_pixels: int) -> tuple[bytes, tuple[int, int]]:
    """A real PNG (sometimes JPEG, WebP or BMP) inside the limits: (file bytes, (width, height))."""
    width = draw(st.integers(1, max_side))
    height = draw(st.integers(1, max(1, min(max_side, max_pixels // width))))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(("PNG",) * 6 + ("JPEG", "WEBP", "BMP")))
    pattern = draw(st.sampled_from(("noise", "flat", "gradient")))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if pattern == "noise":
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif pattern == "flat":
        pixels = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3)).copy()
    else:
        ramp = np.linspace(0, 255, width, dtype=np.uint8)
        pixels = np.stack([np.tile(ramp, (height, 1))] * 3, axis=-1)
    image = Image.fromarray(pixels, "RGB")
    if mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if fmt in ("WEBP", "BMP") and image.mode not in ("RGB", "RGBA", "L", "P", "1"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue(), (width, height)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- the generator ---------------------------------------------------------------------------------------
PIPELINE_STAGES = {
    "generate": "sd",
    "concepts": "clip",
    "segment": "sam",
    "describe_regions": "clip",
    "depth": "depth",
    "pose": "pose",
}
INTERPRET_STAGES = {
    "caption": "caption",
    "depth": "depth",
    "pose": "pose",
    "generate": "sd",
    "generate_depth": "sd",
    "generate_pose": "sd",
    "generate_canny": "sd",
    "score": "clip",
    "upscale": "upscale",
}
JSON_TYPES = ("boolean", "integer", "number", "string", "array", "object")
WRONG_VALUES: dict[str, list[Any]] = {
    "boolean": [True, False],
    "integer": [7, -3],
    "number": [2.5, -0.75],
    "string": ["x", "12"],
    "array": [[1], []],
    "object": [{"a": 1}, {}],
}


class Generator:
    """Valid and invalid requests for every POST path of ``document`` resolved against ``limits``."""

    def __init__(self, document: dict[str, Any], limits: dict[str, dict[str, Any]], sd_default_size: tuple[int, int]):
        self.document = with_limits(document, limits)
        self.limits = limits
        self.sd_default_size = sd_default_size
        self.requests = json_request_schemas(self.document)
        registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(self.document))
        self.registry = registry
        self._validators: dict[str, Draft202012Validator] = {}

    # --- schemas ---------------------------------------------------------------------------------
    def validator(self, pointer: str) -> Draft202012Validator:
        if pointer not in self._validators:
            self._validators[pointer] = Draft202012Validator({"$ref": f"urn:openapi{pointer}"}, registry=self.registry)
        return self._validators[pointer]

    def request_pointer(self, path: str) -> str:
        return self.document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]

    def response_pointer(self, path: str) -> str:
        content = self.document["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]
        return content["schema"]["$ref"]

    def event_pointer(self, path: str) -> str | None:
        model = path.rsplit("/", 1)[1]
        events = {"sd": "SdProgressEvent", "pipeline": "PipelineStageEvent", "interpret": "InterpretStageEvent"}
        name = events.get(model)
        return f"#/components/schemas/{name}" if name else None

    def schema_errors(self, pointer: str, value: Any) -> list[str]:
        return [error.message[:200] for error in self.validator(pointer).iter_errors(value)]

    def properties(self, path: str) -> dict[str, Any]:
        return self.requests[path]["properties"]

    def image_limits(self, path: str, prop: str = "image") -> tuple[int, int]:
        schema = deref(self.document, self.properties(path)[prop])
        return int(schema["x-max-image-side"]), int(schema["x-max-image-pixels"])

    def takes_raw_images(self, path: str) -> bool:
        return "image/png" in self.document["paths"][path]["post"]["requestBody"]["content"]

    # --- valid values ----------------------------------------------------------------------------
    def value(self, draw: Any, schema: dict[str, Any], bounds: tuple[int, int] | None) -> Any:
        """A value valid for ``schema``; Box/Point values inside ``bounds`` (width, height)."""
        ref = schema.get("$ref", "")
        if ref.endswith("/Box"):
            return draw(boxes(bounds or (1, 1)))
        if ref.endswith("/Point"):
            return draw(points(bounds or (1, 1)))
        schema = deref(self.document, schema)
        if "oneOf" in schema:
            branch = draw(st.sampled_from(schema["oneOf"]))
            return self.value(draw, {**{k: v for k, v in schema.items() if k != "oneOf"}, **branch}, bounds)
        if "enum" in schema:
            return draw(st.sampled_from(schema["enum"]))
        kind = schema.get("type")
        if kind == "boolean":
            return draw(st.booleans())
        if kind == "integer":
            return draw(integers_in(schema))
        if kind == "number":
            low, high = schema.get("minimum", -1e6), schema.get("maximum", 1e6)
            return draw(
                st.one_of(
                    st.integers(int(np.ceil(low)), int(np.floor(high))),
                    st.floats(low, high, allow_nan=False, allow_infinity=False),
                )
            )
        if kind == "string":
            if schema.get("contentMediaType", "").startswith("image/"):
                raw, _ = draw(
                    image_files(int(schema.get("x-max-image-side", 64)), int(schema.get("x-max-image-pixels", 4096)))
                )
                return b64(raw)
            return draw(texts(schema))
        if kind == "array":
            low = schema.get("minItems", 0)
            high = schema.get("maxItems", low + 4)
            count = draw(st.one_of(st.integers(low, high), st.just(high)))
            return [self.value(draw, schema["items"], bounds) for _ in range(count)]
        if kind == "object":
            return {
                name: self.value(draw, prop, bounds)
                for name, prop in schema.get("properties", {}).items()
                if name in schema.get("required", []) or draw(st.booleans())
            }
        raise ValueError(f"no generator for schema {schema}")

    def valid_body(self, draw: Any, path: str) -> dict[str, Any]:
        request = self.requests[path]
        props = request["properties"]
        required = set(request.get("required", []))
        excluded: set[str] = set()
        if "oneOf" in request:  # exactly one of these (the pipeline's prompt | image)
            branch = draw(st.sampled_from(request["oneOf"]))
            required |= set(branch["required"])
            excluded |= {name for other in request["oneOf"] for name in other["required"]} - set(branch["required"])
        for name, forbidden in (request.get("dependentSchemas") or {}).items():
            if name in required:
                excluded |= {k for k, v in forbidden.get("properties", {}).items() if v is False}
        included = {name for name in props if name in required or (name not in excluded and draw(st.booleans()))}
        for name, needs in (request.get("dependentRequired") or {}).items():
            if name in included:
                included |= set(needs)
        body: dict[str, Any] = {}
        bounds = None
        if "image" in included:
            side, pixels = self.image_limits(path)
            raw, bounds = draw(image_files(side, pixels))
            body["image"] = "data:image/png;base64," + b64(raw) if draw(st.sampled_from(range(10))) == 0 else b64(raw)
        later = ("image", "roi", "points")  # boxes and points lie inside the image (or the generated one)
        for name in props:
            if name in included and name not in later:
                body[name] = self.value(draw, props[name], bounds)
        if bounds is None and "prompt" in body and "image" in props:
            bounds = (body.get("width", self.sd_default_size[0]), body.get("height", self.sd_default_size[1]))
        for name in ("roi", "points"):
            if name in included:
                body[name] = self.value(draw, props[name], bounds)
        fixer = FIXERS.get(path.rsplit("/", 1)[1])
        if fixer:
            fixer(self, body, draw)
        return {name: body[name] for name in props if name in body}

    def valid(self, draw: Any, path: str) -> Probe:
        body = self.valid_body(draw, path)
        if path.startswith("/wfpredict/"):
            body.pop("stream", None)  # the workflow ignores it; keep the answer one object
        if self.takes_raw_images(path) and set(body) == {"image"} and draw(st.sampled_from(range(4))) == 0:
            raw = _image_bytes(body["image"])
            media = draw(st.sampled_from((None, "image/png", "application/octet-stream")))
            return Probe(path, "valid", "raw image", data=raw, headers={"Content-Type": media} if media else {})
        return Probe(path, "valid", "valid", json=body, schema_invalid=False)

    # --- invalid requests ------------------------------------------------------------------------
    def invalid(self, draw: Any, path: str) -> Probe:
        body = self.valid_body(draw, path)
        if path.startswith("/wfpredict/"):
            body.pop("stream", None)
        props = self.properties(path)
        kinds = ["unknown field", "wrong type", "limit", "missing", "body"]
        if "image" in body:
            kinds += ["image", "image"]
        if any(isinstance(body.get(n), list) and body[n] and isinstance(body[n][0], list) for n in ("roi", "points")):
            kinds.append("geometry")
        kind = draw(st.sampled_from(kinds))
        if kind == "unknown field":
            name = draw(
                st.one_of(
                    st.text(string.ascii_letters + "_", min_size=1, max_size=12),
                    st.sampled_from([n[:-1] for n in props if len(n) > 1] + ["promt", "Image"]),
                )
            )
            if name in props:
                name += "_x"
            return Probe(
                path,
                "invalid",
                "unknown field",
                field=name,
                json={**body, name: draw(st.sampled_from([1, "a", None, [], {}]))},
                schema_invalid=True,
            )
        if kind == "wrong type":
            name = draw(st.sampled_from(sorted(props)))
            allowed = self.json_types(props[name])
            wrong = draw(
                st.sampled_from(
                    [
                        v
                        for t in JSON_TYPES
                        if t not in allowed and not (t == "integer" and "number" in allowed)
                        for v in WRONG_VALUES[t]
                    ]
                )
            )
            mutated = {**body, name: wrong}
            return self._invalid_field(path, f"wrong type {name}", name, mutated, body)
        if kind == "limit":
            candidates = [
                (name, violation) for name in sorted(props) for violation in self.violations(draw, props[name], body)
            ]
            if candidates:
                name, (label, bad) = draw(st.sampled_from(candidates))
                return self._invalid_field(path, f"{label} {name}", name, {**body, name: bad}, body)
        if kind == "missing":
            request = self.requests[path]
            required = list(request.get("required", [])) or [n for b in request.get("oneOf", []) for n in b["required"]]
            mutated = {k: v for k, v in body.items() if k not in required}
            # a field still present may be the first one refused (clip: reference_image without images)
            return Probe(
                path,
                "invalid",
                "missing required",
                field=required[0],
                fields=tuple(dict.fromkeys([*required, *mutated])),
                json=mutated,
                schema_invalid=True,
            )
        if kind == "image":
            return self.bad_image(draw, path, body)
        if kind == "geometry":
            return self.bad_geometry(draw, path, body)
        return draw(bad_bodies(path, body))

    def _invalid_field(
        self, path: str, what: str, name: str, mutated: dict[str, Any], original: dict[str, Any]
    ) -> Probe:
        fields: tuple[str, ...] = (name,)
        request = self.requests[path]
        if "oneOf" in request and name in {n for b in request["oneOf"] for n in b["required"]}:
            fields = tuple(n for b in request["oneOf"] for n in b["required"])
        return Probe(path, "invalid", what, field=name, fields=fields, json=mutated, schema_invalid=True)

    def json_types(self, schema: dict[str, Any]) -> set[str]:
        schema = deref(self.document, schema)
        if "oneOf" in schema:
            return {t for branch in schema["oneOf"] for t in self.json_types(branch)}
        if "type" in schema:
            return {schema["type"]}
        return set(JSON_TYPES)

    def violations(self, draw: Any, schema: dict[str, Any], body: dict[str, Any]) -> list[tuple[str, Any]]:
        """Values that break one of ``schema``'s own limits (at its level or in its items)."""
        schema = deref(self.document, schema)
        if "oneOf" in schema:
            branch = draw(st.sampled_from(schema["oneOf"]))
            return self.violations(draw, {**{k: v for k, v in schema.items() if k != "oneOf"}, **branch}, body)
        found: list[tuple[str, Any]] = []
        kind = schema.get("type")
        if "enum" in schema:
            found.append(("not in enum", "zz-not-an-option" if kind == "string" else 2))
        if kind in ("integer", "number"):
            step = 1 if kind == "integer" else draw(st.sampled_from([0.5, 1e-3, 1e6]))
            if "maximum" in schema:
                found.append(("over maximum", schema["maximum"] + step))
            if "exclusiveMaximum" in schema:
                found.append(("at exclusiveMaximum", schema["exclusiveMaximum"]))
            if "minimum" in schema:
                found.append(("under minimum", schema["minimum"] - step))
            if "multipleOf" in schema and "minimum" in schema:
                found.append(("not a multiple", schema["minimum"] + 1))
            found.append(("401-digit integer", 10**400 * draw(st.sampled_from([1, -1]))))
        if kind == "string" and not schema.get("contentMediaType"):
            if "maxLength" in schema:
                found.append(("over maxLength", "x" * (schema["maxLength"] + 1)))
            if schema.get("minLength", 0) >= 1:
                found.append(("blank", draw(st.sampled_from(["", " ", "\t\n"]))))
        if kind == "array":
            if "maxItems" in schema:
                item = self.value(draw, schema["items"], _bounds(body))
                found.append(("over maxItems", [item] * (schema["maxItems"] + 1)))
            if schema.get("minItems", 0) >= 1:
                found.append(("empty list", []))
            for label, bad in self.violations(draw, schema["items"], body):
                item = self.value(draw, schema["items"], _bounds(body))
                found.append((f"item {label}", [item, bad] if schema.get("maxItems", 2) >= 2 else [bad]))
        return found

    def bad_image(self, draw: Any, path: str, body: dict[str, Any]) -> Probe:
        side, pixels = self.image_limits(path)
        raw = _image_bytes(body["image"])
        kind = draw(
            st.sampled_from(
                [
                    "truncated",
                    "bit flips",
                    "random bytes",
                    "not base64",
                    "over side",
                    "over pixels",
                    "bomb",
                    "zero size",
                    "gif",
                    "empty",
                    "jpeg over side",
                ]
            )
        )
        status = 400
        if kind == "truncated":
            bad = raw[: draw(st.integers(1, max(1, len(raw) // 2)))]
        elif kind == "bit flips":
            flipped = bytearray(raw)
            for _ in range(draw(st.integers(1, 8))):
                position = draw(st.integers(0, len(flipped) - 1))
                flipped[position] ^= 1 << draw(st.integers(0, 7))
            bad = bytes(flipped)
        elif kind == "random bytes":
            bad = draw(st.binary(min_size=1, max_size=256)).lstrip(b'{[" \t\r\n') or b"\x00"
        elif kind == "over side":
            bad, status = png_header(side + draw(st.integers(1, 1000)), 1), 413
        elif kind == "over pixels" and side * side > pixels:
            width = draw(st.integers(max(1, pixels // side + 1), side))
            bad, status = png_header(width, pixels // width + 1), 413
        elif kind == "over pixels":  # the side limit is the binding one
            bad, status = png_header(side + 1, side + 1), 413
        elif kind == "bomb":
            bad, status = png_header(100_000, 100_000), 413
        elif kind == "zero size":
            bad = png_header(0, draw(st.integers(0, 5)))
        elif kind == "gif":
            buffer = io.BytesIO()
            Image.new("RGB", (4, 4)).save(buffer, format=draw(st.sampled_from(["GIF", "TIFF", "ICO"])))
            bad = buffer.getvalue()
        elif kind == "jpeg over side":
            bad, status = jpeg_declaring(side + 1, 8), 413
        else:
            bad = b""
        probe_kind = "maybe" if kind == "bit flips" else "invalid"
        if kind == "not base64":
            value = draw(st.sampled_from(["!!! not base64 !!!", b64(raw)[:-1] + "*", "data:image/png;base64,@@"]))
        else:
            value = b64(bad)
        if self.takes_raw_images(path) and set(body) == {"image"} and bad and draw(st.booleans()):
            return Probe(
                path,
                probe_kind,
                f"image {kind} (raw)",
                field="image",
                fields=("image", "body"),
                data=bad,
                status=status,
            )
        return Probe(path, probe_kind, f"image {kind}", field="image", json={**body, "image": value}, status=status)

    def bad_geometry(self, draw: Any, path: str, body: dict[str, Any]) -> Probe:
        name = draw(st.sampled_from([n for n in ("roi", "points") if isinstance(body.get(n), list) and body[n]]))
        items = [list(item) for item in body[name]]
        index = draw(st.integers(0, len(items) - 1))
        generated = (body.get("width", self.sd_default_size[0]), body.get("height", self.sd_default_size[1]))
        width, _ = _bounds(body) or generated
        kind = draw(st.sampled_from(["outside", "inverted", "short", "a string", "negative"]))
        item = items[index]
        if kind == "outside":
            item[0 if name == "points" else 2] = width + draw(st.integers(1, 100))
        elif kind == "inverted" and name == "roi":
            item[2] = item[0]  # x2 <= x1
        elif kind in ("short", "inverted"):
            item = item[:-1]
        elif kind == "a string":
            item[0] = "1"
        else:
            item[1] = -draw(st.integers(1, 100))
        items[index] = item
        mutated = {**body, name: items}
        probe = self._invalid_field(path, f"geometry {name} {kind}", name, mutated, body)
        probe.schema_invalid = None if kind in ("outside", "inverted", "negative") else True
        if "image" not in body and name == "roi":
            probe.field = "roi"  # a prompt's roi: sam refuses it, behind the segment stage
        return probe


def _bounds(body: dict[str, Any]) -> tuple[int, int] | None:
    if isinstance(body.get("image"), str):
        try:
            with Image.open(io.BytesIO(_image_bytes(body["image"]))) as image:
                return image.size
        except Exception:
            return None
    return None


def _image_bytes(value: str) -> bytes:
    if value.startswith("data:"):
        value = value.partition(",")[2]
    return base64.b64decode(value)


@st.composite
def integers_in(draw: Any, schema: dict[str, Any]) -> int:
    low = int(schema.get("minimum", -(2**31)))
    high = int(schema["exclusiveMaximum"]) - 1 if "exclusiveMaximum" in schema else int(schema.get("maximum", 2**31))
    multiple = int(schema.get("multipleOf", 1))
    first = -(-low // multiple)
    return draw(st.integers(first, high // multiple)) * multiple


@st.composite
def texts(draw: Any, schema: dict[str, Any]) -> str:
    low, high = int(schema.get("minLength", 0)), int(schema.get("maxLength", 64))
    if schema.get("pattern") not in (None, r"\S"):  # a pattern of its own (a version name, ...)
        return draw(st.from_regex(schema["pattern"], fullmatch=True).filter(lambda t: low <= len(t) <= high))
    alphabet = st.characters(codec="utf-8", exclude_categories=("Cs",))
    if draw(st.sampled_from(range(10))) == 0:
        text = draw(st.text(alphabet, min_size=high, max_size=high))  # exactly at the limit
    else:
        text = draw(st.text(alphabet, min_size=low, max_size=min(high, 40)))
    if schema.get("pattern") == r"\S" and not text.strip():
        text = ("a" + text)[:high]
    return text


@st.composite
def boxes(draw: Any, bounds: tuple[int, int]) -> list[float]:
    width, height = bounds

    def edges(size: int) -> tuple[float, float]:
        a = draw(st.one_of(st.integers(0, size), st.floats(0, size, allow_nan=False)))
        b = draw(st.one_of(st.integers(0, size), st.floats(0, size, allow_nan=False)))
        low, high = sorted((a, b))
        if high - low <= 0:
            low, high = (0, size) if size > 0 else (0, 1)
        return low, high

    x1, x2 = edges(width)
    y1, y2 = edges(height)
    return [x1, y1, x2, y2]


@st.composite
def points(draw: Any, bounds: tuple[int, int]) -> list[float]:
    width, height = bounds
    return [
        draw(st.one_of(st.integers(0, width), st.floats(0, width, allow_nan=False))),
        draw(st.one_of(st.integers(0, height), st.floats(0, height, allow_nan=False))),
    ]


@st.composite
def bad_bodies(draw: Any, path: str, body: dict[str, Any]) -> Probe:
    """Bodies that are not a JSON object, or JSON that Python's parser refuses; the message names `body`
    (a NaN or Infinity inside a valid object names its field instead)."""
    text = json.dumps(body)
    kind = draw(st.sampled_from(["broken", "array", "scalar", "empty", "deep", "5000 digits", "nan", "text/plain"]))
    headers = {"Content-Type": "application/json"}
    fields: tuple[str, ...] = ("body",)
    if kind == "broken":
        data = text[: draw(st.integers(1, max(1, len(text) - 1)))]
    elif kind == "array":
        data = f"[{text}]"
    elif kind == "scalar":
        data = draw(st.sampled_from(['"a string"', "42", "true", "null"]))
    elif kind == "empty":
        data = draw(st.sampled_from(["", "   "]))
        fields = ("body", "image")  # an analyzer reads whitespace bytes as a raw image (not an image)
    elif kind == "deep":
        depth = draw(st.integers(2_000, 100_000))
        data = "[" * depth + "]" * depth
    elif kind == "5000 digits":
        data = '{"x": ' + "1" * 5000 + "}"
    elif kind == "nan":
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))  # Python's json reads them
        if body and draw(st.booleans()):
            name = draw(st.sampled_from(sorted(body)))
            data = json.dumps({**body, name: "__nan__"}).replace('"__nan__"', literal)
        else:
            name = "nan_field"
            data = json.dumps({**body, name: "__nan__"}).replace('"__nan__"', literal)
        fields = (name,)
    else:
        data, headers = "hello", {"Content-Type": "text/plain"}
        fields = ("body", "image")  # an analyzer reads a non-JSON body as a raw image
    if kind == "scalar" and data == "null":
        fields = ("body", "image")
    return Probe(path, "invalid", f"body {kind}", field=fields[0], fields=fields, data=data.encode(), headers=headers)


# --- what JSON Schema cannot say: cross-field rules, per model ------------------------------------------
def _fix_sd(generator: Generator, body: dict[str, Any], draw: Any) -> None:
    schema = generator.requests["/predictions/sd"]
    width = body.get("width", generator.sd_default_size[0])
    height = body.get("height", generator.sd_default_size[1])
    if width * height > schema["x-max-pixels"]:
        body.pop("height", None) if "height" in body else body.pop("width", None)
    prompt, negative = body.get("prompt"), body.get("negative_prompt")
    if isinstance(negative, list):
        count = len(prompt) if isinstance(prompt, list) else 1
        body["negative_prompt"] = (negative * count)[:count] if isinstance(prompt, list) else negative[0]
    if body.get("control"):  # one entry per type, each with start < end
        body["control"] = list({entry["type"]: entry for entry in body["control"]}.values())
        for entry in body["control"]:
            if entry.get("start", 0.0) >= entry.get("end", 1.0):
                entry.pop("start", None), entry.pop("end", None)  # the defaults, 0 and 1


def _fix_sam(generator: Generator, body: dict[str, Any], draw: Any) -> None:
    if "point_labels" in body:
        count = len(body["points"])
        body["point_labels"] = (body["point_labels"] * count)[:count]
    prompts = len(body["roi"]) if body.get("roi") else 1
    max_masks = generator.document["components"]["schemas"]["SamResponse"]["properties"]["masks"]["maxItems"]
    if (body.get("roi") or body.get("points")) and body.get("multimask") and prompts * 3 > max_masks:
        body["multimask"] = False


def _fix_pipeline(generator: Generator, body: dict[str, Any], draw: Any) -> None:
    if "prompt" in body:
        _fix_sd(generator, body, draw)
        if "roi" in body:  # the generated image's size, after the fix above
            bounds = (body.get("width", generator.sd_default_size[0]), body.get("height", generator.sd_default_size[1]))
            body["roi"] = [draw(boxes(bounds)) for _ in body["roi"]]


def _fix_interpret(generator: Generator, body: dict[str, Any], draw: Any) -> None:
    if "priors" in body:  # distinct (uniqueItems: the generator draws items independently)
        body["priors"] = list(dict.fromkeys(body["priors"]))
    schema = generator.requests["/predictions/interpret"]
    if "width" in body and body["width"] * body["height"] > schema["x-max-pixels"]:
        del body["width"], body["height"]
    if "sd_version" in body:  # valid only when registered: the fuzz server has sd's base version alone
        body["sd_version"] = "1.0"


FIXERS: dict[str, Callable[[Generator, dict[str, Any], Any], None]] = {
    "sd": _fix_sd,
    "sam": _fix_sam,
    "pipeline": _fix_pipeline,
    "interpret": _fix_interpret,
}


# --- judging an answer ------------------------------------------------------------------------------------
def json_objects(text: str) -> list[Any]:
    """A streamed answer is several JSON objects back to back; a plain one is one."""
    decoder = json.JSONDecoder()
    objects, position = [], 0
    while position < len(text):
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        value, position = decoder.raw_decode(text, position)
        objects.append(value)
    return objects


def message_field(message: str, path: str) -> tuple[str, str | None]:
    """(the field a message starts with, the pipeline stage before it or None)."""
    stage = None
    head, _, rest = message.partition(": ")
    stages = INTERPRET_STAGES if path.endswith("/interpret") else PIPELINE_STAGES
    # `caption` is an interpret stage and a field: a stage prefix is followed by the model's own `field: `
    nested = ": " in rest if path.endswith("/interpret") else True
    if path.endswith(("/pipeline", "/interpret")) and head in stages and rest and nested:
        stage, message = head, rest
        head = message.partition(": ")[0]
    return head.split("[", 1)[0], stage


@st.composite
def torchserve_probes(draw: Any, paths: list[str]) -> Probe:
    """Requests TorchServe itself refuses before any handler: a bad or missing token, an unknown model
    or version, a method it does not serve."""
    path = draw(st.sampled_from(paths))
    kind = draw(st.sampled_from(["bad token", "no token", "unknown model", "unknown version", "GET"]))
    if kind == "bad token":
        token = draw(st.text(string.ascii_letters, min_size=1, max_size=40))
        return Probe(path, "torchserve", kind, json={}, token=token)
    if kind == "no token":
        return Probe(path, "torchserve", kind, json={}, token="")
    if kind == "unknown model":
        name = draw(st.text(string.ascii_lowercase, min_size=1, max_size=12))
        return Probe(f"/predictions/zz{name}", "torchserve", kind, json={})
    if kind == "unknown version":
        return Probe(f"{path}/{draw(st.integers(2, 99))}.0", "torchserve", kind, json={})
    return Probe(path, "torchserve", kind, method="GET")
