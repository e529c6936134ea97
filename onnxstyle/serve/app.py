"""The HTTP side: FastAPI routes over the worker pool, and the uvicorn server that runs them.

JSON everywhere except images; every error is ``{"error": "<one line>"}`` with its status,
never a traceback nor a server path. /openapi.json describes every route, body and status
(schema.py); there is no /docs page: Swagger UI would load its assets from a CDN. The service is opened (models checked, workers warm)
before uvicorn binds its port, so a bad start is one line and an exit code, not a log dump.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import uvicorn
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..exportdir import read_manifest
from ..errors import ResourceError
from ..runtime.memory import available_bytes, estimate_run_bytes
from ..runtime.settings import RunSettings
from ..spec import LossSpec
from .events import EventHub
from .intake import Admission, ApiError, Upload, parse_settings, prepare_job
from .metrics import prometheus_text
from .schema import Deleted, Health, JobView, binary, errors, events_response, job_request_body, without_fastapi_422
from .settings import ServeConfig
from .store import DONE, FAILED, FINISHED, PREVIEW, QUEUED, RESULT, JobRecord, JobStore, parse_job_id
from .worker import WorkerSpec
from .workers import WorkerPool

log = logging.getLogger("onnxstyle.serve")
STATIC = resources.files("onnxstyle.serve") / "static"
# The page runs only its own script and shows only its own (and blob:) images: nothing
# from elsewhere, so it works offline and an injected <script> would not run.
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' blob:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"


@dataclass
class Service:
    """Everything the routes use; opened before the server listens, closed after it stops."""

    config: ServeConfig
    store: JobStore
    pool: WorkerPool
    hub: EventHub
    spec: LossSpec
    preset: str
    budget: int | None
    admission: Admission
    # Uploads are decoded one at a time: a burst must not multiply the decode memory.
    intake_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def close(self) -> int:
        """Stop the workers and close the table; the number of jobs left queued."""
        self.pool.stop(self.config.cancel_timeout)
        waiting = self.store.counts()["queued"]
        self.store.close()
        return waiting


def scrub_pairs(config: ServeConfig) -> tuple[tuple[str, str], ...]:
    pairs = [(str(config.data_dir.resolve()), "<data>"), (str(config.data_dir), "<data>")]
    pairs += [(str(config.models.resolve()), "<models>"), (str(config.models), "<models>"), (str(Path.home()), "~")]
    return tuple(pairs)


def open_service(config: ServeConfig) -> Service:
    """Check the models, open the job table, start the workers and wait until they are warm."""
    manifest = read_manifest(config.models, config.fix)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(config.data_dir)
    budget = config.memory_budget(available_bytes())
    hub = EventHub(config.event_history)
    spec = WorkerSpec(0, config.models, config.fix, config.engine, store.jobs_dir, config.preview_every, scrub_pairs(config))
    pool = WorkerPool(config, store, hub.publish_threadsafe, spec)
    try:
        pool.start()
        info = pool.worker_info()  # the estimate depends on the backend the workers chose
        admission = Admission(config.worker_share(budget), info.get("backend", "onnxruntime"), info.get("precision", "fp32"))
        check_smallest_job(manifest.spec, admission, config.workers)
    except BaseException:
        pool.stop(config.cancel_timeout)
        store.close()
        raise
    preset = str(manifest.data.get("preset", "gatys"))
    return Service(config, store, pool, hub, manifest.spec, preset, budget, admission)


def check_smallest_job(spec: LossSpec, admission: Admission, workers: int) -> None:
    """A budget that refuses even a 32 px job is a mistake to report now, not on every request."""
    smallest = estimate_run_bytes(spec, 32, 32, RunSettings(size=32), backend=admission.backend, precision=admission.precision)
    if admission.share is not None and smallest > admission.share:
        raise ResourceError(
            f"the memory budget leaves each of {workers} worker(s) {admission.share / 2**30:.2f} GiB, less than the "
            f"smallest job needs ({smallest / 2**30:.2f} GiB): use fewer --workers or a larger --memory-budget"
        )


class UploadLimit:
    """Refuse a request body over the limit with 413, from its Content-Length before reading
    it, or while it streams in. A modestly oversized body is read to its end first, so the
    client (still sending) reliably gets the answer instead of a reset connection. A body
    that has not fully arrived ``timeout`` seconds after the request began gets 408: a client
    trickling bytes (or stalled) would otherwise hold its connection and spooled parts forever."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if int(declared) <= 2 * self.limit:
                try:  # bounded too: a client that declares a body and sends none would hold us here
                    await asyncio.wait_for(_drain(receive), self.timeout)
                except asyncio.TimeoutError:
                    pass
            await _send_json(send, 413, self._message(), close=True)
            return
        seen = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        complete = False

        async def limited() -> Message:
            nonlocal seen, complete
            if complete:  # after the body only http.disconnect comes (an event stream waits for it)
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ApiError(408, f"the request body did not arrive within {self.timeout:g} s (--body-timeout)") from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the upload is over this server's limit of {self.limit / 2**20:g} MB (--max-upload)"


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _send_json(send: Send, status: int, message: str, close: bool = False) -> None:
    body = JSONResponse({"error": message}).body
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(service: Service) -> ASGIApp:
    """The ASGI application: FastAPI inside the upload limit."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.hub.bind(asyncio.get_running_loop())
        yield
        service.hub.close()

    # /openapi.json for client generators, validators and fuzzers. No /docs nor /redoc: their
    # pages load Swagger UI / ReDoc from a CDN, and the service must work offline. No slash
    # redirects: an API answers /v1/jobs/x/ with 404, not a 307 to somewhere else.
    app = FastAPI(
        title="onnxstyle", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
        openapi_url="/openapi.json", redirect_slashes=False,
        description="Neural style transfer jobs: submit a photo and style images, follow the progress, fetch the PNG.",
    )
    _add_error_handlers(app, service)
    _describe(app)
    if service.config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(service.config.cors_origins), allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Last-Event-ID"],
        )
    _add_page_routes(app)
    _add_job_routes(app, service)
    _add_ops_routes(app, service)
    return UploadLimit(app, service.config.max_upload_bytes, service.config.body_timeout)


def _describe(app: FastAPI) -> None:
    """/openapi.json: FastAPI's, made once, less the validation-error shape we never send."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_fastapi_422(default())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxstyle")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0"


def _add_error_handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        headers = {"Retry-After": "10"} if e.status == 429 else None
        if e.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return error(e.status, e.message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else "bad request"
        return error(e.status_code, message, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        return error(422, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, "internal error (see the server's log)")


def _add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")


def _auth(service: Service) -> list[Any]:
    """The token check as a route dependency; none without a token, so that the schema
    declares a bearer scheme (and 401) only where one is required."""
    token = service.config.token
    if token is None:
        return []
    # auto_error=False: a missing or non-bearer header is our 401 with our message, not FastAPI's 403.
    bearer = HTTPBearer(auto_error=False, description="the server's --token (or $ONNXSTYLE_TOKEN)")

    async def check(credentials: Optional[HTTPAuthorizationCredentials] = Security(bearer)) -> None:
        given = credentials.credentials.strip() if credentials is not None else ""
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "missing or wrong bearer token (send Authorization: Bearer <token>)")

    return [Depends(check)]


def _job(service: Service, job_id: str) -> JobRecord:
    canonical = parse_job_id(job_id)
    job = service.pool.get(canonical) if canonical else None
    if job is None:
        raise ApiError(404, f"no job {job_id[:40]!r}")
    return job


def _not_ready(job: JobRecord, what: str) -> ApiError:
    if job.status == FAILED:
        return ApiError(409, f"no {what}: the job failed ({job.error})")
    if job.status in FINISHED and job.status != DONE:
        return ApiError(409, f"no {what}: the job was {job.status}")
    if job.status == QUEUED:
        return ApiError(409, f"no {what} yet: the job is queued")
    return ApiError(409, f"no {what} yet: the job is {job.status} (step {job.step} of {job.iterations})")


def _add_job_routes(app: FastAPI, service: Service) -> None:
    auth, config = _auth(service), service.config

    @app.post(
        "/v1/jobs", status_code=202, dependencies=auth, response_model=None, openapi_extra=job_request_body(config),
        responses={202: {"model": JobView, "description": "queued; Location: the job's URL",
                         "headers": {"Location": {"schema": {"type": "string"}}}},
                   **errors(config, 400, 408, 413, 415, 422, 429)},
    )
    async def create_job(request: Request) -> JSONResponse:
        """Submit a job: multipart ``content`` (one image), ``style`` (one or more), ``settings`` (JSON)."""
        if service.pool.queue_full():
            raise ApiError(429, f"the queue is full ({service.config.queue} jobs waiting); try again later")
        content, styles, settings_text = await _read_form(request, service.config.max_styles)
        settings = parse_settings(settings_text, len(styles), service.preset, service.config)
        async with service.intake_lock:
            record = await run_in_threadpool(
                prepare_job, service.store, service.config, service.spec, service.admission, content, styles, settings
            )
        if not service.pool.submit(record):
            shutil.rmtree(service.store.job_dir(record.id), ignore_errors=True)
            raise ApiError(429, f"the queue is full ({service.config.queue} jobs waiting); try again later")
        return JSONResponse(record.public(), status_code=202, headers={"Location": f"/v1/jobs/{record.id}"})

    @app.get("/v1/jobs/{job_id}", dependencies=auth, response_model=JobView, responses=errors(config, 404))
    async def get_job(job_id: str) -> JSONResponse:
        """The job's status, progress and links."""
        return JSONResponse(_job(service, job_id).public())

    @app.delete(
        "/v1/jobs/{job_id}", dependencies=auth, response_model=None,
        responses={200: {"model": JobView | Deleted, "description": "cancelled (queued job), or deleted (finished job)"},
                   202: {"model": JobView, "description": "cancelling: the running job stops at its next evaluation"},
                   **errors(config, 404)},
    )
    async def delete_job(job_id: str) -> JSONResponse:
        """Cancel an active job, or delete a finished one and its files."""
        job = _job(service, job_id)
        if job.status in FINISHED:  # nothing to cancel: the job and its files are removed
            await run_in_threadpool(service.store.delete, job.id)
            service.hub.forget(job.id)
            return JSONResponse({"id": job.id, "status": "deleted"})
        now = service.pool.cancel(job.id) or service.pool.get(job.id) or job
        view = now.public()
        if now.status in FINISHED:
            return JSONResponse(view)
        view["cancelling"] = True  # the worker stops at its next evaluation
        return JSONResponse(view, status_code=202)

    _add_job_file_routes(app, service, auth)


def _add_job_file_routes(app: FastAPI, service: Service, auth: list[Any]) -> None:
    config = service.config
    events = events_response()

    @app.get("/v1/jobs/{job_id}/events", dependencies=auth, response_class=StreamingResponse,
             responses={200: events, **errors(config, 404)})
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        """Progress as it happens: one ``progress`` event per evaluation, then the outcome."""
        job = _job(service, job_id)
        last = request.headers.get("last-event-id", "")
        last_id = int(last) if last.strip().isdigit() else 0
        stream = service.hub.stream(lambda: service.pool.get(job.id), job.id, last_id)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    @app.get("/v1/jobs/{job_id}/preview", dependencies=auth, response_class=Response,
             responses={200: binary("image/jpeg", "the latest preview"), **errors(config, 404, 409, 422)})
    async def preview(job_id: str, step: Optional[int] = None) -> Response:
        """The latest preview JPEG (``step`` only makes each preview's URL distinct for caches)."""
        job = _job(service, job_id)
        data = await run_in_threadpool(_read, service.store.job_dir(job.id) / PREVIEW) if job.preview_step else None
        if data is None:
            raise _not_ready(_job(service, job_id), "preview")  # deleted meanwhile: 404, not 409
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/v1/jobs/{job_id}/result", dependencies=auth, response_class=Response,
             responses={200: binary("image/png", "the result, with its settings in the PNG's text"), **errors(config, 404, 409)})
    async def result(job_id: str) -> Response:
        """The result PNG, once the job is done."""
        job = _job(service, job_id)
        data = await run_in_threadpool(_read, service.store.job_dir(job.id) / RESULT) if job.status == DONE else None
        if data is None:
            raise _not_ready(_job(service, job_id), "result")  # deleted meanwhile: 404, not 409
        disposition = f'inline; filename="onnxstyle-{job.id[:8]}.png"'
        return Response(data, media_type="image/png", headers={"Content-Disposition": disposition})


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


async def _read_form(request: Request, max_styles: int) -> tuple[Upload, list[Upload], str | None]:
    """``content`` (one file), ``style`` (one or more files), ``settings`` (JSON text)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(415, "send multipart/form-data with the fields content, style and settings")
    form = await request.form(max_files=max_styles + 2, max_fields=8)
    try:
        unknown = sorted(set(form.keys()) - {"content", "style", "settings"})
        if unknown:
            raise ApiError(422, f"unknown form field {unknown[0]!r}: expected content, style and settings")
        contents = [f for f in form.getlist("content") if isinstance(f, UploadFile)]
        styles = [f for f in form.getlist("style") if isinstance(f, UploadFile)]
        if len(contents) != 1 or len(form.getlist("content")) != 1:
            raise ApiError(422, "content: exactly one image file is required")
        if not styles or len(styles) != len(form.getlist("style")):
            raise ApiError(422, "style: one or more image files are required")
        if len(styles) > max_styles:
            raise ApiError(422, f"style: {len(styles)} images, over this server's limit of {max_styles}")
        raw = form.getlist("settings")
        if len(raw) > 1:
            raise ApiError(422, "settings: give it once")
        text = await _text(raw[0]) if raw else None
        content = Upload("content", await contents[0].read())
        named = [Upload(f"style {i}" if len(styles) > 1 else "style", await f.read()) for i, f in enumerate(styles, 1)]
        return content, named, text
    finally:
        await form.close()


async def _text(value: Any) -> str:
    if isinstance(value, UploadFile):  # curl -F settings=@settings.json sends a file part
        value = await value.read()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "settings: not UTF-8 text") from None
    return str(value)


def _add_ops_routes(app: FastAPI, service: Service) -> None:
    @app.get("/healthz", response_model=Health)
    async def healthz() -> JSONResponse:
        """Liveness and load; needs no token."""
        stats = service.pool.stats()
        return JSONResponse({"status": "ok", "workers": stats["workers_ready"], "queued": stats["queued"], "running": stats["running"]})

    metrics_text = {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}

    @app.get("/metrics", dependencies=_auth(service), response_class=Response,
             responses={200: metrics_text, **errors(service.config)})
    async def metrics() -> PlainTextResponse:
        """Queue, jobs, workers, throughput and memory budget for Prometheus."""
        text = prometheus_text(service.pool.stats(), service.store.counts(), service.budget)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def run_server(config: ServeConfig, say: Callable[[str], None]) -> None:
    """Open the service, serve until SIGINT/SIGTERM, then stop the workers (jobs they were
    running go back to the queue)."""
    service = open_service(config)
    try:
        workers = service.pool.stats()
        info = service.pool.worker_info()
        budget = "unknown" if service.budget is None else f"{service.budget / 2**30:.1f} GiB"
        say(
            f"onnxstyle serve: http://{config.host}:{config.port}/ ({workers['workers_ready']} worker(s): "
            f"{info.get('provider', '?')}, {info.get('threads', '?')} thread(s) each; memory budget {budget}; "
            f"queue {config.queue}; data {config.data_dir}{'; token required' if config.token else ''})"
        )
        server = _Server(
            uvicorn.Config(
                create_app(service), host=config.host, port=config.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5, lifespan="on",
            ),
            service.hub,
        )
        with _quiet_signals():
            server.run()
    finally:
        waiting = service.close()
    say(f"onnxstyle serve: stopped{f' ({waiting} queued job(s) run at the next start)' if waiting else ''}")


@contextmanager
def _quiet_signals() -> Iterator[None]:
    """After a graceful shutdown uvicorn raises the signal again for the handler it found;
    SIGTERM's default would kill the process before the workers are stopped and their jobs
    re-queued. Handlers that only take note make a signalled stop an ordinary return (exit 0)."""
    noted: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: noted.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Server(uvicorn.Server):
    """uvicorn's Server, ending the event streams as soon as a shutdown is asked for (uvicorn
    would otherwise wait for them before it runs the lifespan's shutdown)."""

    def __init__(self, config: uvicorn.Config, hub: EventHub) -> None:
        super().__init__(config)
        self.hub = hub

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.hub.close_threadsafe()
        super().handle_exit(sig, frame)
