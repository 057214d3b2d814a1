"""Turning a TorchServe request row into a validated dict.

TorchServe hands each request as a dict whose ``body`` (or ``data``) is already-decoded JSON, raw
bytes (an image sent with ``curl -T``, or JSON it could not decode), or text. Multipart form
fields arrive as separate keys. Every validator raises :class:`InputError` naming the field.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .errors import InputError, LimitError

Payload = Mapping[str, Any]  # one request's JSON object
_BODY_KEYS = ("body", "data")
_FLOAT_MAX = sys.float_info.max


def read_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """One TorchServe request row -> a JSON-like dict. A raw image body becomes ``{"image": bytes}``."""
    body = next((row[k] for k in _BODY_KEYS if row.get(k) is not None), None)
    if body is None:
        # multipart/form-data: each form field is its own key
        fields = {k: v for k, v in row.items() if k not in _BODY_KEYS}
        if not fields:
            raise InputError("body", "request body is empty")
        return {k: _form_value(k, v) for k, v in fields.items()}
    if isinstance(body, Mapping):
        return dict(body)
    if isinstance(body, list):
        raise InputError("body", "expected a JSON object, got a JSON array")
    if isinstance(body, (bytes, bytearray)):
        if not bytes(body).strip():  # nothing, or only whitespace: no image and no JSON
            raise InputError("body", "request body is empty")
        if _looks_like_json(body):
            return _parse_json_object(body.decode("utf-8", errors="replace"))
        return {"image": bytes(body)}
    if isinstance(body, str):
        if not body.strip():
            raise InputError("body", "request body is empty")
        return _parse_json_object(body)
    raise InputError("body", f"unsupported body type {type(body).__name__}")


def _looks_like_json(raw: bytes | bytearray) -> bool:
    head = bytes(raw[:64]).lstrip()
    return head[:1] in (b"{", b"[", b'"')


def _parse_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError("body", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # an integer over Python's 4300-digit conversion limit
        raise InputError("body", f"invalid JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested deeper than the parser's recursion limit
        raise InputError("body", "invalid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise InputError("body", f"expected a JSON object, got {json_type(value)}")
    return value


def _form_value(key: str, value: Any) -> Any:
    if key == "image" or not isinstance(value, (bytes, bytearray)):
        return value
    text = value.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def json_type(value: Any) -> str:
    """How JSON would name the type of ``value``, for messages ("got an array")."""
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def reject_unknown(payload: Payload, allowed: Iterable[str]) -> None:
    """Unknown fields are refused rather than ignored, so a typo (``"promt"``) is not silently lost."""
    allowed = set(allowed)
    for key in payload:
        if key not in allowed:
            raise InputError(key, f"unknown field; allowed fields are {sorted(allowed)}")


def require(payload: Payload, key: str) -> Any:
    if payload.get(key) is None:
        raise InputError(key, "is required")
    return payload[key]


# the type of a getter's ``default``: with a default of the value's type, the getter never returns None
StrDefault = TypeVar("StrDefault", str, None)
IntDefault = TypeVar("IntDefault", int, None)
FloatDefault = TypeVar("FloatDefault", float, None)
# A getter's default when the caller gives none: None, typed Any so that it fits each getter's
# TypeVar (mypy refuses a plain None default for a TypeVar constrained to int or None)
ABSENT: Any = None


def get_str(
    payload: Payload,
    key: str,
    *,
    default: StrDefault = ABSENT,
    required: bool = False,
    max_len: int = 10_000,
    allow_empty: bool = False,
) -> str | StrDefault:
    value = payload.get(key)
    if value is None:
        if required:
            raise InputError(key, "is required")
        return default
    return check_str(value, key, max_len=max_len, allow_empty=allow_empty)


def check_str(value: Any, field: str, *, max_len: int = 10_000, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InputError(field, f"must be a string, got {json_type(value)}")
    if not allow_empty and not value.strip():
        raise InputError(field, "must not be empty")
    if len(value) > max_len:
        raise LimitError(field, f"is {len(value)} characters long; the limit is {max_len}")
    return value


def get_str_list(
    payload: Payload,
    key: str,
    *,
    max_items: int,
    max_len: int = 1_000,
    required: bool = False,
    accept_single: bool = False,
) -> list[str] | None:
    value = payload.get(key)
    if value is None:
        if required:
            raise InputError(key, "is required")
        return None
    if accept_single and isinstance(value, str):
        return [check_str(value, key, max_len=max_len)]
    if not isinstance(value, list):
        expected = "a string or a list of strings" if accept_single else "a list of strings"
        raise InputError(key, f"must be {expected}, got {json_type(value)}")
    if not value:
        raise InputError(key, "must not be an empty list")
    if len(value) > max_items:
        raise LimitError(key, f"has {len(value)} items; the limit is {max_items}")
    return [check_str(item, f"{key}[{i}]", max_len=max_len) for i, item in enumerate(value)]


def get_bool(payload: Payload, key: str, default: bool = False) -> bool:
    value = payload.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InputError(key, f"must be true or false, got {json_type(value)}")
    return value


def check_number(
    value: Any, field: str, *, integer: bool = False, minimum: float | None = None, maximum: float | None = None
) -> int | float:
    # bool is an int subclass in Python; JSON true is not a number
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(field, f"must be a number, got {json_type(value)}")
    if isinstance(value, int) and abs(value) > _FLOAT_MAX:
        # an integer no float can hold (JSON allows 1000-digit integers): math.isfinite and float()
        # would raise OverflowError
        raise LimitError(field, f"is too large a number ({len(str(abs(value)))} digits)")
    if not math.isfinite(value):
        raise InputError(field, "must be a finite number")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise InputError(field, f"must be an integer, got {value}")
        value = int(value)
    if minimum is not None and value < minimum:
        raise InputError(field, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise LimitError(field, f"must be <= {maximum}, got {value}")
    return value


def get_int(
    payload: Payload, key: str, *, default: IntDefault = ABSENT, minimum: int | None = None, maximum: int | None = None
) -> int | IntDefault:
    return _get_number(payload, key, default, integer=True, minimum=minimum, maximum=maximum)


def get_float(
    payload: Payload,
    key: str,
    *,
    default: FloatDefault = ABSENT,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | FloatDefault:
    return _get_number(payload, key, default, integer=False, minimum=minimum, maximum=maximum)


def _get_number(
    payload: Payload, key: str, default: Any, *, integer: bool, minimum: float | None, maximum: float | None
) -> Any:
    value = payload.get(key)
    if value is None:
        return default
    number = check_number(value, key, integer=integer, minimum=minimum, maximum=maximum)
    return int(number) if integer else float(number)


def _get_list(payload: Payload, key: str, max_items: int, items: str, noun: str) -> list[Any] | None:
    """A non-empty JSON list of at most ``max_items`` ``noun``s (``items`` describes one), or None."""
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InputError(key, f"must be a list of {items}, got {json_type(value)}")
    if not value:
        raise InputError(key, "must not be an empty list")
    if len(value) > max_items:
        raise LimitError(key, f"has {len(value)} {noun}; the limit is {max_items}")
    return value


NumberCheck = Callable[[str, list[float]], None]  # (field, numbers): raise InputError naming the field


def _get_number_lists(
    payload: Payload, key: str, max_items: int, shape: str, noun: str, check: NumberCheck
) -> list[list[float]] | None:
    """A list of at most ``max_items`` number lists shaped as ``shape`` (``"[x, y]"``), each passed to
    ``check`` with its field name (``points[1]``) before the next is read; floats, or None when absent."""
    value = _get_list(payload, key, max_items, f"{shape} {noun}", noun)
    if value is None:
        return None
    size = shape.count(",") + 1
    entries = []
    for i, entry in enumerate(value):
        field = f"{key}[{i}]"
        if not isinstance(entry, list) or len(entry) != size:
            raise InputError(field, f"must be a list of {size} numbers {shape}")
        numbers = [check_number(v, f"{field}[{j}]") for j, v in enumerate(entry)]
        check(field, numbers)
        entries.append([float(number) for number in numbers])
    return entries


def get_boxes(payload: Payload, key: str, *, image_size: tuple[int, int], max_items: int) -> list[list[float]] | None:
    """``[[x1, y1, x2, y2], ...]`` in pixels of an image of ``image_size`` (width, height)."""
    width, height = image_size

    def inside(field: str, box: list[float]) -> None:
        x1, y1, x2, y2 = box
        if x2 <= x1:
            raise InputError(field, "x2 must be > x1")
        if y2 <= y1:
            raise InputError(field, "y2 must be > y1")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise InputError(field, f"box {box} lies outside the {width}x{height} image")

    return _get_number_lists(payload, key, max_items, "[x1, y1, x2, y2]", "boxes", inside)


def get_points(payload: Payload, key: str, *, image_size: tuple[int, int], max_items: int) -> list[list[float]] | None:
    """``[[x, y], ...]`` inside an image of ``image_size`` (width, height)."""
    width, height = image_size

    def inside(field: str, point: list[float]) -> None:
        x, y = point
        if not (0 <= x <= width and 0 <= y <= height):
            raise InputError(field, f"point {point} lies outside the {width}x{height} image")

    return _get_number_lists(payload, key, max_items, "[x, y]", "points", inside)
