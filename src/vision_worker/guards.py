"""The pod's guards, in front of every route: the API key, the body limits counted as bytes
arrive, and read deadlines for slow clients (uvicorn has none of its own)."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import re
import socket
from typing import Any

import h11
from fastapi import Request
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import Settings
from .errors import refusal

log = logging.getLogger(__name__)


# Open without the key: health probes, the demo page (it asks for the key) and the API docs
# (a browser cannot send the key for them; the schema is not a secret).
_OPEN_PATHS = re.compile(
    r"(/v2/[^/]+)?/health/?|/ping/?|/|/docs|/openapi\.json|/openapi-swagger\.json|/static/swagger/.*"
)


def max_request_bytes(settings: Settings) -> int:
    """The largest valid job: every image at the byte limit, base64-encoded, plus JSON slack.
    What a /predict upload may send; a JSON body is also held to MAX_BODY_MB."""
    return settings.MAX_IMAGES_PER_JOB * (settings.MAX_IMAGE_BYTES * 4 // 3 + 1024) + 64 * 1024


def max_json_body_bytes(settings: Settings) -> int:
    return min(int(settings.MAX_BODY_MB * 1024 * 1024), max_request_bytes(settings))


class _BodyTooLarge(Exception):
    pass


class LimitBodySize:
    """ASGI middleware: 413 once a request body passes its limit, counted as it arrives:
    `upload_limit` for /predict's multipart files, `limit` for every other (JSON) body.

    A declared Content-Length over the limit is refused before anything is read; a chunked body
    (no Content-Length) is cut off at the first byte over, so it is never read or spooled whole.
    """

    def __init__(self, app: Any, limit: int, upload_limit: int) -> None:
        self.app = app
        self.json_limit, self.upload_limit = limit, upload_limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"].endswith("/predict") else self.json_limit
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _send_error(send, 413, _over(limit))
            return
        received = 0
        responded = False

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal responded
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception as error:
            # Middlewares built on task groups re-raise it inside an ExceptionGroup.
            too_large = isinstance(error, _BodyTooLarge) or (
                isinstance(error, BaseExceptionGroup) and error.subgroup(_BodyTooLarge)
            )
            if not too_large:
                raise
            if not responded:
                await _send_error(send, 413, _over(limit))


def _over(limit: int) -> str:
    return (
        f"request body over {limit} bytes (MAX_BODY_MB for JSON; /predict takes each file up "
        "to MAX_IMAGE_BYTES)"
    )


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps(refusal(message, status)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def require_api_key(api_key: str | None):
    expected = f"Bearer {api_key}".encode()

    async def check(request: Request, call_next):
        if api_key is None or _OPEN_PATHS.fullmatch(request.url.path):
            return await call_next(request)
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse({"error": "missing or wrong API key"}, 401)
        return await call_next(request)

    return check


_responses_completed = itertools.count(1)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines, which uvicorn lacks: a client gets
    HEADER_TIMEOUT_S to send a request's headers and BODY_TIMEOUT_S more for its body, or the
    connection is closed. Without them ~1,100 clients sending a byte now and then held every
    file descriptor and locked everyone else out. A new connection's header clock starts when it
    connects; a kept-alive one idles under uvicorn's keep-alive timeout (KEEP_ALIVE_S) and its
    header clock starts at the next request's first byte."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 120.0
    _idle_order: int = 0  # when its last response ended, in order: the longest idle yields first

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._await_headers()
        self._make_room()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._await_headers()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def handle_events(self) -> None:
        waiting_for_headers = self.conn.their_state is h11.IDLE
        super().handle_events()
        if waiting_for_headers and self.conn.their_state is h11.SEND_BODY:
            self._set_deadline(self.body_timeout_s)
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            self._set_deadline(None)  # the request is in; the response takes its own time

    def on_response_complete(self) -> None:
        # Idle now: uvicorn's keep-alive timer (armed by super) closes the connection if no
        # request follows. Cleared first, as super may already read a pipelined next request.
        self._set_deadline(None)
        self._idle_order = next(_responses_completed)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        super().connection_lost(exc)

    def timeout_keep_alive_handler(self) -> None:
        # After the loop was held up past the keep-alive (GIL contention, a slow callback), the due
        # timer can run before the loop reads a request that arrived meanwhile; closing now would
        # drop it unanswered. Reading it cancels this timer instead.
        if not _unread_bytes_waiting(self.transport):
            super().timeout_keep_alive_handler()

    def _make_room(self) -> None:
        """At the connection limit (MAX_CONNECTIONS) the longest-idle kept-alive connections
        close for a new one: keeping a connection open between requests is a courtesy, not a
        claim on a slot. Without it, clients idling on KEEP_ALIVE_S would make uvicorn answer
        every newcomer 503 until they time out."""
        if self.limit_concurrency is None:
            return
        # uvicorn answers 503 once the open connections (this one included) reach the limit.
        excess = len(self.connections) - self.limit_concurrency + 1
        if excess <= 0:
            return
        idle = sorted(
            (c for c in self.connections if isinstance(c, DeadlineH11Protocol) and c._idle()),
            key=lambda c: c._idle_order,  # not the keep-alive timer: its clock ticks in ms, ties
        )
        for connection in idle[:excess]:
            connection.timeout_keep_alive_handler()  # what its keep-alive timer would do, early
            if connection.transport.is_closing():
                # Out of the count now: its connection_lost comes a loop turn later, possibly
                # after this newcomer's request is counted against the limit.
                self.connections.discard(connection)

    def _idle(self) -> bool:
        """Between requests on a kept-alive connection: uvicorn arms its keep-alive timer when a
        response completes and cancels it at the next request's first byte."""
        return self.timeout_keep_alive_task is not None

    def _await_headers(self) -> None:
        self._set_deadline(self.header_timeout_s)

    def _set_deadline(self, seconds: float | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None if seconds is None else self.loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        if not self.transport.is_closing():
            log.info("closing a connection that did not send its request in time")
            self.transport.close()


def _unread_bytes_waiting(transport: asyncio.BaseTransport) -> bool:
    """Whether the connection's socket holds bytes the loop has not read yet (a peek, on a
    duplicate of the descriptor: uvloop's transports expose no socket to read from)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with socket.fromfd(sock.fileno(), sock.family, sock.type) as peek:
            return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing waiting (EAGAIN), or the socket is gone: close as uvicorn would
        return False
