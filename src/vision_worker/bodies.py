"""Pod mode's request bodies: what a request may cost in memory, counted as a whole.

A JSON job is the body's bytes, then what parsing makes of them (a string with one escaped emoji
in it is four bytes a character in Python), then the parsed input, held while the job runs. All
of that is reserved from one process-wide budget (REQUEST_MEMORY_MB) shared by every body in
flight: a request that would not fit waits a moment for room and is then refused with 503 and a
sentence, never an out-of-memory kill. Multipart uploads (/predict) are parsed as they stream
in: a file holds at most one byte over MAX_IMAGE_BYTES (that image then fails alone, as
too_large), form fields are bounded in number and size, and nothing is spooled to disk.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import FormData
from starlette.requests import ClientDisconnect, Request

from .memory import return_free_memory

_MIB = 1024 * 1024
# Objects and arrays one JSON body may hold; counted on the raw bytes, before parsing.
MAX_JSON_CONTAINERS = 10_000
# Values (every "," and ":" is at most one more): each small value costs ~50 bytes once parsed,
# 10x its bytes, so their number bounds what parsing a body can make of it.
MAX_JSON_VALUES = 200_000
# Reserved per body byte while a JSON body is read and parsed: the bytes as received, the body
# joined, and the parsed strings at up to four bytes a character (one non-ASCII escape makes
# Python store a whole string at the width of its widest character). Measured: 31 MB of
# base64 behind one escaped emoji parses to 126 MB.
JSON_PARSE_FACTOR = 6
# Reserved per uploaded byte: the chunk as received and the part it is copied into (the job
# then carries the part's bytes as they are).
UPLOAD_FACTOR = 2
# A request that held this much gives the heap back to the system when it is done...
_TRIM_AFTER_BYTES = 16 * _MIB
# ... this long after, when nothing of it is left (its error's traceback, the answer sent).
TRIM_DELAY_S = 0.5
# How long a request waits for room in the budget before it is refused with 503.
BUDGET_WAIT_S = 10.0
# Form fields (options) a /predict upload may carry besides its images, and bytes in each.
MAX_FORM_FIELDS = 64
MAX_FORM_FIELD_BYTES = 256 * 1024


class BodyError(Exception):
    """A request body that is not a job: answered with {"error": ...} and a 4xx/5xx status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestBudget:
    """Bytes of memory that request bodies in flight may hold, process-wide."""

    def __init__(self, total_bytes: int) -> None:
        self.total = total_bytes
        self.in_use = 0
        self._freed = asyncio.Condition()
        self._trim: asyncio.Task | None = None

    def trim_soon(self) -> None:
        """Give the heap back to the system shortly, once the request that asked is gone
        entirely (its error's traceback, the answer sent); one trim serves a burst of large
        requests instead of one each."""
        if self._trim is None or self._trim.done():
            self._trim = asyncio.get_running_loop().create_task(self._trim_after(TRIM_DELAY_S))

    @staticmethod
    async def _trim_after(delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await asyncio.to_thread(return_free_memory)

    async def reserve(self, nbytes: int, wait_s: float = BUDGET_WAIT_S) -> Reservation:
        """Room for `nbytes`, waiting up to `wait_s` for other requests to give theirs back;
        raises BodyError (413 when it can never fit, 503 when it does not fit now)."""
        reservation = Reservation(self)
        await reservation.grow(nbytes, wait_s)
        return reservation

    def _too_much(self, nbytes: int) -> BodyError:
        return BodyError(
            413,
            f"this request needs {nbytes / _MIB:.0f} MB of memory, over the "
            f"{self.total / _MIB:.0f} MB all requests may hold (REQUEST_MEMORY_MB); send "
            "large images as URLs or through /predict",
        )

    async def _take(self, nbytes: int, wait_s: float) -> None:
        if nbytes > self.total:
            raise self._too_much(nbytes)
        async with self._freed:
            try:
                await asyncio.wait_for(
                    self._freed.wait_for(lambda: self.in_use + nbytes <= self.total), wait_s
                )
            except TimeoutError:
                raise BodyError(
                    503,
                    "the worker's request memory is in use by other requests "
                    "(REQUEST_MEMORY_MB); retry shortly",
                ) from None
            self.in_use += nbytes

    async def _give_back(self, nbytes: int) -> None:
        async with self._freed:
            self.in_use -= nbytes
            self._freed.notify_all()


@dataclass
class Reservation:
    """One request's share of the budget; grows as its body arrives, shrinks to what the parsed
    input holds, and is released when the job no longer needs its input."""

    budget: RequestBudget
    nbytes: int = 0
    # The most it held: a body is parsed and shrunk to its input long before the job ends, but
    # its chunks and the parse's garbage were heap allocations all the same.
    peak: int = 0

    async def grow(self, nbytes: int, wait_s: float = BUDGET_WAIT_S) -> None:
        if self.nbytes + nbytes > self.budget.total:
            raise self.budget._too_much(self.nbytes + nbytes)
        await self.budget._take(nbytes, wait_s)
        self.nbytes += nbytes
        self.peak = max(self.peak, self.nbytes)

    async def resize(self, nbytes: int) -> None:
        """Down to what is still held (growing goes through `grow`, which may wait)."""
        if nbytes < self.nbytes:
            await self.budget._give_back(self.nbytes - nbytes)
            self.nbytes = nbytes

    async def release(self) -> None:
        await self.resize(0)
        if self.peak >= _TRIM_AFTER_BYTES:  # heap allocations glibc would otherwise keep
            self.peak = 0
            self.budget.trim_soon()


async def read_json(
    request: Request, budget: RequestBudget, parsing: asyncio.Semaphore
) -> tuple[Any, Reservation]:
    """The parsed JSON body and its reservation (the caller releases it); raises BodyError.
    The reservation covers the body as it arrives, then what the parsed value holds."""
    declared = request.headers.get("content-length", "")
    expected = int(declared) if declared.isdigit() else 0
    reservation = await budget.reserve(JSON_PARSE_FACTOR * expected)
    try:
        chunks = []
        async for chunk in _chunks(request):
            if not declared.isdigit():  # chunked: counted as it comes
                await reservation.grow(JSON_PARSE_FACTOR * len(chunk))
            chunks.append(chunk)
        body = b"".join(chunks)
        del chunks
        _check_shape(body)
        async with parsing:
            parsed, held = await asyncio.to_thread(_parse_and_measure, body)
        del body
        await reservation.resize(held)
        return parsed, reservation
    except BaseException:
        # The error's traceback holds this frame, and may sit in a reference cycle until the
        # garbage collector's next full pass (minutes): the body must not ride along.
        chunks = body = None  # noqa: F841
        await reservation.release()
        raise


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:  # a client cut off mid-body (e.g. by the body deadline): no traceback
        raise BodyError(400, "the client went away before sending its whole body") from None


def _check_shape(body: bytes) -> None:
    if body.count(b"{") + body.count(b"[") > MAX_JSON_CONTAINERS:
        raise BodyError(400, f"request body has over {MAX_JSON_CONTAINERS} objects and arrays")
    if body.count(b",") + body.count(b":") > MAX_JSON_VALUES:
        raise BodyError(400, f"request body has over {MAX_JSON_VALUES} values")


def _parse_and_measure(body: bytes) -> tuple[Any, int]:
    try:
        parsed = json.loads(body)
    except RecursionError:
        raise BodyError(400, "request body is nested too deeply") from None
    except ValueError as error:  # never echoes the body, only where it broke
        raise BodyError(400, f"request body is not valid JSON: {error}"[:200]) from None
    return parsed, held_bytes(parsed)


def held_bytes(value: Any) -> int:
    """Memory a parsed JSON value holds: every string, number and container in it (bounded in
    number by MAX_JSON_VALUES, so walking them is cheap)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


@dataclass
class Upload:
    """A multipart form as it streamed in: the image files' bytes and the other fields."""

    images: list[bytes] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)

    def form(self) -> FormData:
        return FormData(self.fields)


async def read_upload(
    request: Request,
    budget: RequestBudget,
    *,
    max_images: int,
    max_image_bytes: int,
) -> tuple[Upload, Reservation]:
    """A multipart/form-data body parsed as it arrives; raises BodyError. An image part keeps at
    most one byte over `max_image_bytes`, form fields are bounded in number and size, so no
    more than the limits is ever held (nothing goes to disk)."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BodyError(400, 'send images as multipart/form-data files in the field "image"')
    form = _FormReader(max_images, max_image_bytes)
    parser = MultipartParser(boundary, form.callbacks())
    reservation = await budget.reserve(0)
    try:
        async for chunk in _chunks(request):
            await reservation.grow(UPLOAD_FACTOR * len(chunk))
            parser.write(chunk)
            if form.error is not None:
                raise form.error
        parser.finalize()
        if form.error is not None:
            raise form.error
        if form.files > max_images:
            raise BodyError(413, f"too many images: {form.files}, at most {max_images}")
        return form.upload, reservation
    except MultipartParseError as error:  # the client's malformed body: a 400, not a 500
        form = parser = None  # as in read_json: no part rides on the error
        await reservation.release()
        raise BodyError(400, f"the multipart body does not parse: {error}"[:200]) from None
    except BaseException:
        form = parser = None  # as in read_json: no part rides on the error
        await reservation.release()
        raise


class _FormReader:
    """python-multipart callbacks collecting parts within their limits; the first limit broken
    is kept in `error` (callbacks cannot raise through the parser cleanly)."""

    def __init__(self, max_images: int, max_image_bytes: int) -> None:
        self.max_images, self.max_image_bytes = max_images, max_image_bytes
        self.upload = Upload()
        self.error: BodyError | None = None
        self._header_name = self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._data = bytearray()
        self._name = ""
        self._is_file = False
        self.files = 0  # image files seen, those over max_images included (their bytes are not)

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._add_header_name(data[start:end]),
            "on_header_value": lambda data, start, end: self._add_header_value(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self._add_data(data[start:end]),
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._data = {}, bytearray()

    def _add_header_name(self, piece: bytes) -> None:
        self._header_name += piece

    def _add_header_value(self, piece: bytes) -> None:
        self._header_value += piece

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = b"filename" in params
        if self._is_file and self._name == "image":
            self.files += 1
        if not self._is_file and len(self.upload.fields) >= MAX_FORM_FIELDS:
            self._fail(400, f"too many form fields: at most {MAX_FORM_FIELDS}")

    def _add_data(self, piece: bytes) -> None:
        if self.error is not None or self.files > self.max_images:
            return  # a file past the count is only counted, to say how many were sent
        if self._is_file:
            # One byte over the limit is kept, the rest not: that image fails alone as
            # too_large, as an oversized base64 image does, and the part costs no more.
            self._data += piece[: self.max_image_bytes + 1 - len(self._data)]
            return
        self._data += piece
        if len(self._data) > MAX_FORM_FIELD_BYTES:
            self._fail(413, f'form field "{self._name[:40]}" over {MAX_FORM_FIELD_BYTES} bytes')

    def _end(self) -> None:
        if self.error is not None:
            return
        if self._is_file:
            if self._name == "image" and self.files <= self.max_images:
                self.upload.images.append(bytes(self._data))
        else:
            self.upload.fields.append((self._name, self._data.decode("utf-8", "replace")))
        self._data = bytearray()

    def _fail(self, status: int, message: str) -> None:
        self.error = self.error or BodyError(status, message)
        self._data = bytearray()
