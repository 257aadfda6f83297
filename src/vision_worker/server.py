"""Pod mode: the worker as a plain HTTP service that speaks RunPod's serverless API.

The same routes are served at the root and under /v2/{endpoint_id}/, so the official runpod SDK
works against a pod unchanged (RUNPOD_ENDPOINT_BASE_URL=http://<pod>:8000/v2). /run really runs
in the background; every request goes through the worker's dynamic batcher, so concurrent
HTTP clients share forward passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .bodies import BodyError, RequestBudget, Reservation, read_json, read_upload
from .config import Settings
from .errors import JOB_ERROR_STATUS, ErrorBody, ImageError, refusal
from .fetch import UrlFetcher, check_url_shape
from .forms import demo_html, form_options, predict_form_schema
from .guards import (
    DeadlineH11Protocol,
    LimitBodySize,
    max_json_body_bytes,
    max_request_bytes,
    require_api_key,
)
from .jobs import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    IN_PROGRESS,
    IN_QUEUE,
    JobRecord,
    JobStore,
    JobStream,
    encode_output,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .openai_api import OpenAIService, openai_routes
from .worker import TextListener, Worker

log = logging.getLogger(__name__)


# Bodies parsed at once, each on a thread: parsing a large body never stalls the event loop, and
# the memory parsing takes is bounded by this many bodies, not by the number of clients.
_PARALLEL_PARSES = 2
# Webhook deliveries in flight at once; more wait for a free thread.
_WEBHOOK_THREADS = 4
# How long GET /stream/{id} waits for the next results of a running job before answering with
# none (long polling, as RunPod's own /stream does): clients poll without spinning. Under the
# runpod SDK's 10 s request timeout, so its Job.stream() works against a pod unchanged.
STREAM_WAIT_S = 5.0


def _refused(message: str, status: int) -> JSONResponse:
    """A job refused before it runs, with the code of its status (errors.refusal)."""
    return JSONResponse(refusal(message, status), status)


@dataclass(frozen=True)
class JobBody:
    """A job request's "input" and RunPod's optional top-level "webhook"."""

    input: Any
    webhook: str | None = None
    reservation: Reservation | None = None  # its share of REQUEST_MEMORY_MB, until the job ends


class JobRequest(BaseModel):
    """RunPod's request body; "input" is validated by the worker, as on serverless."""

    model_config = ConfigDict(extra="allow")
    input: Any = Field(..., description="The job input (see the README's input contract).")


class PodServer:
    """Runs jobs for HTTP requests on one worker."""

    def __init__(self, worker: Worker, settings: Settings) -> None:
        self.worker = worker
        self.settings = settings
        self.store = JobStore(settings.RESULT_TTL_S, settings.RESULT_STORE_MB * 1024 * 1024)
        # Webhook receivers pass the image downloads' address guard: no private or metadata IPs.
        self.webhooks = UrlFetcher.from_settings(settings)
        # Deliveries have threads of their own: receivers that drip or never answer (each cut
        # at URL_TIMEOUT_S) queue behind each other, never in front of body parsing or images.
        self._webhook_threads = ThreadPoolExecutor(_WEBHOOK_THREADS, thread_name_prefix="webhook")
        self._slots: asyncio.Semaphore | None = None
        self._parsing: asyncio.Semaphore | None = None
        # What request bodies in flight may hold, from their first byte to their job's end.
        self.request_memory = RequestBudget(settings.REQUEST_MEMORY_MB * 1024 * 1024)
        # Set on SIGTERM: job routes answer 503, /status keeps answering (DrainingServer).
        self.draining = False

    def refusal(self) -> JSONResponse | None:
        """One admission rule for /run, /runsync and /predict, or None when a job may start."""
        if self.draining:
            return _refused("worker is shutting down; send the job elsewhere", 503)
        if self.worker.broken:
            return _refused(f"worker is broken: {self.worker.broken}", 503)
        if self.store.active_count() >= self.settings.MAX_STORED_RESULTS:
            return _refused("too many jobs in flight; retry later", 429)
        return None

    async def admit(self, request: Request) -> JobBody | JSONResponse:
        """The job of a JSON request that may start now, or the error response."""
        if refused := self.refusal():
            return refused
        try:
            return await self.read_job_body(request)
        except BodyError as error:
            return _refused(str(error), error.status)

    async def read_job_body(self, request: Request) -> JobBody:
        """ "input" and "webhook" of a JSON body, parsed off the event loop; raises BodyError."""
        parsed, reservation = await self.read_json(request)
        try:
            return self._job_body(parsed, reservation)
        except BodyError:
            await reservation.release()
            raise

    async def read_json(self, request: Request) -> tuple[Any, Reservation]:
        """A JSON body parsed off the event loop (two at a time) within the request budget."""
        if self._parsing is None:
            self._parsing = asyncio.Semaphore(_PARALLEL_PARSES)
        return await read_json(request, self.request_memory, self._parsing)

    def _job_body(self, parsed: Any, reservation: Reservation) -> JobBody:
        if not isinstance(parsed, dict) or "input" not in parsed:
            raise BodyError(400, 'request body must be a JSON object with an "input" key')
        webhook = parsed.get("webhook")
        if webhook is not None:
            if not isinstance(webhook, str):
                raise BodyError(400, '"webhook" must be a URL string')
            try:
                check_url_shape(webhook)
            except ImageError as error:
                raise BodyError(400, f'"webhook": {error.message}') from None
        return JobBody(parsed["input"], webhook, reservation)

    async def execute(self, record: JobRecord) -> JobRecord:
        """Run one job to a final state; never raises."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.MAX_CONCURRENCY)
        try:
            async with self._slots:
                record.status, record.started = IN_PROGRESS, time.monotonic()
                listener = record.stream.add if record.stream is not None else None
                # Uploaded files go to the worker as bytes (no base64 round trip); a worker face
                # without files (a stand-in in tests) is called as for any JSON job.
                more: dict[str, Any] = {"files": record.files} if record.files else {}
                if record.on_text is not None:
                    more["on_text"] = record.on_text
                elif record.stream is not None:  # /run: answers' text for /stream/{id}
                    more["on_text"] = record.stream.add_text
                try:
                    output = await self.worker.run(record.input, on_result=listener, **more)
                finally:
                    if record.stream is not None:
                        record.stream.end_texts()
        except asyncio.CancelledError:
            record.error = "job was cancelled"
            self.store.finish(record, CANCELLED)
            raise
        if isinstance(output, dict) and "error" in output:
            record.error = str(output["error"])
            record.error_code = output.get("error_code")
            self.store.finish(record, FAILED)
        else:
            # Serialised once, off the event loop: every reader gets these bytes as they are.
            record.output_json = await asyncio.to_thread(encode_output, output)
            self.store.finish(record, COMPLETED)
        return record

    async def run_to_output(self, job_input: Any, on_text: TextListener | None = None) -> dict:
        """A job run as /runsync runs it (counted, within MAX_CONCURRENCY): its output, or
        {"error", "error_code"}; `on_text` hears a streamed answer's pieces."""
        record = self.new_job(job_input)
        record.on_text = on_text
        record = await self.execute(record)
        self.store.forget(record.id)  # answered in the response: nobody can ask for it by id
        if record.status == COMPLETED:
            return await asyncio.to_thread(lambda: record.output)
        return {"error": record.error, "error_code": record.error_code or "internal"}

    def new_job(self, job_input: Any) -> JobRecord:
        return self.store.add(JobRecord(id=f"pod-{uuid.uuid4()}", input=job_input))

    def submit(self, job: JobBody) -> JobRecord:
        """Start a job in the background; /status reports it, and its webhook hears its end."""
        record = self.new_job(job.input)
        record.webhook = job.webhook
        record.stream = JobStream()
        running = self._execute_and_notify(record, job.reservation)
        record.task = asyncio.create_task(running, name=f"job-{record.id}")
        record.task.add_done_callback(_swallow_cancel)
        return record

    async def _execute_and_notify(
        self, record: JobRecord, reservation: Reservation | None
    ) -> JobRecord:
        try:
            await self.execute(record)
        finally:
            if reservation is not None:  # the input is gone with the job
                await reservation.release()
            if record.webhook and record.status in FINISHED:
                await self.deliver_webhook(record)
        return record

    async def deliver_webhook(self, record: JobRecord) -> bool:
        """POST the final job JSON as RunPod does: up to three tries, WEBHOOK_RETRY_S apart.
        The URL passes the image-URL address guard: no private or metadata addresses."""
        for attempt in range(3):
            if attempt:
                await asyncio.sleep(self.settings.WEBHOOK_RETRY_S)
            try:
                status = await asyncio.get_running_loop().run_in_executor(
                    self._webhook_threads,
                    self.webhooks.post_json,
                    record.webhook,
                    record.to_json_bytes(),
                )
            except ImageError as error:
                log.warning("webhook for %s: %s", record.id, error.message)
                if error.code == "forbidden_url":
                    return False  # no retry can make a forbidden address allowed
                continue
            if 200 <= status < 300:
                return True
            log.warning("webhook for %s answered HTTP %d", record.id, status)
        return False

    async def shutdown(self, timeout_s: float = 60.0) -> None:
        """Finish the jobs in flight (uvicorn has already stopped taking new requests)."""
        tasks = [r.task for r in self.store.active() if r.task is not None]
        if tasks:
            log.info("shutdown: finishing %d job(s) in flight", len(tasks))
            await asyncio.wait(tasks, timeout=timeout_s)
        await self.worker.drain()

    def health(self) -> dict[str, Any]:
        active = self.store.active()
        return {
            "status": "broken" if self.worker.broken else "draining" if self.draining else "ready",
            **({"error": self.worker.broken} if self.worker.broken else {}),
            **self.worker.describe(),
            "jobs_in_queue": sum(r.status == IN_QUEUE for r in active),
            "jobs_in_progress": sum(r.status == IN_PROGRESS for r in active),
            "results_kept_s": self.store.kept_s(),
            "result_store_mb": round(self.store.result_bytes / (1024 * 1024), 2),
        }

    def runpod_health(self) -> dict[str, Any]:
        """The body RunPod's /health returns, so the SDK's Endpoint.health() parses it."""
        active = self.store.active()
        in_progress = sum(r.status == IN_PROGRESS for r in active)
        return {
            "jobs": {
                "completed": self.store.counts[COMPLETED],
                "failed": self.store.counts[FAILED],
                "inProgress": in_progress,
                "inQueue": len(active) - in_progress,
                "retried": 0,
            },
            "workers": {"idle": int(not active), "running": int(bool(active)), "ready": 1},
        }


def create_app(worker: Worker, settings: Settings) -> FastAPI:
    pod = PodServer(worker, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await pod.shutdown()

    app = FastAPI(
        title="vision-worker",
        description=f"{settings.MODEL_NAME} ({worker.task.name}) behind RunPod's serverless API.",
        lifespan=lifespan,
        docs_url=None,  # served from local files below, not a CDN
        redoc_url=None,
    )
    app.state.pod = pod
    _errors_as_one_sentence(app)
    _offline_docs(app)
    app.middleware("http")(require_api_key(settings.POD_API_KEY))
    # Registered last, so it runs first: an oversized body is refused before anything reads it.
    app.add_middleware(
        LimitBodySize,
        limit=max_json_body_bytes(settings),
        upload_limit=max_request_bytes(settings),
    )

    # Registered before the /v2 copy of the routes so it wins over their /health.
    @app.get(
        "/v2/{endpoint_id}/health",
        tags=["health"],
        summary="RunPod's endpoint health shape",
        responses=_errors(),
    )
    async def runpod_health(endpoint_id: str) -> dict:
        return pod.runpod_health()

    router = _routes(pod, settings)
    app.include_router(router)
    app.include_router(router, prefix="/v2/{endpoint_id}", include_in_schema=False)
    openai = OpenAIService(
        pod.run_to_output, worker.task_name, settings.MODEL_NAME, settings.SERVED_MODEL_NAME
    )
    openai_router = openai_routes(openai, pod.refusal, pod.read_json)
    app.include_router(openai_router, prefix="/v1")
    # RunPod's OpenAI base URL ends in /openai/v1: the same routes there, for one client config.
    app.include_router(openai_router, prefix="/openai/v1", include_in_schema=False)
    return app


JobStatus = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"]


class JobState(BaseModel):
    """A job as /runsync, /run, /status and /cancel answer it: RunPod's shape (OpenAPI)."""

    id: str
    status: JobStatus
    delayTime: int | None = Field(None, description="Milliseconds the job waited to start.")
    executionTime: int | None = Field(None, description="Milliseconds the job ran.")
    output: Any = Field(None, description="A completed job's output; a failed one's error_code.")
    error: str | None = Field(None, description="Why the job failed or was cancelled.")


class StreamState(BaseModel):
    """A /stream answer: the results finished since the last call, as RunPod streams (OpenAPI)."""

    id: str
    status: JobStatus
    stream: list[dict[str, Any]]
    error: str | None = None
    error_code: str | None = None


# Why a route answers each error status (OpenAPI); every one has the ErrorBody shape.
_ERROR_WHY: dict[int | str, str] = {
    400: 'Not a job: the body is not JSON, has no "input", or a field is refused',
    401: "Missing or wrong API key (when POD_API_KEY is set)",
    404: "No such job, or its result has expired (RESULT_TTL_S)",
    413: "The body or one of its images is over its limit",
    429: "Too many jobs in flight (MAX_STORED_RESULTS); retry later",
    500: "The job failed inside the worker",
    503: "The worker is shutting down, broken, or still loading its model",
    "4XX": "Any other client error, e.g. 405 for a method the route does not take",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, plus 4XX: every route also answers the
    framework's errors (405, or 413 for a body over the limit), in the same shape. The 4XX also
    replaces FastAPI's 422, which this API never answers (its validation errors are 400s)."""
    # The schema inline, not as a model: FastAPI would file a model under the route's own media
    # type (text/plain for /metrics), and errors are JSON on every route.
    content = {"application/json": {"schema": ErrorBody.model_json_schema()}}
    return {s: {"description": _ERROR_WHY[s], "content": content} for s in (*statuses, "4XX")}


# What the job routes answer: RunPod's job JSON, or a refusal before the job runs.
_JOB_RESPONSES = {200: {"model": JobState}, **_errors(400, 401, 413, 429, 503)}


def _routes(pod: PodServer, settings: Settings) -> APIRouter:
    router = APIRouter()

    job_body = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": JobRequest.model_json_schema()}},
        }
    }

    @router.post(
        "/runsync",
        tags=["jobs"],
        summary="Run a job and wait for its output",
        openapi_extra=job_body,
        responses=_JOB_RESPONSES,
    )
    async def runsync(request: Request) -> JSONResponse:
        job = await pod.admit(request)
        if isinstance(job, JSONResponse):
            return job
        try:
            return _job_json(await pod.execute(pod.new_job(job.input)))
        finally:
            await job.reservation.release()

    @router.post(
        "/run",
        tags=["jobs"],
        summary="Queue a job; poll /status/{id}",
        openapi_extra=job_body,
        responses=_JOB_RESPONSES,
    )
    async def run(request: Request) -> JSONResponse:
        job = await pod.admit(request)
        if isinstance(job, JSONResponse):
            return job
        record = pod.submit(job)
        return JSONResponse({"id": record.id, "status": record.status})

    async def status(job_id: str) -> JSONResponse:
        record = pod.store.get(job_id)
        if record is None:
            return JSONResponse({"error": f"job {job_id} not found (or expired)"}, 404)
        record.collected = record.collected or record.status in FINISHED
        return _job_json(record)

    _get_and_post(
        router,
        "/status/{job_id}",
        status,
        "A job's state and, when done, its output",
        {200: {"model": JobState}, **_errors(401, 404)},
    )

    async def stream(job_id: str) -> JSONResponse:
        """A /run job's results as its batches finish; each call returns what is new."""
        record = pod.store.get(job_id)
        if record is None:
            return JSONResponse({"error": f"job {job_id} not found (or expired)"}, 404)
        if record.stream is None:
            return JSONResponse({"error": "only jobs started with /run can be streamed"}, 400)
        if record.status not in FINISHED and not record.stream.pending:
            with suppress(TimeoutError):
                await asyncio.wait_for(record.stream.arrived.wait(), STREAM_WAIT_S)
        body = {
            "id": record.id,
            "status": record.status,
            "stream": [{"output": chunk} for chunk in await _taken(record)],
        }
        record.collected = record.collected or record.status in FINISHED
        if record.error is not None:
            body["error"] = record.error
            if record.error_code is not None:
                body["error_code"] = record.error_code
        return JSONResponse(body)

    _get_and_post(
        router,
        "/stream/{job_id}",
        stream,
        "A /run job's new results, as RunPod streams",
        {200: {"model": StreamState}, **_errors(400, 401, 404)},
    )

    @router.post(
        "/cancel/{job_id}", tags=["jobs"], responses={200: {"model": JobState}, **_errors(401, 404)}
    )
    async def cancel(job_id: str) -> JSONResponse:
        record = pod.store.get(job_id)
        if record is None:
            return JSONResponse({"error": f"job {job_id} not found (or expired)"}, 404)
        if record.task is not None and not record.task.done():
            record.task.cancel()
            await asyncio.wait([record.task])
        return JSONResponse({"id": record.id, "status": record.status})

    @router.post(
        "/predict",
        tags=["jobs"],
        summary="Multipart upload: curl -F image=@cat.jpg",
        openapi_extra=predict_form_schema(pod.worker.task, settings.MAX_IMAGES_PER_JOB),
        responses={
            200: {"description": 'The job\'s output: {"results": [...]}, one per image'},
            **_errors(400, 401, 413, 429, 500, 503),
        },
    )
    async def predict(request: Request) -> JSONResponse:
        if refused := pod.refusal():
            return refused
        try:
            upload, reservation = await read_upload(
                request,
                pod.request_memory,
                max_images=settings.MAX_IMAGES_PER_JOB,
                max_image_bytes=settings.MAX_IMAGE_BYTES,
            )
        except BodyError as error:
            return _refused(str(error), error.status)
        try:
            if not upload.images:
                return _refused('no image: send files in the form field "image"', 400)
            try:
                options = form_options(pod.worker.task.Options, upload.form(), request.query_params)
            except ValueError as error:
                return _refused(str(error), 400)
            record = pod.new_job(options)
            record.files, upload.images = upload.images, []  # the job holds the only copy
            record = await pod.execute(record)
        finally:
            await reservation.release()
        if record.status == COMPLETED:
            return Response(record.output_json, media_type="application/json")
        code = record.error_code or "internal"
        body = {"error": record.error, "error_code": code}
        return JSONResponse(body, status_code=JOB_ERROR_STATUS[code])

    # Prometheus' text format, not JSON: declared so (a scraper checks the content type).
    @router.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses=_errors(401),
    )
    async def metrics() -> Response:
        return Response(pod.worker.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @router.get(
        "/", tags=["pages"], summary="Demo page: try the model", response_class=HTMLResponse
    )
    async def demo_page() -> HTMLResponse:
        """The pod template's front door: try the served model from a browser."""
        return HTMLResponse(demo_html(pod.worker.task))

    @router.get(
        "/ping",
        tags=["health"],
        summary="Load-balancer probe: 200 once ready",
        responses={
            204: {"description": "The model is still loading (no body)"},
            **_errors(503),
        },
    )
    async def ping() -> JSONResponse:
        if pod.worker.broken:  # the load balancer takes this worker out of rotation
            return JSONResponse({"status": "broken", "error": pod.worker.broken}, 503)
        return JSONResponse({"status": "healthy"})

    @router.get("/health", tags=["health"], responses=_errors(503))
    async def health() -> dict:
        return pod.health()

    return router


def _job_json(record: JobRecord) -> Response:
    """A job's JSON as kept: a large finished output is copied into the response, not
    serialised again on the event loop."""
    return Response(record.to_json_bytes(), media_type="application/json")


async def _taken(record: JobRecord) -> list[dict]:
    """A /stream call's chunks; the last one parses the kept output, off the event loop."""
    if record.status == COMPLETED and record.stream and not record.stream.summary_read:
        return await asyncio.to_thread(record.stream.take, record)
    return record.stream.take(record)


def _get_and_post(
    router: APIRouter, path: str, endpoint: Callable, summary: str, responses: dict
) -> None:
    """RunPod answers /status and /stream on GET and POST; two routes keep OpenAPI operation ids
    unique."""
    name = path.strip("/").split("/")[0]
    for method in ("GET", "POST"):
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            tags=["jobs"],
            summary=summary,
            operation_id=f"{name}_{method.lower()}",
            responses=responses,
        )


def _offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from files installed with the worker: a pod may have no internet.

    The bundled Swagger UI (4.x) renders OpenAPI 3.0 documents only, so it reads a copy of the
    schema labelled 3.0.3; FastAPI's 3.1 additions it does not know are shown as plain JSON.
    """
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/static/swagger", StaticFiles(directory=str(swagger_ui_path)), name="swagger")

    @app.get("/openapi-swagger.json", include_in_schema=False)
    async def swagger_schema() -> dict:
        return {**app.openapi(), "openapi": "3.0.3"}

    @app.get(
        "/docs", tags=["pages"], summary="This API, in Swagger UI", response_class=HTMLResponse
    )
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi-swagger.json",
            title="vision-worker API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


def _errors_as_one_sentence(app: FastAPI) -> None:
    """Framework errors (unknown route, wrong method, invalid path parameter) in the API's one
    error shape, {"error": "..."}, instead of FastAPI's {"detail": ...}; never echoing input."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg')}"[:200]}, 400)


def _swallow_cancel(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background job crashed: %r", task.exception())


class DrainingServer(uvicorn.Server):
    """uvicorn that drains on SIGTERM instead of closing its listener at once.

    A plain uvicorn stops listening on the first signal, so /run jobs still in flight finish
    but their results can never be read. Here the first SIGTERM/SIGINT makes job routes answer
    503 while /status and /health keep answering, until no job is in flight and
    SHUTDOWN_GRACE_S has passed for clients to collect results; then it exits with status 0.
    With nothing in flight and no /run result left unread it exits at once. A second signal
    exits at once, without waiting for open connections.
    """

    def __init__(
        self, config: uvicorn.Config, pod: Callable[[], PodServer | None], grace_s: float
    ) -> None:
        super().__init__(config)
        self._pod = pod  # None while the model loads: then there is nothing to drain
        self.grace_s = grace_s
        self._idle_since: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        pod = self._pod()
        if pod is None or pod.draining:
            super().handle_exit(sig, frame)
            self.force_exit = True  # the second signal: do not wait for keep-alive clients
            return
        log.info(
            "signal %d: no new jobs; results stay readable until %.0fs after the last "
            "job in flight",
            sig,
            self.grace_s,
        )
        pod.draining = True

    async def on_tick(self, counter: int) -> bool:
        pod = self._pod()
        if await super().on_tick(counter) or pod is None or not pod.draining:
            return self.should_exit
        if pod.store.active():
            self._idle_since = None
            return False
        if not pod.store.uncollected():
            return True  # nothing runs and no result waits to be read: no reason to linger
        self._idle_since = self._idle_since or time.monotonic()
        return time.monotonic() - self._idle_since >= self.grace_s


def server_config(app: FastAPI, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """The uvicorn settings pod mode runs with (tests start servers with the same ones)."""
    protocol = type(
        "DeadlineH11Protocol",
        (DeadlineH11Protocol,),
        {"header_timeout_s": settings.HEADER_TIMEOUT_S, "body_timeout_s": settings.BODY_TIMEOUT_S},
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level=settings.LOG_LEVEL.lower(),
        # Connections and requests at once: beyond it uvicorn answers 503 instead of running
        # out of file descriptors.
        limit_concurrency=settings.MAX_CONNECTIONS,
        timeout_keep_alive=settings.KEEP_ALIVE_S,
        timeout_graceful_shutdown=120,
    )
