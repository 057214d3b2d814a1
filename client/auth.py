"""TorchServe's key file: the tokens a caller sends, re-read when they are rotated."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import requests


def default_key_file() -> Path:
    return Path(os.environ.get("TS_KEY_FILE", "key_file.json"))


def is_token_refusal(response: requests.Response) -> bool:
    """TorchServe 0.12 answers a wrong or expired token with 400 InvalidKeyException (newer: 401)."""
    if response.status_code == 401:
        return True
    if response.status_code != 400:
        return False
    try:
        return response.json().get("type") == "InvalidKeyException"
    except ValueError:
        return False


# TorchServe 0.12's gRPC interceptor closes a call whose "authorization" metadata is missing, wrong or
# expired with PERMISSION_DENIED and this description (UNAUTHENTICATED is accepted too, for servers
# that use the standard code). A handler's 403 also arrives as PERMISSION_DENIED, hence the text.
GRPC_TOKEN_REFUSAL = "Token Authorization failed"


def is_grpc_token_refusal(error: BaseException) -> bool:
    """Whether a ``grpc.RpcError`` is TorchServe refusing the token (not a handler's error)."""
    code = getattr(error, "code", None)
    if not callable(code):
        return False
    name = getattr(code(), "name", "")
    details_of = getattr(error, "details", None)
    details = details_of() if callable(details_of) else ""
    if name == "UNAUTHENTICATED":
        return True
    return name == "PERMISSION_DENIED" and GRPC_TOKEN_REFUSAL in (details or "")


class KeyFile:
    """Tokens from ``key_file.json``; :meth:`refresh` re-reads it and, holding the API key, rotates."""

    def __init__(self, path: Path | str | None = None, management_url: str | None = None):
        self.path = Path(path) if path else default_key_file()
        self.management_url = management_url
        self._lock = threading.Lock()
        self._keys: dict[str, Any] | None = None

    def token(self, kind: str) -> str | None:
        with self._lock:
            if self._keys is None:
                self._keys = self._read()
            entry = (self._keys or {}).get(kind) or {}
            return entry.get("key")

    def refresh(self, kind: str, stale: str | None) -> None:
        """After a refusal: re-read the file; if it still holds the refused token, rotate it."""
        with self._lock:
            self._keys = self._read()
            current = ((self._keys or {}).get(kind) or {}).get("key")
            api_key = ((self._keys or {}).get("API") or {}).get("key")
            if current == stale and api_key and self.management_url and kind in ("inference", "management"):
                # TorchServe rewrites key_file.json with the new token
                requests.get(
                    f"{self.management_url}/token",
                    params={"type": kind},
                    headers={"Authorization": f"Bearer {api_key}"},
                    timeout=10,
                )
                self._keys = self._read()

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
