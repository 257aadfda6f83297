"""OpenAI's API over the worker: `/v1/models`, `/v1/chat/completions` (served by `ask`) and
`/v1/embeddings` (served by `embed`), so the `openai` client works unchanged.

One translation for both edges: the pod's `/v1/...` routes and RunPod's OpenAI passthrough
(serverless jobs whose input is `{"openai_route": "/v1/...", "openai_input": {...}}`). A request
becomes an ordinary job for `Worker.run`, so it batches with every other job, and the job's
output becomes OpenAI's response (or its error shape, with the status it implies).

What is served is what the tasks do: a chat request is one user message with its text and its
images (one answer about them all), plus system messages; a streamed answer arrives as it is
generated (beam search settles its answer only at the end: then it arrives in one content
chunk). Parameters `generate` cannot honour are refused by name, as OpenAI refuses them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask

from .bodies import BodyError, Reservation
from .errors import ErrorBody
from .worker import arrivals

# A job's "input" to its output dict: Worker.run, or the pod's admitted and counted run; an
# `on_text` keyword hears a streamed answer's pieces (Worker.run's TextListener).
RunJob = Callable[..., Awaitable[dict]]
# A request's parsed JSON body and its share of the pod's request memory (bodies.read_json).
ReadBody = Callable[[Request], Awaitable[tuple[Any, Reservation]]]

_STATUS_OF_CODE = {"invalid_input": 400, "too_large": 413, "unavailable": 503, "internal": 500}
_TYPE_OF_STATUS = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_error",
    500: "server_error",
}


class OpenAIError(Exception):
    """A refusal in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self, message: str, status: int = 400, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code

    def body(self) -> dict:
        kind = _TYPE_OF_STATUS.get(self.status, "invalid_request_error")
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


class _Request(BaseModel):
    # Unknown parameters are refused by name, as OpenAI refuses them.
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    include_usage: bool = False


class ChatRequest(_Request):
    model: str | None = None
    messages: list[dict[str, Any]] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # 0 by default, not OpenAI's 1: the answer is then the model's greedy one, the job API's.
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted at their neutral values only (refused otherwise in `_refuse_unsupported`).
    logprobs: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class EmbeddingsRequest(_Request):
    model: str | None = None
    input: str | list[str] | None = None
    messages: list[dict[str, Any]] | None = None
    # infinity's extension: "image" makes `input` a list of image URLs or data URIs.
    modality: Literal["text", "image"] = "text"
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class OpenAIService:
    """The three routes over one worker's jobs, answering as OpenAI's API does."""

    def __init__(self, run: RunJob, task_name: str, model_name: str, served_name: str) -> None:
        self.run = run
        self.task_name = task_name
        self.model_name = model_name
        self.served_name = served_name or model_name

    # --- routes -----------------------------------------------------------------------------
    def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.served_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "vision-worker",
                }
            ],
        }

    async def chat(self, body: Any) -> dict:
        request = self._chat_request(body)
        answer = await self._answer(request)
        usage = _usage(answer["usage"])
        return {
            "id": _id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer["answer"]},
                    "logprobs": None,
                    "finish_reason": answer["finish_reason"],
                }
            ],
            "usage": usage,
        }

    async def chat_stream(self, body: Any) -> AsyncIterator[str]:
        """Server-sent events: the role, the answer as it is generated, the finish reason, usage
        when asked for, then [DONE]. The request is checked and the first text awaited before
        the first event, so a refusal is an error response, not a broken stream; a job failing
        after that ends the stream with an error event."""
        request = self._chat_request(body)
        pieces: asyncio.Queue[str] = asyncio.Queue()
        job = asyncio.ensure_future(
            self._answer(request, on_text=lambda _index, text: pieces.put_nowait(text))
        )
        try:
            first = await _next_text(pieces, job)
        except BaseException:
            job.cancel()
            raise
        identity, created = _id("chatcmpl"), int(time.time())

        def chunk(choices: list[dict], **extra: Any) -> str:
            payload = {
                "id": identity,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.served_name,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n"

        def delta(content: dict, finish: str | None = None) -> dict:
            return {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}

        async def events() -> AsyncIterator[str]:
            streamed, piece = "", first
            text = chunk([delta({"role": "assistant", "content": ""})])
            try:
                # Each yield is a round trip on RunPod: what has arrived goes as one piece.
                while piece is not None:
                    yield text + chunk([delta({"content": piece})])
                    text, streamed = "", streamed + piece
                    piece = await _next_text(pieces, job)
                answer = await job
            except OpenAIError as error:
                yield text + f"data: {json.dumps(error.body())}\n\n"
                return
            finally:
                job.cancel()
            whole = answer["answer"]
            if whole.startswith(streamed) and len(whole) > len(streamed):
                text += chunk([delta({"content": whole[len(streamed) :]})])
            text += chunk([delta({}, answer["finish_reason"])])
            if request.stream_options is not None and request.stream_options.include_usage:
                text += chunk([], usage=_usage(answer["usage"]))
            yield text + "data: [DONE]\n\n"

        return events()

    async def embeddings(self, body: Any) -> dict:
        request = _validated(EmbeddingsRequest, body)
        self._check_model(request.model)
        if self.task_name != "embed":
            raise self._not_served("/v1/embeddings", "embed")
        job = {**self._embedding_inputs(request), "encoding": request.encoding_format}
        output = await self.run(job)
        _raise_for_job(output)
        items = output.get("texts") or output["results"]
        for item in items:
            if "error" in item:
                raise _item_error(item["error"], "input")
        if request.dimensions is not None and request.dimensions != items[0]["dim"]:
            raise OpenAIError(
                f"this model's embeddings have {items[0]['dim']} dimensions and cannot be "
                f"shortened to {request.dimensions}",
                param="dimensions",
            )
        tokens = sum(item.get("tokens", 0) for item in items)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": item["embedding"]}
                for i, item in enumerate(items)
            ],
            "model": self.served_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def handle(self, route: str, body: Any) -> dict | AsyncIterator[str]:
        """RunPod's passthrough and the pod's routes alike: a route and its JSON body."""
        path = "/" + route.strip("/").removeprefix("openai/")
        if path == "/v1/models":
            return self.models()
        if path == "/v1/chat/completions":
            if isinstance(body, dict) and body.get("stream") is True:
                return await self.chat_stream(body)
            return await self.chat(body)
        if path == "/v1/embeddings":
            return await self.embeddings(body)
        raise OpenAIError(
            f"{route} is not a route here: /v1/models, /v1/chat/completions and /v1/embeddings are",
            404,
        )

    # --- chat --------------------------------------------------------------------------------
    def _chat_request(self, body: Any) -> ChatRequest:
        request = _validated(ChatRequest, body)
        self._check_model(request.model)
        if self.task_name != "ask":
            raise self._not_served("/v1/chat/completions", "ask")
        _refuse_unsupported(request)
        return request

    async def _answer(
        self, request: ChatRequest, on_text: Callable[[int, str], None] | None = None
    ) -> dict:
        more = {"on_text": on_text} if on_text is not None else {}
        output = await self.run(self._ask_job(request), **more)
        _raise_for_job(output)
        (result,) = output["results"]
        if "error" in result:
            raise _item_error(result["error"], "messages")
        return result

    def _ask_job(self, request: ChatRequest) -> dict:
        system, question, images = _one_question(request.messages)
        # Several images in the message: one answer about them all, in their order.
        job: dict[str, Any] = {"images": images, "question": question}
        if len(images) > 1:
            job["together"] = True
        if system:
            job["system"] = system
        tokens = request.max_completion_tokens or request.max_tokens
        if tokens is not None:
            job["max_new_tokens"] = tokens
        if request.temperature > 0:
            job |= {"temperature": request.temperature, "top_p": request.top_p}
            if request.seed is not None:
                job["seed"] = request.seed
        if request.stop:
            job["stop"] = [request.stop] if isinstance(request.stop, str) else request.stop
        return job

    # --- embeddings --------------------------------------------------------------------------
    def _embedding_inputs(self, request: EmbeddingsRequest) -> dict:
        if (request.input is None) == (request.messages is None):
            raise OpenAIError('give either "input" or "messages"', param="input")
        if request.messages is not None:
            images = [
                image for message in request.messages for image in _images_of(message, "messages")
            ]
            if not images:
                raise OpenAIError('"messages" holds no image_url part to embed', param="messages")
            return {"images": images}
        values = [request.input] if isinstance(request.input, str) else request.input
        if not values:
            raise OpenAIError('"input" is empty', param="input")
        if request.modality == "image":
            return {"images": values}
        return {"images": [], "texts": values}

    # --- shared ------------------------------------------------------------------------------
    def _check_model(self, model: str | None) -> None:
        if model is not None and model not in {self.served_name, self.model_name}:
            raise OpenAIError(
                f"the model {model!r} does not exist here; this endpoint serves "
                f"{self.served_name!r}",
                404,
                param="model",
                code="model_not_found",
            )

    def _not_served(self, route: str, task: str) -> OpenAIError:
        return OpenAIError(
            f"{route} needs a model served as {task}; this one is served as {self.task_name}",
            404,
        )


def _refuse_unsupported(request: ChatRequest) -> None:
    if request.n != 1:
        raise OpenAIError("only n=1 is supported: one answer per request", param="n")
    if request.logprobs:
        raise OpenAIError("logprobs are not supported", param="logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise OpenAIError(f"{name} is not supported (generate has no equivalent)", param=name)


def _one_question(messages: list[dict[str, Any]]) -> tuple[str, str, list[str]]:
    """(system text, the user's text, its image URLs) from the one turn served."""
    systems, users, others = [], [], []
    for message in messages:
        role = message.get("role")
        (
            systems if role in ("system", "developer") else users if role == "user" else others
        ).append(message)
    if others or len(users) != 1:
        raise OpenAIError(
            "one user message (with system messages before it) is served: "
            "conversations with earlier turns are not",
            param="messages",
        )
    images = _images_of(users[0], "messages")
    if not images:
        raise OpenAIError(
            "the user message has no image_url part: this endpoint answers about images",
            param="messages",
        )
    question = _text_of(users[0])
    if not question.strip():
        raise OpenAIError(
            "the user message has no text: ask something about the image", param="messages"
        )
    return "\n".join(_text_of(m) for m in systems), question, images


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return content
    raise OpenAIError("a message's content is a string or a list of parts", param="messages")


def _text_of(message: dict[str, Any]) -> str:
    return "\n".join(str(p.get("text", "")) for p in _parts(message) if p.get("type") == "text")


def _images_of(message: dict[str, Any], param: str) -> list[str]:
    images = []
    for part in _parts(message):
        kind = part.get("type")
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise OpenAIError(
                    'an image_url part needs {"url": "https://..." or a data URI}', param=param
                )
            images.append(url)
        elif kind != "text":
            raise OpenAIError(f"content parts of type {kind!r} are not supported", param=param)
    return images


# Job option names as an OpenAI client knows them, in refusals of the job built from a request.
_PARAMETER_NAMES = {'"max_new_tokens"': '"max_tokens"', '"question"': "the user message's text"}


def _raise_for_job(output: dict) -> None:
    if "error" in output:
        status = _STATUS_OF_CODE.get(output.get("error_code", "internal"), 500)
        message = str(output["error"])
        for ours, theirs in _PARAMETER_NAMES.items():
            message = message.replace(ours, theirs)
        raise OpenAIError(message, status)


def _item_error(error: dict, param: str) -> OpenAIError:
    """One image's failure: the request's fault (400) unless the model failed on it (500)."""
    if error.get("code") == "inference_failed":
        return OpenAIError(error["message"], 500, code="inference_failed")
    status = 413 if error.get("code") == "too_large" else 400
    return OpenAIError(error["message"], status, param=param, code=error.get("code"))


async def _next_text(pieces: asyncio.Queue[str], job: asyncio.Future) -> str | None:
    """The answer's text that has arrived (waiting for some), or None once the job is over and
    nothing more will come; a job that ended in a refusal raises it (OpenAIError)."""
    arrived = await arrivals(pieces, job)
    if not arrived:
        job.result()  # the job is over: raises its refusal, if it was one
        return None
    return "".join(arrived)


def _usage(counts: dict) -> dict:
    prompt, completion = counts["prompt_tokens"], counts["completion_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _validated(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise OpenAIError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise OpenAIError(
                f"Unrecognized request argument supplied: {param}", param=param
            ) from None
        raise OpenAIError(f"{param}: {first['msg']}", param=param) from None


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error shape, as OpenAIError.body() writes it (OpenAPI)."""

    error: OpenAIErrorDetail


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses`: these statuses in OpenAI's shape. What the pod answers before the
    route runs is in its own shape (ErrorBody): 401 from the key check, 413 from the body limit
    (a 413 after reading is OpenAI's), and any other 4XX (405); 4XX also replaces FastAPI's 422,
    never answered here."""
    return {
        **{status: {"model": OpenAIErrorBody} for status in statuses},
        401: {"model": ErrorBody, "description": "Missing or wrong API key (POD_API_KEY)"},
        413: {"model": OpenAIErrorBody | ErrorBody, "description": "Over a size limit"},
        "4XX": {"model": ErrorBody, "description": "Any other client error, e.g. 405"},
    }


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra declaring `model` as the route's JSON body (the route reads it itself)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:  # an operation's schema cannot refer to the model's $defs
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        return [inline(item) for item in node] if isinstance(node, list) else node

    content = {"application/json": {"schema": inline(schema)}}
    return {"requestBody": {"required": True, "content": content}}


# Refusals of the pod's admission rule (429, 503) and of the request (400, 404: a model or
# route not served here), and failures of the job (500).
_ROUTE_ERRORS = (400, 404, 429, 500, 503)


def openai_routes(
    service: OpenAIService, refusal: Callable[[], Response | None], read_body: ReadBody
) -> APIRouter:
    """The pod's /v1 routes (mounted at /v1 and /openai/v1, behind POD_API_KEY as a Bearer key,
    which is what the openai client sends); `refusal` is the pod's admission rule, `read_body`
    its JSON reader, within its request memory budget."""
    router = APIRouter(tags=["openai"])

    @router.get("/models", summary="The served model", responses=_errors())
    async def models() -> JSONResponse:
        return JSONResponse(service.models())

    async def answer(request: Request, route: str) -> Response:
        if (refused := refusal()) is not None:
            status = refused.status_code
            message = json.loads(bytes(refused.body)).get("error", "refused")
            return JSONResponse(OpenAIError(message, status).body(), status)
        try:
            body, reservation = await read_body(request)
        except BodyError as error:
            return JSONResponse(OpenAIError(str(error), error.status).body(), error.status)
        try:
            result = await service.handle(route, body)
        except OpenAIError as error:
            await reservation.release()
            return JSONResponse(error.body(), error.status)
        except BaseException:
            await reservation.release()
            raise
        if isinstance(result, dict):
            await reservation.release()
            return JSONResponse(result)
        # The input is held until the stream has been sent.
        done = BackgroundTask(reservation.release)
        return StreamingResponse(result, media_type="text/event-stream", background=done)

    @router.post(
        "/chat/completions",
        summary="Chat about an image (ask)",
        openapi_extra=_json_body(ChatRequest),
        responses={
            200: {
                "description": 'The answer; with "stream": true, as server-sent events',
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_errors(*_ROUTE_ERRORS),
        },
    )
    async def chat(request: Request) -> Response:
        return await answer(request, "/v1/chat/completions")

    @router.post(
        "/embeddings",
        summary="Embeddings of images or texts (embed)",
        openapi_extra=_json_body(EmbeddingsRequest),
        responses=_errors(*_ROUTE_ERRORS),
    )
    async def embeddings(request: Request) -> Response:
        return await answer(request, "/v1/embeddings")

    return router
