"""The client's endpoints (one method per model and for the pipeline), and its REST transport.

:class:`BaseClient` writes each endpoint once over five transport calls (``predict``, ``stream``,
``models``, ``describe``, ``scale``); :class:`Client` implements them over TorchServe's REST APIs,
``client.grpc_client.GrpcClient`` over its gRPC APIs.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from .auth import KeyFile, is_token_refusal
from .events import JsonStream


class ApiError(Exception):
    """A non-2xx answer; ``body`` is TorchServe's or the handler's JSON error when there is one.

    Over gRPC, ``status`` is the HTTP status the server meant (the handler's, when it gave one) and
    ``grpc_code`` the gRPC status code's name.
    """

    def __init__(self, status: int, body: Any, url: str, grpc_code: str | None = None):
        self.status = status
        self.body = body
        self.grpc_code = grpc_code
        message = body.get("message") if isinstance(body, dict) else str(body)[:500]
        how = f"HTTP {status} (gRPC {grpc_code})" if grpc_code else f"HTTP {status}"
        super().__init__(f"{how} from {url}: {message}")


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


def versioned(model: str, version: str | None) -> str:
    """How the client addresses one version of a model: ``name/version`` (``name`` alone: the default)."""
    return f"{model}/{version}" if version else model


class BaseClient:
    """The endpoints, written once. A transport implements :meth:`predict`, :meth:`stream`,
    :meth:`ping`, :meth:`models`, :meth:`describe`, :meth:`scale` and, where it has one,
    :meth:`workflow_predict`."""

    transport = "no transport"

    # --- what a transport implements ------------------------------------------------------------
    def predict(
        self, model: str, body: dict[str, Any] | None = None, raw: bytes | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """One prediction: a JSON ``body`` or a ``raw`` body (an image's bytes). ``model`` is a name
        (its default version) or ``name/version`` (one version, e.g. a fine-tune: :func:`versioned`)."""
        raise NotImplementedError

    def stream(self, model: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Intermediate responses of a streamed request (``"stream": true``), each a JSON object."""
        raise NotImplementedError

    def workflow_predict(self, workflow: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError(
            f"TorchServe has no workflow call over {self.transport}: "
            "use the REST client (client.Client) for pipeline(workflow=True)"
        )

    def ping(self) -> dict[str, Any]:
        raise NotImplementedError

    def models(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def describe(self, model: str) -> dict[str, Any]:
        raise NotImplementedError

    def every_version(self, model: str) -> list[dict[str, Any]]:
        """TorchServe's description of each registered version of ``model``."""
        raise NotImplementedError

    def scale(self, model: str, min_workers: int, max_workers: int | None = None) -> Any:
        raise NotImplementedError

    def versions(self, model: str) -> list[dict[str, Any]]:
        """``{"version", "default"}`` for each registered version of ``model``, the default first
        (TorchServe 0.12 does not mark it in the list: it is the version a plain describe answers)."""
        default = self.describe(model)["modelVersion"]
        named = [str(entry["modelVersion"]) for entry in self.every_version(model)]
        return [{"version": name, "default": name == default} for name in sorted(named, key=lambda n: n != default)]

    # --- one method per endpoint ---------------------------------------------------------------
    def generate(self, prompt: str | list[str], version: str | None = None, **options: Any) -> dict[str, Any]:
        """``options``: sd's fields; ``control`` entries may carry any :data:`ImageInput` as ``image``
        (see :func:`control_entries`). ``version``: one of sd's versions (scripts/deploy_version.sh)."""
        return self.predict(versioned("sd", version), _generate_body(prompt, options))

    def generate_stream(
        self, prompt: str | list[str], version: str | None = None, **options: Any
    ) -> Iterator[dict[str, Any]]:
        """``{"step", "steps"}`` after each denoising step, then the result :meth:`generate` gives."""
        return self.stream(versioned("sd", version), _generate_body(prompt, options))

    def concepts(
        self, image: ImageInput, texts: list[str] | None = None, roi: list[list[float]] | None = None
    ) -> dict[str, Any]:
        return self.predict("clip", drop_none({"image": encode_image(image), "texts": texts, "roi": roi}))

    def segment(self, image: ImageInput, **prompts: Any) -> dict[str, Any]:
        return self.predict("sam", drop_none({"image": encode_image(image), **prompts}))

    def depth(self, image: ImageInput) -> dict[str, Any]:
        return self.predict("depth", {"image": encode_image(image)})

    def pose(self, image: ImageInput, roi: list[list[float]] | None = None) -> dict[str, Any]:
        return self.predict("pose", drop_none({"image": encode_image(image), "roi": roi}))

    def caption(
        self,
        image: ImageInput,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
    ) -> dict[str, Any]:
        """``{"caption", "model"}``; with ``prompt`` the caption continues it (and starts with it)."""
        return self.predict(
            "caption",
            drop_none(
                {
                    "image": encode_image(image),
                    "prompt": prompt,
                    "max_new_tokens": max_new_tokens,
                    "num_beams": num_beams,
                }
            ),
        )

    def upscale(self, image: ImageInput, prompt: str | None = None, **options: Any) -> dict[str, Any]:
        """``{"image", "seed", "model"}``: ``image`` 4x larger; ``options``: steps, guidance_scale,
        noise_level, seed, tile."""
        return self.predict("upscale", drop_none({"image": encode_image(image), "prompt": prompt, **options}))

    def interpolate(
        self,
        seeds: tuple[int, int] | list[int],
        frames: int,
        prompts: tuple[str, str] | list[str] | None = None,
        version: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """sd's ``interpolate``: ``images`` holds ``frames`` frames from ``seeds[0]`` (``prompts[0]``) to
        ``seeds[1]`` (``prompts[1]``); ``options``: sd's other fields (control, steps, width, ...);
        ``version``: one of sd's versions, as in :meth:`generate`."""
        interpolate = drop_none({"seeds": list(seeds), "prompts": list(prompts) if prompts else None, "frames": frames})
        body = _generate_body("", options)
        del body["prompt"]  # the prompts are interpolate's
        return self.predict(versioned("sd", version), {**body, "interpolate": interpolate})

    def pipeline(
        self, prompt: str | None = None, image: ImageInput | None = None, workflow: bool = False, **options: Any
    ) -> dict[str, Any]:
        """The whole pipeline: the ``pipeline`` model (default) or the ``pipeline`` workflow (REST only)."""
        body = _pipeline_body(prompt, image, options)
        if workflow:
            return self.workflow_predict("pipeline", body)
        return self.predict("pipeline", body)

    def pipeline_stream(
        self, prompt: str | None = None, image: ImageInput | None = None, **options: Any
    ) -> Iterator[dict[str, Any]]:
        """``{"stage", "result"}`` as each stage finishes, then the response :meth:`pipeline` gives."""
        return self.stream("pipeline", _pipeline_body(prompt, image, options))

    def interpret(self, image: ImageInput, **options: Any) -> dict[str, Any]:
        """The interpreter: the image's caption and priors, new images generated from
        them, ranked by CLIP. ``options``: ``caption`` (replaces the generated one), ``priors``,
        ``mode``, ``samples``, ``scales``, ``prior_images`` ({type: image}, each any :data:`ImageInput`),
        ``seed`` and sd's generation fields."""
        return self.predict("interpret", _interpret_body(image, options))

    def interpret_stream(self, image: ImageInput, **options: Any) -> Iterator[dict[str, Any]]:
        """``{"stage", "result"}`` for the caption, each prior and the scored samples, then the response."""
        return self.stream("interpret", _interpret_body(image, options))


class Client(BaseClient):
    """The REST transport: TorchServe's inference, management and workflow APIs over HTTP."""

    transport = "REST"

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        management_url: str = "http://127.0.0.1:8081",
        key_file: Path | str | None = None,
        token: str | None = None,
        timeout: float = 600,
    ):
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
        body = _body(response)
        if response.status_code >= 400:
            raise ApiError(response.status_code, body, path)
        return body

    def predict(
        self, model: str, body: dict[str, Any] | None = None, raw: bytes | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        extra = {"timeout": timeout} if timeout else {}
        if raw is not None:
            return self.call("inference", "POST", f"/predictions/{model}", data=raw, **extra)
        return self.call("inference", "POST", f"/predictions/{model}", json=body, **extra)

    def stream(self, model: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Intermediate responses of a streamed request (``"stream": true``), each a JSON object."""
        path = f"/predictions/{model}"
        response = self.request("inference", "POST", path, json={**body, "stream": True}, stream=True)
        if response.status_code >= 400:
            raise ApiError(response.status_code, _body(response), path)
        events = JsonStream()
        for chunk in response.iter_content(chunk_size=None):
            yield from events.feed(chunk)

    def workflow_predict(self, workflow: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("inference", "POST", f"/wfpredict/{workflow}", json=body)

    def ping(self) -> dict[str, Any]:
        return self.call("inference", "GET", "/ping")

    def models(self) -> list[dict[str, Any]]:
        return self.call("management", "GET", "/models")["models"]

    def describe(self, model: str) -> dict[str, Any]:
        return self.call("management", "GET", f"/models/{model}")[0]

    def every_version(self, model: str) -> list[dict[str, Any]]:
        return self.call("management", "GET", f"/models/{model}/all")

    def scale(self, model: str, min_workers: int, max_workers: int | None = None) -> dict[str, Any]:
        return self.call(
            "management",
            "PUT",
            f"/models/{model}",
            params={"min_worker": min_workers, "max_worker": max_workers or min_workers, "synchronous": "true"},
        )


def _body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def control_entries(
    images: Mapping[str, ImageInput], scales: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """sd's ``control`` field from ``{type: control image}`` (and optional ``{type: scale}``), in that order.

    A control image is what the type's ControlNet expects: ``depth``'s and ``pose``'s
    ``control_image`` answers, or :func:`handlers.common.edges.canny_edges` of any picture for canny.
    """
    unknown = sorted(set(scales or {}) - set(images))
    if unknown:
        raise ValueError(f"a scale for {', '.join(unknown)} without a control image of that type")
    return [
        drop_none({"type": kind, "image": encode_image(image), "scale": (scales or {}).get(kind)})
        for kind, image in images.items()
    ]


def _generate_body(prompt: str | list[str], options: dict[str, Any]) -> dict[str, Any]:
    control = options.get("control")
    if control:
        options = {
            **options,
            "control": [
                {**entry, "image": encode_image(entry["image"])} if "image" in entry else entry for entry in control
            ],
        }
    return {"prompt": prompt, **options}


def _pipeline_body(prompt: str | None, image: ImageInput | None, options: dict[str, Any]) -> dict[str, Any]:
    return drop_none({"prompt": prompt, "image": encode_image(image) if image is not None else None, **options})


def _interpret_body(image: ImageInput, options: dict[str, Any]) -> dict[str, Any]:
    prior_images = options.pop("prior_images", None)
    if prior_images:
        options["prior_images"] = {name: encode_image(value) for name, value in prior_images.items()}
    return drop_none({"image": encode_image(image), **options})


def drop_none(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without the fields left out (None): what a request sends of the options it was given."""
    return {key: value for key, value in body.items() if value is not None}
