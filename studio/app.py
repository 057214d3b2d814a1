"""The studio's web layer: server-rendered pages (Jinja2), a few JSON endpoints the page's script calls,
and the run's progress as Server-Sent Events. Everything it does is in studio/service.py.

It serves loopback only and has no accounts, so it guards against the two ways another web page in the
same browser could reach it: a request whose Host is not the studio's own (DNS rebinding) is refused,
and so is a state-changing request whose Origin is another site's. The TorchServe token stays in this
process (the client reads key_file.json); no page, JSON answer or event carries it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from .service import Studio, StudioError
from .settings import PRIORS, StudioSettings

HERE = Path(__file__).parent
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def create_app(settings: StudioSettings) -> FastAPI:
    studio = Studio(settings)
    app = FastAPI(title="image-interpreter studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.studio = studio
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["score"] = lambda value: "–" if value is None else f"{value:.3f}"
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    allowed_hosts = {f"{host}:{settings.port}" for host in (settings.host, "127.0.0.1", "localhost")}

    @app.middleware("http")
    async def same_site_only(request: Request, call_next: Any) -> Response:
        host = request.headers.get("host", "")
        if host not in allowed_hosts:
            return _error(StudioError(403, f"host: {host!r} is not this studio's address", kind="Forbidden"))
        origin = request.headers.get("origin")
        if request.method not in SAFE_METHODS and origin and origin.split("://", 1)[-1] not in allowed_hosts:
            return _error(StudioError(403, f"origin: {origin!r} may not change this studio's data", kind="Forbidden"))
        return await call_next(request)

    @app.exception_handler(StudioError)
    async def studio_error(request: Request, exc: StudioError) -> Response:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")) or "body"
        return _error(StudioError(400, f"{where}: {first.get('msg', 'is not valid')}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(StudioError(exc.status_code, f"path: {exc.detail}", kind="HTTPError"))

    def page(request: Request, run_id: str | None = None) -> HTMLResponse:
        run = studio.store.run(run_id) if run_id else None
        if run_id and run is None:
            raise StudioError(404, f"run: no run {run_id} (it may have been deleted)", kind="NotFound")
        healthy, health_message = studio.health()
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "run": run,
                "runs": studio.store.runs(),
                "priors": PRIORS,
                "interpret": studio.interpret,
                "sd_versions": studio.sd_versions() if healthy else [],
                "healthy": healthy,
                "health_message": health_message,
                "progress": studio.progress(run_id) if run_id else [],
                "limits": settings.limits,
            },
        )

    # --- pages and fragments -----------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return page(request)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        return page(request, run_id)

    @app.get("/runs/{run_id}/panel", response_class=HTMLResponse)
    def run_panel(request: Request, run_id: str) -> HTMLResponse:
        run = studio.store.run(run_id)
        if run is None:
            raise StudioError(404, f"run: no run {run_id}", kind="NotFound")
        return templates.TemplateResponse(request, "_run.html", {"run": run, "progress": studio.progress(run_id)})

    @app.get("/fragments/runs", response_class=HTMLResponse)
    def runs_list(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "_runs.html", {"runs": studio.store.runs()})

    @app.get("/healthz")
    def healthz() -> Response:
        healthy, message = studio.health()
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", "message": message}, status_code=200 if healthy else 503
        )

    # --- pictures ------------------------------------------------------------------------------
    @app.get("/images/{sha256}")
    def stored_image(sha256: str) -> Response:
        path = studio.store.image_file(sha256) if len(sha256) == 64 and sha256.isalnum() else None
        if path is None:
            raise StudioError(404, f"image: no picture {sha256}", kind="NotFound")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})

    @app.get("/drafts/{draft_id}/{name}")
    def draft_image(draft_id: str, name: str) -> Response:
        draft = studio.draft(draft_id)
        image = draft.source if name == "source" else (draft.priors[name].image if name in draft.priors else None)
        if image is None:
            raise StudioError(404, f"image: the draft has no {name!r} picture", kind="NotFound")
        media = {"jpg": "image/jpeg"}.get(image.ext, f"image/{image.ext}")
        return Response(image.data, media_type=media)

    # --- drafts ------------------------------------------------------------------------------
    @app.post("/api/drafts")
    async def upload(request: Request, image: Annotated[UploadFile, File()]) -> dict[str, Any]:
        limit = settings.limits.max_upload_bytes
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit * 2:  # refuse a huge body from its header, before reading it
            raise StudioError(
                413,
                f"image: the upload is {declared} bytes; the largest picture the studio takes "
                f"is {limit} bytes (limits.max_upload_bytes)",
                kind="LimitError",
            )
        data = await image.read(limit + 1)
        draft = studio.draft_from_upload(data, image.filename)
        return _draft(draft)

    @app.post("/api/drafts/generate")
    def generate(form: dict[str, Any]) -> dict[str, Any]:
        prompt = form.get("prompt")
        if not isinstance(prompt, str):
            raise StudioError(400, "prompt: must be text")
        seed = form.get("seed")
        if seed not in (None, ""):
            try:
                seed = int(seed)
            except (TypeError, ValueError):
                raise StudioError(400, f"seed: must be a whole number, got {seed!r}") from None
        else:
            seed = None
        return _draft(studio.draft_from_prompt(prompt, seed))

    @app.get("/api/drafts/{draft_id}/caption")
    def caption(draft_id: str) -> dict[str, Any]:
        draft = studio.draft_caption(draft_id)
        return {"caption": draft.caption, "model": draft.caption_model}

    @app.get("/api/drafts/{draft_id}/priors/{prior}")
    def prior(draft_id: str, prior: str) -> dict[str, Any]:
        result = studio.draft_prior(draft_id, prior)
        return {"prior": prior, "url": f"/drafts/{draft_id}/{prior}", "details": _brief(result.details)}

    # --- runs --------------------------------------------------------------------------------
    @app.post("/api/runs")
    def start(form: dict[str, Any]) -> dict[str, Any]:
        run_id = studio.start_run(form)
        return {"run_id": run_id, "url": f"/runs/{run_id}"}

    @app.get("/api/runs")
    def list_runs() -> dict[str, Any]:
        return {"runs": studio.store.runs()}

    @app.get("/api/runs/{run_id}")
    def get_run(run_id: str) -> dict[str, Any]:
        run = studio.store.run(run_id)
        if run is None:
            raise StudioError(404, f"run: no run {run_id}", kind="NotFound")
        return {**run, "progress": studio.progress(run_id)}

    @app.get("/api/runs/{run_id}/events")
    def events(request: Request, run_id: str) -> Response:
        if studio.store.run(run_id) is None:
            raise StudioError(404, f"run: no run {run_id}", kind="NotFound")
        after = int(request.headers.get("last-event-id") or 0)  # EventSource's reconnect resumes here

        def sse() -> Any:
            yield "retry: 2000\n\n"
            for index, event in studio.events(run_id, after):
                yield ": still running\n\n" if event is None else f"id: {index}\ndata: {json.dumps(event)}\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/api/runs/{run_id}/cancel")
    def cancel(run_id: str) -> dict[str, Any]:
        return {"cancelled": studio.cancel(run_id)}

    @app.delete("/api/runs/{run_id}")
    def delete(run_id: str) -> dict[str, Any]:
        if not studio.delete_run(run_id):
            raise StudioError(404, f"run: no run {run_id}", kind="NotFound")
        return {"deleted": run_id}

    @app.put("/api/runs/{run_id}/choices")
    def choose(run_id: str, form: dict[str, Any]) -> dict[str, Any]:
        studio.choose(run_id, form)
        return {"choices": studio.store.run(run_id)["choices"]}  # type: ignore[index]

    @app.post("/api/runs/{run_id}/samples/{index}/upscale")
    def upscale(run_id: str, index: int) -> dict[str, Any]:
        return studio.upscale_sample(run_id, index)

    @app.post("/api/runs/{run_id}/interpolate")
    def interpolate(run_id: str, form: dict[str, Any]) -> dict[str, Any]:
        return studio.interpolate_samples(run_id, form)

    return app


def _draft(draft: Any) -> dict[str, Any]:
    return {
        "draft_id": draft.id,
        "source_url": f"/drafts/{draft.id}/source",
        "kind": draft.kind,
        "prompt": draft.prompt,
        "model": draft.model,
        "width": draft.source.width,
        "height": draft.source.height,
    }


def _brief(details: dict[str, Any]) -> dict[str, Any]:
    """A prior's details for the page: counts, not keypoint lists."""
    brief: dict[str, Any] = {}
    for key, value in details.items():
        if isinstance(value, list):
            brief[key] = len(value)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            brief[key] = value
    return brief


def _error(exc: StudioError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)
