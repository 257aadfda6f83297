"""Pod mode's job records and result store: RunPod's job model (id, status, output, error), the
chunks a /run job streams, and finished results kept within a memory budget that counts what a
record really holds.

A finished job's output is kept as the JSON bytes every reader gets (/status, /stream, webhooks),
serialised once off the event loop: polling clients cost a copy, not a serialisation each, and
the store's byte count is the memory the output takes, not an estimate of it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .outputs import add_text_piece

IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = (
    "IN_QUEUE",
    "IN_PROGRESS",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
)
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})

# What a finished record costs beyond its output bytes: the record and its stream, its id (as
# key and value, in two ordered dicts), its error strings. Measured with 20,000 failed /run-style
# records (tests/test_server.py checks RSS growth against the reported size); an unmeasured
# constant here is how a "256 MB" store became 10 GB.
RECORD_OVERHEAD_BYTES = 2048


def encode_output(output: Any) -> bytes:
    return json.dumps(output, separators=(",", ":")).encode()


@dataclass
class JobStream:
    """The results of a /run job not yet read from /stream/{id}, in RunPod's stream contract:
    chunks of {"results": [... each with "index"]}, then one chunk with the rest of the output
    (the chunks Worker.stream yields on serverless); and, while answers are being generated,
    {"text": [{"index", "text"}]} chunks of their new text."""

    pending: list[dict] = field(default_factory=list)
    texts: list[dict] = field(default_factory=list)  # answers' new text, not read yet
    read: set[int] = field(default_factory=set)
    summary_read: bool = False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # A finished job's last take parses its output on a thread; two /stream polls at the end
    # must not both send the rest.
    taking: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, index: int, result: dict) -> None:
        self.pending.append({"index": index, **result})
        self.arrived.set()

    def add_text(self, index: int, text: str) -> None:
        add_text_piece(self.texts, index, text)
        self.arrived.set()

    def end_texts(self) -> None:
        """The job is over: its results carry the whole answers, so unread text is dropped."""
        self.texts = []

    def take(self, record: JobRecord) -> list[dict]:
        """Every chunk not read yet; a finished job's output supplies what was not streamed.
        Parses the kept output once, at the end (call it off the event loop for big ones)."""
        with self.taking:
            return self._take(record)

    def _take(self, record: JobRecord) -> list[dict]:
        texts, self.texts = self.texts, []
        results, self.pending = self.pending, []
        self.arrived.clear()
        ending = record.status == COMPLETED and not self.summary_read
        output = record.output if ending else None
        if ending:
            seen = self.read | {r["index"] for r in results}
            results += [{"index": i, **r} for i, r in enumerate(output["results"]) if i not in seen]
        self.read.update(r["index"] for r in results)
        # An image's text always comes before its result (which holds the whole answer).
        chunks = [{"text": texts}] if texts else []
        chunks += [{"results": results}] if results else []
        if ending:
            self.summary_read = True
            chunks.append({k: v for k, v in output.items() if k != "results"})
        return chunks


@dataclass
class JobRecord:
    id: str
    input: Any
    files: list[bytes] | None = None  # images uploaded as files (/predict), beside "input"
    status: str = IN_QUEUE
    output_json: bytes | None = None  # a completed job's output, as sent (encode_output)
    error: str | None = None
    error_code: str | None = None  # a failed job's JobErrorCode (errors.py)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    task: asyncio.Task | None = None
    webhook: str | None = None  # RunPod's "webhook": POSTed the final job JSON
    stream: JobStream | None = None  # /run jobs: results for /stream/{id} as batches finish
    on_text: Callable[[int, str], None] | None = None  # hears a streamed answer's pieces
    collected: bool = False  # a finished /run job's result has been read (/status, /stream)

    @property
    def output(self) -> Any:
        return None if self.output_json is None else json.loads(self.output_json)

    @output.setter
    def output(self, value: Any) -> None:
        self.output_json = None if value is None else encode_output(value)

    def to_json_bytes(self) -> bytes:
        """RunPod's job JSON (id, status, times, output or error), the kept output spliced in
        as it is: no reserialisation of a large result per request."""
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = round((self.started - self.created) * 1000)
        if self.finished is not None and self.started is not None:
            body["executionTime"] = round((self.finished - self.started) * 1000)
        if self.status != COMPLETED and self.error is not None:
            body["error"] = self.error
            if self.error_code is not None:  # where RunPod puts it: the rest of the output
                body["output"] = {"error_code": self.error_code}
        envelope = encode_output(body)
        if self.status == COMPLETED and self.output_json is not None:
            return envelope[:-1] + b',"output":' + self.output_json + b"}"
        return envelope


class JobStore:
    """Jobs by id. Finished ones are kept for RESULT_TTL_S, within a memory budget.

    The budget counts each result's JSON bytes plus what its record costs
    (RECORD_OVERHEAD_BYTES), so small results (labels, captions) really last the TTL under load,
    only large ones (embeddings of many images) are evicted early, oldest first, and the
    reported size is the memory held; /health reports how long results are being kept now.
    Admission and lookups cost the same however full the store is.
    """

    def __init__(self, ttl_s: float, max_bytes: int) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._jobs: dict[str, JobRecord] = {}
        self._active: dict[str, JobRecord] = {}  # not finished yet, in arrival order
        self._finished: OrderedDict[str, int] = OrderedDict()  # id -> bytes held, oldest first
        self.result_bytes = 0
        self.counts = {COMPLETED: 0, FAILED: 0, CANCELLED: 0}

    def add(self, record: JobRecord) -> JobRecord:
        self._jobs[record.id] = self._active[record.id] = record
        return record

    def get(self, job_id: str) -> JobRecord | None:
        self.evict()
        return self._jobs.get(job_id)

    def finish(self, record: JobRecord, status: str) -> None:
        record.status, record.finished = status, time.monotonic()
        record.input = record.files = None  # only the output is kept; inputs can be 100s of MB
        record.task = None  # a finished task keeps its coroutine's frame alive
        self._active.pop(record.id, None)
        if record.stream is not None:
            record.stream.pending.clear()  # all in the output now; /stream reads it from there
            record.stream.arrived.set()  # a waiting /stream answers with the end at once
        self.counts[status] += 1
        size = RECORD_OVERHEAD_BYTES + len(record.output_json or b"") + len(record.error or "")
        self._finished[record.id] = size
        self.result_bytes += size
        self.evict()

    def evict(self) -> None:
        now = time.monotonic()
        while self._finished:
            oldest_id, size = next(iter(self._finished.items()))
            oldest = self._jobs[oldest_id]
            expired = now - (oldest.finished or now) > self.ttl_s
            if not expired and self.result_bytes <= self.max_bytes:
                break
            del self._finished[oldest_id], self._jobs[oldest_id]
            self.result_bytes -= size

    def forget(self, job_id: str) -> None:
        """Drop a finished job whose result went out in its own response."""
        self._jobs.pop(job_id, None)
        self._active.pop(job_id, None)
        self.result_bytes -= self._finished.pop(job_id, 0)

    def kept_s(self) -> float:
        """How long the oldest kept result has been kept: RESULT_TTL_S unless memory is short."""
        if not self._finished:
            return self.ttl_s
        oldest = self._jobs[next(iter(self._finished))]
        if self.result_bytes < self.max_bytes * 0.9:
            return self.ttl_s
        return round(time.monotonic() - (oldest.finished or time.monotonic()), 1)

    def active(self) -> list[JobRecord]:
        return list(self._active.values())

    def active_count(self) -> int:
        return len(self._active)

    def uncollected(self) -> list[JobRecord]:
        """Finished /run jobs whose result nobody has read yet: what draining waits for."""
        return [
            r
            for r in self._jobs.values()
            if r.stream is not None and r.status in FINISHED and not r.collected
        ]
