"""What the page asks for, done server-side: drafts (a picture with its caption and priors), interpret runs
(streamed from TorchServe, relayed to the page, cancellable), choices. The web layer (studio/app.py) only
translates HTTP.

Why the priors are fetched before a run with direct ``caption``, ``depth`` and ``pose`` calls (and the
project's canny helper) rather than with an ``interpret`` call: an interpret call always generates at
least one sample per prior (minutes each on CPU with full-size weights), while these calls take seconds
and each prior appears on the page as soon as its model answers. The same pictures are then sent as
``prior_images``, so interpret does not compute them again and the samples come from exactly what the
person saw.
"""

from __future__ import annotations

import base64
import contextlib
import io
import secrets
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from PIL import Image

from client import ApiError, Client
from client.events import JsonStream
from handlers.model_settings import INTERPRET_MODES, InterpretSettings

from .settings import PRIORS, StudioSettings
from .store import Store, StoredImage, image_info


class StudioError(Exception):
    """A refusal or failure the page shows: ``message`` starts with the field it is about."""

    def __init__(self, status: int, message: str, kind: str = "InputError"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"code": self.status, "type": self.kind, "message": self.message}


@dataclass
class Prior:
    image: StoredImage
    details: dict[str, Any]  # the model's other fields (pose's people, depth's min/max), no pictures


@dataclass
class Draft:
    """A picture waiting for Interpret (in memory only: nothing is stored until a run starts)."""

    id: str
    source: StoredImage
    kind: str  # upload | generated
    name: str | None = None
    prompt: str | None = None
    model: str | None = None
    caption: str | None = None
    caption_model: str | None = None
    priors: dict[str, Prior] = field(default_factory=dict)
    locks: dict[str, threading.Lock] = field(default_factory=dict)

    def lock(self, key: str) -> threading.Lock:
        return self.locks.setdefault(key, threading.Lock())


@dataclass(frozen=True)
class SdVersion:
    name: str  # TorchServe's modelVersion: 1.0 for the base, NAME-vVERSION for a fine-tune
    default: bool  # the version /predictions/sd serves


@dataclass
class ActiveRun:
    """A run in flight: its events for the page, and what cancel needs."""

    id: str
    started: float
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    cancelled: bool = False
    response: requests.Response | None = None
    condition: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, event: dict[str, Any], final: bool = False) -> None:
        with self.condition:
            self.events.append({**event, "elapsed_s": round(time.monotonic() - self.started, 1)})
            self.done = self.done or final
            self.condition.notify_all()


class Studio:
    def __init__(self, settings: StudioSettings):
        self.settings = settings
        self.interpret: InterpretSettings = settings.interpret()
        self.inference_url, self.management_url = settings.torchserve_urls()
        self.store = Store(settings.data_path)
        self.store.interrupt_unfinished()
        self._local = threading.local()
        self._drafts: OrderedDict[str, Draft] = OrderedDict()
        self._drafts_lock = threading.Lock()
        self._runs: dict[str, ActiveRun] = {}
        self._runs_lock = threading.Lock()
        # the canny helper lives in handlers.common, whose import loads torch (seconds): do it now, aside
        threading.Thread(target=_import_edges, name="studio-warm-edges", daemon=True).start()

    # --- TorchServe ---------------------------------------------------------------------------
    def client(self, timeout: float | None = None) -> Client:
        """One client per thread and timeout (requests' Session is not meant to be shared across threads)."""
        timeout = timeout or self.settings.torchserve.call_timeout_s
        clients = self._local.__dict__.setdefault("clients", {})
        if timeout not in clients:
            clients[timeout] = Client(
                self.inference_url, self.management_url, key_file=self.settings.key_file(), timeout=timeout
            )
        return clients[timeout]

    def health(self) -> tuple[bool, str]:
        try:
            status = self.client(self.settings.torchserve.health_timeout_s).ping().get("status")
        except (requests.RequestException, ApiError) as exc:
            return False, self.unreachable(exc)
        if status != "Healthy":
            return False, f"TorchServe at {self.inference_url} answers /ping with status {status!r}"
        return True, f"TorchServe at {self.inference_url} is healthy"

    def unreachable(self, exc: Exception) -> str:
        if isinstance(exc, ApiError):
            return f"TorchServe at {self.inference_url} refused the call: {exc}"
        return (
            f"TorchServe is not reachable at {self.inference_url} ({type(exc).__name__}); "
            "start it with scripts/serve.sh, then try again"
        )

    def sd_versions(self) -> list[SdVersion]:
        """sd's registered versions, the default first (management API); [] when TorchServe does not answer."""
        try:
            described = self.client(self.settings.torchserve.health_timeout_s).versions("sd")
        except (requests.RequestException, ApiError):
            return []
        return [SdVersion(entry["version"], entry["default"]) for entry in described]

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """A client call; a model's refusal keeps its status and message, TorchServe down is a 503."""
        try:
            return getattr(self.client(), method)(*args, **kwargs)
        except ApiError as exc:
            message = exc.body.get("message") if isinstance(exc.body, dict) else str(exc.body)[:300]
            status = exc.status if 400 <= exc.status < 600 else 502
            raise StudioError(status, f"{what}: {message}", kind="ModelError") from None
        except requests.RequestException as exc:
            raise StudioError(503, f"{what}: {self.unreachable(exc)}", kind="Unavailable") from None

    # --- drafts ---------------------------------------------------------------------------------
    def checked_image(self, data: bytes, field_name: str = "image") -> StoredImage:
        limit = self.settings.limits.max_upload_bytes
        if len(data) > limit:
            raise StudioError(
                413,
                f"{field_name}: is {len(data)} bytes; the largest picture the studio takes is "
                f"{limit} bytes (limits.max_upload_bytes)",
                kind="LimitError",
            )
        if not data:
            raise StudioError(400, f"{field_name}: is empty; choose a picture file")
        try:
            image = image_info(data)
        except Exception as exc:  # PIL raises many kinds for a file that is not a picture
            detail = str(exc) or type(exc).__name__
            raise StudioError(400, f"{field_name}: is not a picture the studio can read ({detail})") from None
        limits = self.interpret.limits
        too_big = max(image.width, image.height) > limits.max_image_side
        if too_big or image.width * image.height > limits.max_image_pixels:
            raise StudioError(
                413,
                f"{field_name}: is {image.width}x{image.height}; the longest side may be at most "
                f"{limits.max_image_side} and the pixels at most {limits.max_image_pixels}",
                kind="LimitError",
            )
        return image

    def new_draft(self, source: StoredImage, kind: str, **about: Any) -> Draft:
        draft = Draft(id=uuid.uuid4().hex, source=source, kind=kind, **about)
        with self._drafts_lock:
            self._drafts[draft.id] = draft
            while len(self._drafts) > self.settings.limits.max_drafts:
                self._drafts.popitem(last=False)
        return draft

    def draft_from_upload(self, data: bytes, filename: str | None) -> Draft:
        return self.new_draft(self.checked_image(data), "upload", name=filename)

    def draft_from_prompt(self, prompt: str, seed: int | None) -> Draft:
        if not prompt.strip():
            raise StudioError(400, "prompt: is empty; type what the picture should show")
        options = {"seed": seed} if seed is not None else {}
        answer = self._call("prompt", "generate", prompt, **options)
        image = self.checked_image(base64.b64decode(answer["images"][0]), "prompt")
        return self.new_draft(image, "generated", prompt=prompt, model=answer.get("model"))

    def draft(self, draft_id: str) -> Draft:
        with self._drafts_lock:
            draft = self._drafts.get(draft_id)
        if draft is None:
            raise StudioError(
                404,
                "draft: this picture is no longer held (the studio restarted, or many pictures "
                "were uploaded since); upload it again",
                kind="NotFound",
            )
        return draft

    def draft_caption(self, draft_id: str) -> Draft:
        draft = self.draft(draft_id)
        with draft.lock("caption"):
            if draft.caption is None:
                answer = self._call("caption", "caption", base64.b64encode(draft.source.data).decode())
                draft.caption, draft.caption_model = answer["caption"], answer.get("model")
        return draft

    def draft_prior(self, draft_id: str, prior: str) -> Prior:
        if prior not in PRIORS:
            raise StudioError(404, f"prior: unknown prior {prior!r}; the priors are {list(PRIORS)}", kind="NotFound")
        draft = self.draft(draft_id)
        with draft.lock(prior):
            if prior not in draft.priors:
                draft.priors[prior] = self._compute_prior(draft, prior)
        return draft.priors[prior]

    def _compute_prior(self, draft: Draft, prior: str) -> Prior:
        if prior == "canny":
            return Prior(self._canny(draft.source), {})
        answer = self._call(prior, prior, base64.b64encode(draft.source.data).decode())
        if "control_image" not in answer:
            raise StudioError(
                502,
                f"{prior}: the server's {prior} model answers without control_image ; update the model archive",
                kind="ModelError",
            )
        image = image_info(base64.b64decode(answer["control_image"]))
        # keep what describes the prior, not its other pictures (depth's 16-bit map, colormap, overlay)
        details = {
            key: value
            for key, value in answer.items()
            if key not in ("request_id", "control_image", "depth", "colormap", "overlay")
        }
        return Prior(image, details)

    def _canny(self, source: StoredImage) -> StoredImage:
        """The edge map interpret would compute: the project's canny helper with interpret's thresholds."""
        try:
            from handlers.common.edges import canny_edges  # imports torch with handlers.common: warmed at start
        except ImportError as exc:
            raise StudioError(
                501,
                f"canny: the project's canny helper is not installed ({exc}); interpret will compute the edges",
                kind="Unavailable",
            ) from None
        thresholds = self.interpret.canny
        with Image.open(io.BytesIO(source.data)) as picture:
            edges = canny_edges(picture.convert("RGB"), thresholds.low_threshold, thresholds.high_threshold)
        buffer = io.BytesIO()
        edges.save(buffer, format="PNG")
        return image_info(buffer.getvalue())

    # --- runs -----------------------------------------------------------------------------------
    def start_run(self, form: dict[str, Any]) -> str:
        """Check the form, record the run (source, caption, the priors shown, settings), start interpret."""
        draft = self.draft(_required_text(form, "draft_id", 64))
        started_by = _text(form, "started_by", self.settings.limits.max_name_chars) or ""
        request = self._interpret_request(form, draft)
        versions = self._sd_versions(form)
        if len(versions) > 1 and "seed" not in request:
            # the versions are compared on the same noise: one seed for all of them, chosen here
            request["seed"] = secrets.randbelow(2**31)
        caption = request.get("caption")
        with self._runs_lock:
            active = [run for run in self._runs.values() if not run.done]
            if len(active) >= self.settings.limits.max_active_runs:
                raise StudioError(
                    429,
                    f"interpret: {len(active)} runs are in progress (limits.max_active_runs); wait for one to finish",
                    kind="LimitError",
                )
            priors = {
                name: (prior.image, prior.details) for name, prior in draft.priors.items() if name in request["priors"]
            }
            settings = {key: value for key, value in request.items() if key not in ("image", "caption", "prior_images")}
            if versions != [None]:
                settings["sd_versions"] = versions
            run_id = self.store.create_run(
                started_by=started_by,
                source=draft.source,
                source_kind=draft.kind,
                source_name=draft.name,
                source_prompt=draft.prompt,
                source_model=draft.model,
                proposed_caption=draft.caption,
                caption=caption,
                caption_edited=caption is not None,
                settings=settings,
                priors=priors,
            )
            run = ActiveRun(run_id, time.monotonic())
            self._runs[run_id] = run
        threading.Thread(
            target=self._interpret, args=(run, request, versions), name=f"interpret-{run_id[:8]}", daemon=True
        ).start()
        return run_id

    def _sd_versions(self, form: dict[str, Any]) -> list[str | None]:
        """The sd versions the run compares, each one interpret call (None: the default, unnamed)."""
        chosen = form.get("sd_versions")
        if chosen in (None, []):
            return [None]
        if not isinstance(chosen, list) or not all(isinstance(name, str) for name in chosen):
            raise StudioError(400, "sd_versions: must be a list of sd's version names")
        limit = self.settings.limits.max_sd_versions
        if len(chosen) > limit:
            raise StudioError(
                400, f"sd_versions: {len(chosen)} chosen; a run compares at most {limit} (limits.max_sd_versions)"
            )
        if len(set(chosen)) != len(chosen):
            raise StudioError(400, "sd_versions: each version may be chosen once")
        registered = [version.name for version in self.sd_versions()]
        if not registered:
            raise StudioError(503, f"sd_versions: cannot list sd's versions: {self.health()[1]}", kind="Unavailable")
        for i, name in enumerate(chosen):
            if name not in registered:
                raise StudioError(
                    400, f"sd_versions[{i}]: sd has no version {name[:80]!r}; registered: {', '.join(registered)}"
                )
        return list(chosen)

    def _interpret_request(self, form: dict[str, Any], draft: Draft) -> dict[str, Any]:
        limits = self.interpret.limits
        priors = form.get("priors")
        if not isinstance(priors, list) or not priors:
            raise StudioError(400, "priors: choose at least one prior")
        for i, prior in enumerate(priors):
            if prior not in PRIORS:
                raise StudioError(400, f"priors[{i}]: unknown prior {prior!r}; choose from {list(PRIORS)}")
        if len(set(priors)) != len(priors):
            raise StudioError(400, "priors: each prior may be chosen once")
        mode = form.get("mode")
        if mode not in INTERPRET_MODES:
            raise StudioError(400, f"mode: must be {' or '.join(map(repr, INTERPRET_MODES))}, got {mode!r}")
        samples = _required_integer(form, "samples", 1, limits.max_samples)
        request: dict[str, Any] = {
            "image": base64.b64encode(draft.source.data).decode(),
            "priors": priors,
            "mode": mode,
            "samples": samples,
        }
        seed = _integer(form, "seed", 0, 2**32 - 1)
        if seed is not None:
            request["seed"] = seed
        steps = _integer(form, "steps", 1, limits.max_steps)
        if steps is not None:
            request["steps"] = steps
        scales = form.get("scales") or {}
        if not isinstance(scales, dict):
            raise StudioError(400, "scales: must be an object {prior: scale}")
        checked_scales = {}
        for name, value in scales.items():
            if value in (None, ""):
                continue
            if name not in priors:
                raise StudioError(400, f"scales.{name}: is not among the chosen priors {priors}")
            try:
                scale = float(value)
            except (TypeError, ValueError):
                raise StudioError(400, f"scales.{name}: must be a number, got {value!r}") from None
            if not 0 <= scale <= limits.max_control_scale:
                raise StudioError(400, f"scales.{name}: must be between 0 and {limits.max_control_scale}, got {scale}")
            checked_scales[name] = scale
        if checked_scales:
            request["scales"] = checked_scales
        caption = form.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise StudioError(400, "caption: must be text")
        caption = (caption or "").strip()
        if len(caption) > limits.max_caption_length:
            raise StudioError(
                400,
                f"caption: is {len(caption)} characters; at most {limits.max_caption_length} "
                "(interpret's limits.max_caption_length)",
            )
        # the caption is sent only when the person changed what the caption model proposed
        if caption and caption != (draft.caption or ""):
            request["caption"] = caption
        shown = {
            name: base64.b64encode(draft.priors[name].image.data).decode() for name in priors if name in draft.priors
        }
        if shown:
            request["prior_images"] = shown
        return request

    def _interpret(self, run: ActiveRun, request: dict[str, Any], versions: list[str | None]) -> None:
        """The run's thread: one streamed interpret call per sd version, in turn (each relayed to the page
        stage by stage), then the samples of all of them recorded together."""
        try:
            finals: list[tuple[str | None, dict[str, Any]]] = []
            for version in versions:
                body = {**request, **({"sd_version": version} if version else {})}
                if finals:
                    body = _same_conditioning(body, finals[0][1])
                final = self._interpret_call(run, body, version)
                if final is None:
                    return
                finals.append((version, final))
            self._record(run, request, finals)
        except Exception as exc:
            if run.cancelled:
                return
            if isinstance(exc, StudioError):
                message = exc.message
            elif isinstance(exc, requests.RequestException):
                message = f"interpret: {self.unreachable(exc)}"
            else:
                message = f"interpret: {type(exc).__name__}: {exc}"
            self.store.end_run(run.id, "failed", message)
            run.publish({"stage": "end", "status": "failed", "message": message}, final=True)

    def _interpret_call(self, run: ActiveRun, body: dict[str, Any], version: str | None) -> dict[str, Any] | None:
        """One streamed interpret call: its final answer, or None when the run was cancelled meanwhile."""
        timeouts = self.settings.torchserve
        what = f"interpret (sd {version})" if version else "interpret"
        try:
            response = self.client().request(
                "inference",
                "POST",
                "/predictions/interpret",
                json={**body, "stream": True},
                stream=True,
                timeout=(timeouts.health_timeout_s, timeouts.stream_idle_timeout_s),
            )
            run.response = response
            if run.cancelled:
                return None
            if response.status_code >= 400:
                try:
                    answer = response.json()
                except ValueError:
                    answer = {"message": response.text[:300]}
                raise StudioError(response.status_code, f"{what}: {answer.get('message', answer)}", kind="ModelError")
            stream = JsonStream()
            final: dict[str, Any] | None = None
            for chunk in response.iter_content(chunk_size=None):
                for event in stream.feed(chunk):
                    if isinstance(event, dict) and "stage" in event:
                        run.publish({**_progress(event), **({"sd_version": version} if version else {})})
                    elif isinstance(event, dict) and "samples" in event:
                        final = event
                    elif isinstance(event, dict) and "message" in event:
                        raise StudioError(
                            int(event.get("code") or 502), f"{what}: {event['message']}", kind="ModelError"
                        )
            if run.cancelled:
                return None
            if final is None:
                raise StudioError(502, f"{what}: the stream ended without a response")
            return final
        finally:
            if run.response is not None:
                run.response.close()
                run.response = None

    def _record(
        self, run: ActiveRun, request: dict[str, Any], answers: list[tuple[str | None, dict[str, Any]]]
    ) -> None:
        """The samples of every version's answer, in the order the versions were chosen, each named
        ``sd@<version>`` as it was addressed (the base's own answers say only ``sd``); the caption, the
        priors interpret computed and ``best`` are the first answer's (the others were given the same)."""
        samples = []
        models = []
        finals = [final for _, final in answers]
        for version, final in answers:
            model = f"sd@{version}" if version else self._sd_model(final)
            models.append(model)
            for sample in final["samples"]:
                samples.append(
                    {
                        **sample,
                        "image": image_info(base64.b64decode(sample["image"])),
                        "sd_model": model if version else sample.get("model") or model,
                    }
                )
        first = finals[0]
        priors = {
            name: (
                image_info(base64.b64decode(prior["control_image"])),
                {k: v for k, v in prior.items() if k not in ("control_image", "supplied")},
            )
            for name, prior in (first.get("priors") or {}).items()
            if prior.get("control_image")
        }
        caption = first.get("caption") or {}
        if len(finals) == 1:
            timings = first.get("timings") or {}
        else:
            timings = {
                f"{model} {stage}": seconds
                for model, final in zip(models, finals, strict=True)
                for stage, seconds in (final.get("timings") or {}).items()
            }
        stored = self.store.finish_run(
            run.id,
            caption=caption.get("text", request.get("caption")),
            caption_edited=bool(caption.get("edited", "caption" in request)),
            sd_model=", ".join(dict.fromkeys(model for model in models if model)) or None,
            request_id=", ".join(str(final["request_id"]) for final in finals if final.get("request_id")) or None,
            best=first.get("best"),
            timings=timings,
            priors=priors,
            samples=samples,
        )
        if stored:
            run.publish({"stage": "end", "status": "done", "samples": len(samples)}, final=True)

    def _sd_model(self, final: dict[str, Any]) -> str | None:
        """The sd model/version that made the samples: what interpret passes on from sd's answer, else the
        default version TorchServe served when the run finished (GET /models/sd on the management API)."""
        named = {sample.get("model") for sample in final["samples"] if sample.get("model")}
        if final.get("model") or named:
            return final.get("model") or ", ".join(sorted(named))
        try:
            description = self.client(self.settings.torchserve.health_timeout_s).describe("sd")
        except (requests.RequestException, ApiError):
            return None
        return f"{description.get('modelName', 'sd')} {description.get('modelVersion', '')}".strip()

    def cancel(self, run_id: str) -> bool:
        """Stop waiting for the run and record it as cancelled. TorchServe 0.12 cannot stop a request in flight:
        the models finish the calls already queued and their answer is dropped."""
        with self._runs_lock:
            run = self._runs.get(run_id)
        if run is None or run.done:
            return False
        run.cancelled = True
        self.store.end_run(run_id, "cancelled", "cancelled on the page")
        run.publish({"stage": "end", "status": "cancelled"}, final=True)
        response = run.response
        if response is not None:
            # wake the run's thread, blocked reading the stream: shut the socket down, then close
            with contextlib.suppress(Exception):
                connection = response.raw._connection  # urllib3 2's connection of this response
                if connection is not None and connection.sock is not None:
                    connection.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                response.close()
        return True

    def delete_run(self, run_id: str) -> bool:
        self.cancel(run_id)
        with self._runs_lock:
            self._runs.pop(run_id, None)
        return self.store.delete_run(run_id)

    def events(self, run_id: str, after: int = 0) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """(index, event) as they come; (index, None) for a heartbeat. Ends after the run's last event."""
        with self._runs_lock:
            run = self._runs.get(run_id)
        if run is None:
            stored = self.store.run(run_id)
            if stored is None:
                raise StudioError(404, f"run: no run {run_id}", kind="NotFound")
            yield 0, {"stage": "end", "status": stored["status"], "message": stored["error"]}
            return
        index = after
        while True:
            with run.condition:
                if index >= len(run.events) and not run.done:
                    run.condition.wait(self.settings.events.heartbeat_s)
                pending = run.events[index:]
                done = run.done
            for event in pending:
                index += 1
                yield index, event
            if done and index >= len(run.events):
                return
            if not pending:
                yield index, None

    def progress(self, run_id: str) -> list[dict[str, Any]]:
        with self._runs_lock:
            run = self._runs.get(run_id)
        if run is None:
            return []
        with run.condition:
            return list(run.events)

    def choose(self, run_id: str, form: dict[str, Any]) -> None:
        chosen_by = _required_text(form, "chosen_by", self.settings.limits.max_name_chars)
        choices = form.get("choices")
        if not isinstance(choices, list):
            raise StudioError(400, "choices: must be a list of {sample, rating}")
        checked: list[tuple[int, int]] = []
        for i, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise StudioError(400, f"choices[{i}]: must be {{sample, rating}}")
            sample = _required_integer(choice, "sample", 0, 10**6, where=f"choices[{i}].")
            rating = _required_integer(choice, "rating", 1, 5, where=f"choices[{i}].")
            checked.append((sample, rating))
        if len({sample for sample, _ in checked}) != len(checked):
            raise StudioError(400, "choices: each sample may be chosen once")
        from .store import StoreError

        try:
            self.store.set_choices(run_id, chosen_by, checked)
        except KeyError:
            raise StudioError(404, f"run: no run {run_id}", kind="NotFound") from None
        except StoreError as exc:
            raise StudioError(409, str(exc), kind="Conflict") from None

    # --- after a run: upscale a sample, interpolate between two -----------------------------------
    def _run_samples(self, run_id: str, indices: list[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        run = self.store.run(run_id)
        if run is None or run["status"] != "done":
            raise StudioError(404, f"run: no finished run {run_id}", kind="NotFound")
        by_index = {sample["index"]: sample for sample in run["samples"]}
        missing = [index for index in indices if index not in by_index]
        if missing:
            raise StudioError(404, f"samples: run {run_id[:8]} has no sample {missing[0]}", kind="NotFound")
        return run, [by_index[index] for index in indices]

    def _image_bytes(self, sha256: str) -> bytes:
        path = self.store.image_file(sha256)
        if path is None:
            raise StudioError(404, f"image: no picture {sha256}", kind="NotFound")
        return path.read_bytes()

    def upscale_sample(self, run_id: str, index: int) -> dict[str, Any]:
        """The sample x4 (the ``upscale`` model), guided by the run's caption, seeded by the sample's seed."""
        run, [sample] = self._run_samples(run_id, [index])
        answer = self._call(
            "upscale",
            "upscale",
            self._image_bytes(sample["image_sha256"]),
            prompt=run["caption"] or "",
            seed=sample["seed"],
        )
        return {"image": answer["image"], "seed": answer["seed"]}

    def interpolate_samples(self, run_id: str, form: dict[str, Any]) -> dict[str, Any]:
        """Frames between two samples of the same priors: sd's ``interpolate`` from one's seed to the
        other's, the caption at both ends and the run's control images fixed, so the end frames are the
        two samples themselves."""
        indices = form.get("samples")
        if not (
            isinstance(indices, list)
            and len(indices) == 2
            and all(type(i) is int for i in indices)
            and indices[0] != indices[1]
        ):
            raise StudioError(400, "samples: choose two different samples")
        frames = _required_integer(form, "frames", 2, 10**3)
        run, samples = self._run_samples(run_id, indices)
        if samples[0]["priors"] != samples[1]["priors"]:
            raise StudioError(
                400,
                "samples: interpolate between two samples of the same priors "
                f"({'+'.join(samples[0]['priors'])} and {'+'.join(samples[1]['priors'])} differ)",
            )
        if samples[0]["sd_model"] != samples[1]["sd_model"]:
            raise StudioError(
                400,
                "samples: interpolate between two samples of the same sd version "
                f"({samples[0]['sd_model']} and {samples[1]['sd_model']} differ)",
            )
        settings = run["settings"]
        control = [
            {
                "type": prior,
                "image": self._image_bytes(run["priors"][prior]["image_sha256"]),
                **({"scale": settings["scales"][prior]} if prior in settings.get("scales", {}) else {}),
            }
            for prior in samples[0]["priors"]
        ]
        with Image.open(io.BytesIO(self._image_bytes(samples[0]["image_sha256"]))) as first:
            width, height = first.size
        options = {"steps": settings["steps"]} if "steps" in settings else {}
        caption = run["caption"] or ""
        answer = self._call(
            "interpolate",
            "interpolate",
            [samples[0]["seed"], samples[1]["seed"]],
            frames,
            [caption, caption],
            version=_version_of(samples[0]["sd_model"]),
            control=control,
            width=width,
            height=height,
            **options,
        )
        return {"images": answer["images"], "seeds": answer["seeds"]}


def _import_edges() -> None:
    with contextlib.suppress(ImportError):
        import handlers.common.edges  # noqa: F401


def _version_of(sd_model: str | None) -> str | None:
    """The version in sd's ``model`` answer ("sd@squares-v1"); None for the default ("sd")."""
    return sd_model.split("@", 1)[1] if sd_model and "@" in sd_model else None


def _same_conditioning(body: dict[str, Any], first: dict[str, Any]) -> dict[str, Any]:
    """A later version's call gets the caption and prior images the first call used, so that only the
    weights differ between the versions' samples (and caption, depth and pose do not run again)."""
    caption = (first.get("caption") or {}).get("text")
    shown = {
        name: prior["control_image"]
        for name, prior in (first.get("priors") or {}).items()
        if prior.get("control_image")
    }
    return {
        **body,
        **({"caption": caption} if caption and "caption" not in body else {}),
        "prior_images": {**shown, **body.get("prior_images", {})},
    }


def _progress(event: dict[str, Any]) -> dict[str, Any]:
    """A stream event for the page: which stage finished and what it says, without its pictures."""
    stage, result = event["stage"], event.get("result") or {}
    summary: dict[str, Any] = {"stage": stage}
    if stage == "caption":
        summary.update(text=result.get("text"), edited=result.get("edited"))
    elif stage == "samples":
        summary.update(count=len(result.get("samples") or []), best=result.get("best"))
    elif isinstance(result, dict):
        summary["supplied"] = bool(result.get("supplied"))
    return summary


def _required_text(form: dict[str, Any], key: str, max_chars: int) -> str:
    text = _text(form, key, max_chars)
    if text is None:
        raise StudioError(400, f"{key}: is required" + ("; type your name" if key == "chosen_by" else ""))
    return text


def _text(form: dict[str, Any], key: str, max_chars: int) -> str | None:
    """The field's text, stripped; None when it is absent or blank."""
    value = form.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise StudioError(400, f"{key}: must be text")
    value = value.strip()
    if len(value) > max_chars:
        raise StudioError(400, f"{key}: is {len(value)} characters; at most {max_chars}")
    return value


def _required_integer(form: dict[str, Any], key: str, minimum: int, maximum: int, where: str = "") -> int:
    number = _integer(form, key, minimum, maximum, where)
    if number is None:
        raise StudioError(400, f"{where}{key}: is required")
    return number


def _integer(form: dict[str, Any], key: str, minimum: int, maximum: int, where: str = "") -> int | None:
    """The field as a whole number within the bounds (``where`` prefixes its name); None when absent."""
    value = form.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise StudioError(400, f"{where}{key}: must be a whole number")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise StudioError(400, f"{where}{key}: must be a whole number, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise StudioError(400, f"{where}{key}: must be a whole number, got {value!r}")
    if not minimum <= number <= maximum:
        raise StudioError(400, f"{where}{key}: must be between {minimum} and {maximum}, got {number}")
    return number
