"""Cross-job dynamic batching: images from every in-flight job share forward passes.

A batch runs when it is full (the working batch size), or at once when the model is idle and no
more images are on their way (`incoming()`: images of jobs in flight still being decoded), so a
lone request never waits. While images are on their way, a partial batch waits for them at
most `max_wait_s` from its oldest image; batches form while the model is busy, so under load
that bound is rarely reached. One batch runs at a time, on a dedicated thread, so the event loop
keeps taking jobs and downloading images while the model works. Only items with equal batch
keys (e.g. equal generation options) share a batch; the model sees each item's own options. A
CUDA out-of-memory error splits the batch in halves and lowers the working batch size for the rest
of the process.

The stages around a forward pass overlap it instead of queueing behind it on the model thread.
While a batch runs, the next full one is collated (`collate`: stacking, padding, pinned copies
to the device) on a thread of its own, so it is ready the moment the model is; a partial batch
waits for the model as before, so it takes in what arrives meanwhile. (On an idle model a batch
is collated on the model thread just before its pass: there is nothing to overlap.) Each batch's
post-processing (`split`: decoding, box scaling, copies to the host) runs on a third thread while
the next batch's forward pass runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .errors import ImageError

log = logging.getLogger(__name__)

# run_batch(batch, options): one options value per item; items in a batch share a batch key.
# `batch` is what collate made of the items (the items themselves without a collate). Returns
# one output per item, or, with a `split`, the raw output split turns into them.
RunBatch = Callable[[Any, Sequence[Any]], Any]
# collate(items, options) -> the batch run_batch takes, off the model thread.
Collate = Callable[[Sequence[Any], Sequence[Any]], Any]
# split(raw, items, options) -> one output per item, off the model thread.
Split = Callable[[Any, Sequence[Any], Sequence[Any]], list[Any]]
# Batches run ahead of their post-processing by at most this many (one being split, one queued).
_MAX_SPLITS_PENDING = 2
# Batch keys are caller-defined and may be None, so "no batch is ready" needs its own marker.
_NOTHING_READY = object()


@dataclass
class _Pending:
    item: Any
    options: Any
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Queues (item, options) pairs from many coroutines and runs them in shared batches."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        split: Split = lambda raw, items, options: raw,
        collate: Collate = lambda items, options: items,
        max_batch_size: int,
        max_wait_s: float,
        batch_key: Callable[[Any, Any], Hashable] = lambda item, options: options,
        is_out_of_memory: Callable[[BaseException], bool] = lambda error: False,
        after_out_of_memory: Callable[[], None] = lambda: None,
        incoming: Callable[[], int] = lambda: 0,
        on_batch: Callable[[int, list[float], float], None] = lambda size, waited, model: None,
        is_device_fault: Callable[[BaseException], bool] = lambda error: False,
        on_device_fault: Callable[[BaseException], None] = lambda error: None,
    ) -> None:
        self._run_batch = run_batch
        self._split = split
        self._collate = collate
        self._batch_key = batch_key
        self._is_oom = is_out_of_memory
        self._after_oom = after_out_of_memory
        self._incoming = incoming
        self._on_batch = on_batch  # (size, seconds each item waited, seconds of the model)
        self._is_device_fault = is_device_fault
        self._on_device_fault = on_device_fault
        self.max_wait_s = max_wait_s
        # Lowered after an out-of-memory error and never raised again: the next batch of that
        # size would fail the same way.
        self.working_batch_size = max_batch_size
        self.batch_sizes: Counter[int] = Counter()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # One thread: one batch is collated ahead of the model, never more (device memory).
        self._collate_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collate")
        # One thread: batches are post-processed in the order they ran, never two at once.
        self._split_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="split")
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- public -----------------------------------------------------------------------------
    async def submit(self, item: Any, options: Any) -> Any:
        """Queue one item; returns its output or raises ImageError for its failure alone."""
        return await self.enqueue(item, options)

    def enqueue(self, item: Any, options: Any) -> asyncio.Future:
        """Queue one item now (no await between items of a job, so they batch together)."""
        self._bind_to_running_loop()
        future = self._loop.create_future()  # type: ignore[union-attr]
        self._queues.setdefault(self._batch_key(item, options), deque()).append(
            _Pending(item, options, future)
        )
        self._wakeup.set()
        return future

    @property
    def queue_depth(self) -> int:
        return sum(len(queue) for queue in self._queues.values()) if self._loop else 0

    async def drain(self) -> None:
        """Wait until every queued item has been processed (graceful shutdown)."""
        while self._loop is not None and (self.queue_depth or self._in_model or self._splitting):
            await asyncio.sleep(0.01)

    # --- scheduling ---------------------------------------------------------------------------
    def _bind_to_running_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        # Futures belong to one event loop; a new loop (tests, local mode) gets fresh state.
        self._loop = loop
        self._queues: dict[Hashable, deque[_Pending]] = {}
        self._wakeup = asyncio.Event()
        self._in_model = 0  # batches taken from the queues whose forward pass has not ended
        self._forwarding: asyncio.Task | None = None
        self._splitting: set[asyncio.Task] = set()
        self._scheduler = loop.create_task(self._schedule_forever(), name="batcher")

    async def _schedule_forever(self) -> None:
        while True:
            key, wait_s = self._next_ready()
            if key is _NOTHING_READY:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait_s)
                continue
            await self._wait_for_room_to_split()
            batch = self._take(key)
            if batch:
                await self._collate_then_start(key, batch)

    async def _collate_then_start(self, key: Hashable, batch: list[_Pending]) -> None:
        """Collate `batch` (while the model may still run the one before), then start its
        forward pass as soon as the model is free."""
        self._in_model += 1
        started = False
        try:
            # Collated ahead only while the model is busy: on an idle model nothing waits for
            # the model thread, which collates the batch itself and saves a thread round trip
            # (about 0.15 ms a batch on 2 loaded cores). `collated` is a holder the model thread
            # empties, so nothing else keeps the inputs alive once its pass is over.
            collated = await self._collated(batch) if self._model_busy() else []
            await self._wait_for_the_model()
            await self._wait_for_room_to_split()  # the batch that ran meanwhile may split
            alive = [p for p in batch if not p.future.done()]  # jobs cancelled meanwhile
            if len(alive) > self.working_batch_size:  # an out-of-memory error lowered it
                self._put_back(key, alive[self.working_batch_size :])
                alive = alive[: self.working_batch_size]
            if len(alive) != len(batch):
                collated.clear()  # collated again with its forward pass, as it now is
            if alive:
                loop = self._loop
                assert loop is not None
                self._forwarding = loop.create_task(self._run(alive, collated))
                self._forwarding.add_done_callback(self._forward_ended)
                started = True
        finally:
            if not started:
                self._in_model -= 1

    def _put_back(self, key: Hashable, pending: list[_Pending]) -> None:
        self._queues.setdefault(key, deque()).extendleft(reversed(pending))
        self._wakeup.set()

    async def _collated(self, batch: list[_Pending]) -> list[Any]:
        """[the collated batch], or [] when collating failed: the model thread then collates
        it again, where a failure (out of memory included) is handled as the forward pass's."""
        items, options = [p.item for p in batch], [p.options for p in batch]
        try:
            collated = await self._loop.run_in_executor(  # type: ignore[union-attr]
                self._collate_thread, self._collate, items, options
            )
        except Exception as error:
            log.warning("collating a batch of %d failed (%r); tried again", len(batch), error)
            return []
        return [collated]

    async def _wait_for_the_model(self) -> None:
        if self._model_busy():
            await asyncio.wait({self._forwarding})  # type: ignore[arg-type]

    def _forward_ended(self, forwarding: asyncio.Task) -> None:
        self._in_model -= 1
        self._wakeup.set()  # a partial batch may run now

    def _model_busy(self) -> bool:
        return self._forwarding is not None and not self._forwarding.done()

    def _next_ready(self) -> tuple[Hashable, float | None]:
        """The key whose batch should run now, or _NOTHING_READY and how long until one is.
        While the model is busy, only a full batch is: it is collated ahead."""
        now = time.monotonic()
        busy = self._model_busy()
        oldest_key: Hashable = _NOTHING_READY
        oldest_at: float | None = None
        for key, queue in self._queues.items():
            _drop_cancelled(queue)
            if not queue:
                continue
            if len(queue) >= self.working_batch_size:
                return key, None
            if oldest_at is None or queue[0].queued_at < oldest_at:
                oldest_key, oldest_at = key, queue[0].queued_at
        if oldest_at is None or busy:  # the model's end wakes the scheduler up
            return _NOTHING_READY, None
        if self._incoming() <= 0:
            return oldest_key, None  # nothing else is coming: waiting would only add latency
        remaining = oldest_at + self.max_wait_s - now
        return (oldest_key, None) if remaining <= 0 else (_NOTHING_READY, remaining)

    async def _wait_for_room_to_split(self) -> None:
        """At most _MAX_SPLITS_PENDING batches wait for post-processing, each holding its raw
        output (device memory on a GPU): a slow split slows the model down instead of piling
        up outputs."""
        while len(self._splitting) >= _MAX_SPLITS_PENDING:
            await asyncio.wait(self._splitting, return_when=asyncio.FIRST_COMPLETED)

    def _take(self, key: Hashable) -> list[_Pending]:
        queue = self._queues[key]
        batch = [queue.popleft() for _ in range(min(len(queue), self.working_batch_size))]
        if not queue:
            del self._queues[key]
        return [p for p in batch if not p.future.done()]

    async def _run(self, batch: list[_Pending], collated: list[Any]) -> None:
        """The forward pass (one batch on the model at a time); its post-processing goes on in
        the background, so the next batch can start at once."""
        self.batch_sizes[len(batch)] += 1
        started = time.monotonic()
        items, options = [p.item for p in batch], [p.options for p in batch]
        try:
            chunks = await self._loop.run_in_executor(  # type: ignore[union-attr]
                self._model_thread, self._forward_halving_on_oom, items, options, collated
            )
        except Exception as error:  # a failing batch fails its own images, never the batcher
            self._fail(batch, error)
            return
        waited = [started - pending.queued_at for pending in batch]
        try:
            self._on_batch(len(batch), waited, time.monotonic() - started)
        except Exception:  # metrics are a courtesy: they never stop the batcher
            log.exception("recording a batch failed")
        splitting = self._loop.create_task(self._finish(batch, chunks))  # type: ignore[union-attr]
        self._splitting.add(splitting)
        splitting.add_done_callback(self._splitting.discard)

    async def _finish(self, batch: list[_Pending], chunks: list[tuple[Any, int]]) -> None:
        items, options = [p.item for p in batch], [p.options for p in batch]
        try:
            outputs = await self._loop.run_in_executor(  # type: ignore[union-attr]
                self._split_thread, self._split_chunks, chunks, items, options
            )
            for pending, output in zip(batch, outputs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(output)
        except Exception as error:
            self._fail(batch, error)
        finally:  # even if failing the batch failed, no caller waits forever
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(ImageError("inference_failed", "batch lost"))

    def _fail(self, batch: list[_Pending], error: Exception) -> None:
        log.error("batch of %d failed", len(batch), exc_info=error)
        failure = ImageError(
            "inference_failed", f"model error: {type(error).__name__}: {error}"[:300]
        )
        if self._is_device_fault(error):
            self._on_device_fault(error)
            failure = ImageError(
                "inference_failed",
                f"the GPU failed ({str(error)[:150]}); this worker is being replaced, "
                "send the job again",
            )
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(failure)

    # --- split thread -------------------------------------------------------------------------
    def _split_chunks(
        self, chunks: list[tuple[Any, int]], items: list[Any], options: list[Any]
    ) -> list[Any]:
        """Each forward pass's raw output (one, or several after OOM halving) into outputs."""
        outputs: list[Any] = []
        for raw, count in chunks:
            start = len(outputs)
            part = self._split(raw, items[start : start + count], options[start : start + count])
            if len(part) != count:
                raise RuntimeError(f"model returned {len(part)} outputs for {count} inputs")
            outputs += part
        return outputs

    # --- model thread -------------------------------------------------------------------------
    def _forward_halving_on_oom(
        self, items: list[Any], options: list[Any], collated: list[Any] | None = None
    ) -> list[tuple[Any, int]]:
        """The batch's raw output with its item count; after an out-of-memory error, each
        half's, in order (each half collated again here: collating may run out of memory too).
        `collated` holds the batch as collated ahead, if it was; the pass empties it."""
        try:
            return [(self._forward(items, options, collated), len(items))]
        except Exception as error:
            if not self._is_oom(error) or len(items) == 1:
                raise
            # Its frames hold the whole batch's inputs: they go before the halves are made.
            error.__traceback__ = None
        self._after_oom()
        half = len(items) // 2
        if half < self.working_batch_size:
            log.warning(
                "out of memory at batch size %d; working batch size now %d", len(items), half
            )
            self.working_batch_size = half
        return self._forward_halving_on_oom(
            items[:half], options[:half]
        ) + self._forward_halving_on_oom(items[half:], options[half:])

    def _forward(self, items: list[Any], options: list[Any], collated: list[Any] | None) -> Any:
        batch = collated.pop() if collated else self._collate(items, options)
        return self._run_batch(batch, options)


def _drop_cancelled(queue: deque[_Pending]) -> None:
    while queue and queue[0].future.done():
        queue.popleft()
