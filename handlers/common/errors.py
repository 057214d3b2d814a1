"""Errors that become a per-request HTTP status instead of failing the whole batch."""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """A request the client must fix. ``field`` names where the problem is (``"roi[1]"``)."""

    def __init__(self, field: str, problem: str, code: int = 400, kind: str = "InvalidInput"):
        self.field = field
        self.problem = problem
        self.code = code
        self.kind = kind
        super().__init__(f"{field}: {problem}" if field else problem)

    @property
    def message(self) -> str:
        return str(self)

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.kind, self.message)


class LimitError(InputError):
    """A well-formed request over a configured limit (steps, prompt count, ...); 413 for sizes."""

    def __init__(self, field: str, problem: str, code: int = 400):
        super().__init__(field, problem, code=code, kind="LimitExceeded")


def error_body(code: int, kind: str, message: str) -> dict[str, Any]:
    return {"code": code, "type": kind, "message": message}
