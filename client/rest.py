"""REST client for image-interpreter: one method per model and for the pipeline."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Iterator

import requests
from PIL import Image

from .auth import KeyFile, is_token_refusal


class ApiError(Exception):
    """A non-2xx answer; ``body`` is TorchServe's or the handler's JSON error when there is one."""

    def __init__(self, status: int, body: Any, url: str):
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:500]
        super().__init__(f"HTTP {status} from {url}: {message}")


ImageInput = str | Path | bytes | Image.Image


def encode_image(image: ImageInput) -> str:
    """A path, raw bytes, PIL image or an already-base64 string -> base64 string."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image = buffer.getvalue()
    elif isinstance(image, Path) or (isinstance(image, str) and len(image) < 4096 and Path(image).is_file()):
        image = Path(image).read_bytes()
    if isinstance(image, bytes):
        return base64.b64encode(image).decode("ascii")
    return image


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8080", management_url: str = "http://127.0.0.1:8081",
                 key_file: Path | str | None = None, token: str | None = None, timeout: float = 600):
        self.url = url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.keys = KeyFile(key_file, self.management_url)
        self.fixed_token = token
        self.timeout = timeout
        self.session = requests.Session()

    # --- transport ----------------------------------------------------------------------------
    def request(self, kind: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send with the current token; on a token refusal refresh (re-read/rotate) and retry once."""
        base = self.management_url if kind == "management" else self.url
        kwargs.setdefault("timeout", self.timeout)
        for attempt in (1, 2):
            token = self.fixed_token or self.keys.token(kind)
            headers = dict(kwargs.pop("headers", None) or {})
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = self.session.request(method, base + path, headers=headers, **kwargs)
            if attempt == 1 and not self.fixed_token and is_token_refusal(response):
                self.keys.refresh(kind, token)
                kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
                continue
            return response
        return response

    def call(self, kind: str, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(kind, method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise ApiError(response.status_code, body, path)
        return body

    def predict(self, model: str, body: dict[str, Any] | None = None, raw: bytes | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        extra = {"timeout": timeout} if timeout else {}
        if raw is not None:
            return self.call("inference", "POST", f"/predictions/{model}", data=raw, **extra)
        return self.call("inference", "POST", f"/predictions/{model}", json=body, **extra)

    def stream(self, model: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Intermediate responses of a streamed request (``"stream": true``), each a JSON object."""
        import json

        response = self.request("inference", "POST", f"/predictions/{model}", json={**body, "stream": True},
                                stream=True)
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text, model)
        decoder = json.JSONDecoder()
        pending = ""
        for chunk in response.iter_content(chunk_size=None, decode_unicode=True):
            pending += chunk
            while pending.strip():
                try:
                    event, end = decoder.raw_decode(pending.lstrip())
                except ValueError:
                    break
                pending = pending.lstrip()[end:]
                yield event

    # --- one method per endpoint ---------------------------------------------------------------
    def generate(self, prompt: str | list[str], **options: Any) -> dict[str, Any]:
        return self.predict("sd", {"prompt": prompt, **options})

    def analyze(self, image: ImageInput, texts: list[str] | None = None, roi: list[list[float]] | None = None) -> dict[str, Any]:
        return self.predict("clip", _drop_none({"image": encode_image(image), "texts": texts, "roi": roi}))

    def segment(self, image: ImageInput, **prompts: Any) -> dict[str, Any]:
        return self.predict("sam", _drop_none({"image": encode_image(image), **prompts}))

    def depth(self, image: ImageInput) -> dict[str, Any]:
        return self.predict("depth", {"image": encode_image(image)})

    def pose(self, image: ImageInput, roi: list[list[float]] | None = None) -> dict[str, Any]:
        return self.predict("pose", _drop_none({"image": encode_image(image), "roi": roi}))

    def pipeline(self, prompt: str | None = None, image: ImageInput | None = None, workflow: bool = False,
                 **options: Any) -> dict[str, Any]:
        """The whole pipeline: ``/predictions/pipeline`` (default) or the ``/wfpredict`` workflow."""
        body = _drop_none({"prompt": prompt, "image": encode_image(image) if image is not None else None, **options})
        if workflow:
            return self.call("inference", "POST", "/wfpredict/pipeline", json=body)
        return self.predict("pipeline", body)

    def models(self) -> list[dict[str, Any]]:
        return self.call("management", "GET", "/models")["models"]

    def describe(self, model: str) -> dict[str, Any]:
        return self.call("management", "GET", f"/models/{model}")[0]

    def scale(self, model: str, min_workers: int, max_workers: int | None = None) -> dict[str, Any]:
        return self.call("management", "PUT", f"/models/{model}", params={
            "min_worker": min_workers, "max_worker": max_workers or min_workers, "synchronous": "true"})


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}
