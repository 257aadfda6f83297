"""A job through the stages: validate -> load images -> batch -> predict -> encode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from PIL import Image

from .batcher import DynamicBatcher
from .config import Settings
from .device import is_device_fault, is_out_of_memory, release_cached_memory
from .errors import ImageError, JobError, job_failure
from .fetch import UrlFetcher
from .images import ImageLimits, ImageStage, is_url
from .memory import DecodeBudget, default_budget_bytes, inputs_bytes, limit_malloc_arenas
from .metrics import Metrics
from .outputs import ImageOutputs, OutputMeter, add_text_piece
from .schema import parse_job_input
from .tasks import JobItem, Task, load_task
from .tasks.base import Prepared

log = logging.getLogger(__name__)

# Hears (image index, encoded result) as each image of a job finishes.
ResultListener = Callable[[int, dict], None]
# Hears (image index, new text) as a generating task's answer grows (token streaming).
TextListener = Callable[[int, str], None]

T = TypeVar("T")

# Grace beyond URL_TIMEOUT_S before the job stops waiting on a download thread.
_FETCH_GRACE_S = 1.0


class Worker:
    """Holds the loaded model and serves jobs; one per process, built at cold start."""

    def __init__(self, settings: Settings, task: Task) -> None:
        self.settings = settings
        self.task = task
        self.decode_budget = DecodeBudget(
            settings.DECODE_MEMORY_MB * 1024 * 1024 or default_budget_bytes()
        )
        self.images = ImageStage(
            ImageLimits(
                settings.MAX_IMAGE_BYTES, settings.MAX_IMAGE_PIXELS, settings.MAX_ASPECT_RATIO
            ),
            UrlFetcher.from_settings(settings),
            self.decode_budget,
            settings.JPEG_DRAFT,
        )
        self.batcher = DynamicBatcher(
            task.forward,
            collate=task.collate,
            split=task.split,
            max_batch_size=settings.MAX_BATCH_SIZE,
            max_wait_s=settings.BATCH_WAIT_MS / 1000,
            batch_key=task.batch_key,
            is_out_of_memory=is_out_of_memory,
            after_out_of_memory=lambda: release_cached_memory(task.source.device),
            incoming=self._images_on_their_way,
            on_batch=lambda size, waited, model_s: self.metrics.batch_ran(size, waited, model_s),
            is_device_fault=is_device_fault,
            on_device_fault=self._device_failed,
        )
        # Set when the GPU faulted (not OOM): the process cannot compute any more and must be
        # replaced; jobs fail at once and the handler asks RunPod for a new worker.
        self.broken: str | None = None
        self.metrics = Metrics(queue_depth=lambda: self.batcher.queue_depth)
        self.metrics.describe_model(
            model=settings.MODEL_NAME,
            task=task.name,
            device=str(task.source.device),
            dtype=str(task.source.dtype).removeprefix("torch."),
        )
        self._images_incoming = 0
        limit_malloc_arenas()  # before the image threads allocate arenas of their own
        self.image_thread_count = image_threads(settings.IMAGE_THREADS)
        self._image_threads = ThreadPoolExecutor(
            self.image_thread_count, thread_name_prefix="images"
        )
        # Downloads (and base64 decoding) on threads of their own: their deadline must not run
        # while they queue behind decodes that wait for memory under a slow model.
        self._fetch_threads = ThreadPoolExecutor(
            self.image_thread_count, thread_name_prefix="fetch"
        )
        # Results are encoded off the event loop (some render and upload heatmaps), on threads
        # of their own: a finished image never queues behind other jobs' decodes.
        self._encode_threads = ThreadPoolExecutor(
            self.image_thread_count, thread_name_prefix="encode"
        )
        self.image_outputs = ImageOutputs(settings)

    def _images_on_their_way(self) -> int:
        """Images a partial batch may wait for. None while decodes wait for memory: the room
        they wait for is often held by inputs queued for this very batch (and the images queued
        behind them wait for their threads), so waiting would only stall it."""
        return 0 if self.decode_budget.waiting else self._images_incoming

    @classmethod
    def start(cls, settings: Settings) -> Worker:
        """Cold start: load the model once, warm it up, log what is serving."""
        started = time.perf_counter()
        task = load_task(settings)
        loaded = time.perf_counter()
        worker = cls(settings, task)
        if settings.WARMUP:
            worker.warm_up()
        log.info(
            "serving %s (task %s) on %s as %s, image processor %s, %d image threads: "
            "load %.2fs, warm-up %.2fs",
            settings.MODEL_NAME,
            task.name,
            task.source.device,
            task.source.dtype,
            type(task.image_processor).__name__,
            worker.image_thread_count,
            loaded - started,
            time.perf_counter() - loaded,
        )
        return worker

    def warm_up(self) -> None:
        """One tiny batch, so lazy initialisation (kernels, allocator) is not job one's cost."""
        self.self_test()

    def self_test(self) -> dict:
        """A gray test image through prepare, predict and encode: its result, or an exception."""
        options = self.task.warmup_options()
        item = self.task.prepare(Image.new("RGB", (64, 64), (127, 127, 127)), options)
        outputs = self.task.predict([item], [options])
        if len(outputs) != 1:
            raise RuntimeError(f"the model gave {len(outputs)} outputs for 1 test image")
        return self.image_outputs.deliver_all(self.task.encode(outputs[0], item.meta, options))

    def _device_failed(self, error: BaseException) -> None:
        if self.broken is None:
            log.critical("device fault, this worker must be replaced: %s", error)
        self.broken = f"{type(error).__name__}: {error}"[:300]

    @property
    def task_name(self) -> str:
        return self.task.name

    @property
    def model_name(self) -> str:
        return self.settings.MODEL_NAME

    @property
    def device(self) -> Any:
        """The torch device the model runs on."""
        return self.task.source.device

    async def drain(self) -> None:
        """Finish every batch queued or running (shutdown)."""
        await self.batcher.drain()

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.settings.MODEL_NAME,
            "task": self.task.name,
            "device": str(self.task.source.device),
            "dtype": str(self.task.source.dtype).removeprefix("torch."),
            "max_batch_size": self.batcher.working_batch_size,
            "queue_depth": self.batcher.queue_depth,
            "batches_by_size": dict(sorted(self.batcher.batch_sizes.items())),
            "decode_memory_mb": {
                "budget": self.decode_budget.total_bytes // (1024 * 1024),
                "in_use": self.decode_budget.in_use // (1024 * 1024),
            },
        }

    # --- a job ------------------------------------------------------------------------------
    async def run(
        self,
        job_input: Any,
        progress: Callable[[str], None] | None = None,
        on_result: ResultListener | None = None,
        files: Sequence[bytes] = (),
        on_text: TextListener | None = None,
    ) -> dict[str, Any]:
        """The output for one job's "input": results per image, or {"error": "..."} for the job.

        `progress` hears "N/M images" as a job of more than one batch completes batches;
        `on_result` hears (index, result) for each image as soon as its batch has run; `files`
        are the job's images as uploaded bytes (its "input" then carries options only);
        `on_text` hears (index, new text) as each answer grows, for tasks that generate text
        token by token: the pieces heard for an image join into a prefix of its answer.
        """
        started = time.perf_counter()
        output = await self._run_safely(job_input, progress, on_result, files, on_text)
        self.metrics.job_done(output, time.perf_counter() - started)
        return output

    async def stream(
        self, job_input: Any, progress: Callable[[str], None] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The job's output in chunks, for RunPod streaming: {"results": [...]} as batches
        finish (each result carries its image's "index"), then one chunk with the rest of the
        output (model, task, texts, timings_ms); or a single {"error": ...} for the job. Tasks
        that generate text also stream {"text": [{"index", "text"}]} chunks as answers grow:
        each image's pieces join into a prefix of its final "answer".
        `merge_stream` in client.py puts the chunks back together into `run`'s output.
        """
        arrived: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        job = asyncio.ensure_future(
            self.run(
                job_input,
                progress,
                on_result=lambda i, r: arrived.put_nowait(("results", i, r)),
                on_text=lambda i, t: arrived.put_nowait(("text", i, t)),
            )
        )
        try:
            # What arrived in one turn of the loop (a batch's images, a decoding step's text)
            # is one chunk: each chunk is a round trip on RunPod.
            while events := await arrivals(arrived, job):
                yield _chunk_of(events)
            output = job.result()
            output.pop("results", None)
            yield output
        finally:
            job.cancel()  # the consumer went away: nothing is left to wait for the images

    async def _run_safely(
        self,
        job_input: Any,
        progress: Callable[[str], None] | None,
        on_result: ResultListener | None,
        files: Sequence[bytes] = (),
        on_text: TextListener | None = None,
    ) -> dict[str, Any]:
        try:
            return await self._run(job_input, progress, on_result, files, on_text)
        except JobError as error:
            return job_failure(str(error), error.code)
        except Exception as error:  # never a traceback to the caller; the worker keeps serving
            log.exception("job failed unexpectedly")
            message = f"internal error: {type(error).__name__}: {error}"[:500]
            return job_failure(message, "internal")

    async def _run(
        self,
        job_input: Any,
        progress: Callable[[str], None] | None,
        on_result: ResultListener | None,
        files: Sequence[bytes] = (),
        on_text: TextListener | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        if self.broken:
            raise JobError(
                f"this worker's GPU failed ({self.broken}); send the job again", "unavailable"
            )
        request = parse_job_input(job_input, self.settings.MAX_IMAGES_PER_JOB, self.task, files)
        items = request.items
        # Each item goes to the batcher as soon as it is prepared, so decoding overlaps the
        # model; the batcher holds a partial batch briefly only while items are on their way.
        loaded = started
        self._images_incoming += len(items)
        # Each section's items are numbered from 0, in input order.
        sections = {
            section: [item for item in items if item.section == section]
            for section in ("results", "texts")
        }
        report = _ProgressReport(
            len(sections["results"]), self.batcher.working_batch_size, progress
        )
        meter = OutputMeter(self.settings)

        async def prepare_then_predict(index: int, job_item: JobItem) -> dict:
            nonlocal loaded
            options, section = job_item.options, job_item.section
            try:
                item = await self._prepare_item(job_item)
            finally:
                self._images_incoming -= 1
            loaded = max(loaded, time.perf_counter())
            if on_text is not None and isinstance(item, Prepared):
                item.on_text = _from_model_thread(lambda text: on_text(index, text))
            try:
                output = await self._predict(item, options)
            except Exception as error:  # this item fails alone, with its code
                output = error
            finally:
                if section == "results":
                    report.image_done()
                _give_back(item)  # cancelled too: then the batch may still hold it, briefly
            _drop_inputs(item)  # its forward pass is over (a cancelled item is not dropped here)
            result = await asyncio.get_running_loop().run_in_executor(
                self._encode_threads, self._measured_result, meter, index, item, output, job_item
            )
            if on_result is not None and section == "results":
                on_result(index, result)
            return result

        answers = await asyncio.gather(
            *(
                asyncio.gather(*(prepare_then_predict(i, item) for i, item in enumerate(part)))
                for part in sections.values()
            )
        )
        finished = time.perf_counter()
        output: dict[str, Any] = {"model": self.settings.MODEL_NAME, "task": self.task.name}
        for section, results in zip(sections, answers, strict=True):
            if results or section == "results":
                output[section] = results
        output["timings_ms"] = {
            "load_images": _ms(loaded - started),
            "inference": _ms(finished - loaded),
            "total": _ms(finished - started),
        }
        # Serialising a large output takes milliseconds: off the event loop too.
        await asyncio.get_running_loop().run_in_executor(self._encode_threads, meter.check, output)
        return output

    async def _prepare_item(self, job_item: JobItem) -> Prepared | ImageError:
        """The item's model inputs, on an image thread (or the error its images fail with)."""
        options = job_item.options
        if job_item.text is not None:
            prepare_text = self.task.prepare_text
            return await self._on_image_thread(prepare_text, job_item.text, options)
        if job_item.together:
            return await self._prepare_together(job_item.images, options)
        return await self._prepare(job_item.images[0], options)

    def _model_input(self, data: bytes, options: Any) -> Prepared:
        """Decode and prepare one image on an image thread (the image stage)."""
        return self.images.model_input(
            data, lambda image: self.task.prepare(image, options), self.task.decode_target(options)
        )

    def prepare_now(self, source: str | bytes, options: Any) -> Prepared:
        """One image through the same image stage as a job's, on the calling thread: bytes,
        checks, scaled decode, decode budget, the task's prepare (benchmarks)."""
        return self._model_input(self.images.encoded(source), options)

    async def _prepare(self, source: str | bytes, options: Any) -> Prepared | ImageError:
        try:
            data = await self._fetch(source)
            return await self._on_image_thread(
                self.images.model_input,
                data,
                lambda image: self._holding(self.task.prepare(image, options)),
                self.task.decode_target(options),
            )
        except ImageError as error:
            return error

    def _holding(self, item: Prepared) -> Prepared:
        """`item` holding its inputs' bytes from the budget until its forward pass is done
        (_give_back). Taken at once, inside the decode's own reservation, so the memory is
        never uncounted and no thread waits with tensors in hand: under a slow model, the
        next decodes wait for room instead, before they allocate anything."""
        item.held = self.decode_budget.hold(inputs_bytes(item.inputs), wait=False)
        return item

    async def _on_image_thread(self, prepare: Callable[..., Prepared], *args: Any) -> Prepared:
        """`prepare(*args)` on an image thread. If the job is cancelled meanwhile the thread
        still finishes, and the item's hold is given back then."""
        running = self._image_threads.submit(prepare, *args)
        try:
            return await asyncio.wrap_future(running)
        except asyncio.CancelledError:
            running.add_done_callback(_give_back_when_prepared)
            raise

    async def _prepare_together(
        self, sources: Sequence[str | bytes], options: Any
    ) -> Prepared | ImageError:
        """One item from several images, with one answer about all of them (JobItem.together)."""
        try:
            datas = await asyncio.gather(
                *(self._fetch(source, index) for index, source in enumerate(sources))
            )
            return await self._on_image_thread(
                self.images.model_input_together,
                datas,
                lambda images: self._holding(self.task.prepare_together(images, options)),
                self.task.decode_target(options),
            )
        except ImageError as error:
            return error

    async def _fetch(self, source: str | bytes, index: int | None = None) -> bytes:
        """The image's bytes (downloaded on an image thread); ImageError naming `index`."""
        # Only the download is under the URL deadline: waiting for decode memory under load
        # slows a job down but must not fail it.
        limit = self.settings.URL_TIMEOUT_S + _FETCH_GRACE_S if is_url(source) else None
        fetching = asyncio.get_running_loop().run_in_executor(
            self._fetch_threads, self.images.encoded, source
        )
        try:
            return await asyncio.wait_for(fetching, timeout=limit)
        except ImageError as error:
            error.image = index
            raise
        except TimeoutError:
            message = f"download exceeded {self.settings.URL_TIMEOUT_S}s"
            raise ImageError("fetch_failed", message, index) from None

    def _measured_result(
        self, meter: OutputMeter, index: int, item: Any, output: Any, job_item: JobItem
    ) -> dict:
        what = "image" if job_item.section == "results" else "text"
        return meter.admit(self._result(index, item, output, job_item.options, what))

    def _result(self, index: int, item: Any, output: Any, options: Any, what: str) -> dict:
        """One item's result, its output images delivered (on an encode thread)."""
        if isinstance(output, ImageError):
            return output.to_result(index, what)
        if isinstance(output, BaseException):
            log.error("%s %d failed: %r", what, index, output)
            failure = ImageError("inference_failed", f"{type(output).__name__}: {output}")
            return failure.to_result(index, what)
        try:
            # A dense output made at the photo's size waits for room, as a decode does.
            with self.decode_budget.reserve(self.task.result_memory(output, item.meta, options)):
                return self.image_outputs.deliver_all(self.task.encode(output, item.meta, options))
        except ImageError as error:  # e.g. a heatmap upload that failed: this item only
            return error.to_result(index, what)

    def _predict(self, item: Prepared | ImageError, options: Any) -> asyncio.Future:
        """Queued at once, synchronously, so all of a job's images reach the batcher together."""
        if isinstance(item, ImageError):
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(item)
            return failed
        return self.batcher.enqueue(item, options)


def _give_back_when_prepared(running: Future) -> None:
    """For an item whose job was cancelled while it was prepared: nobody will run it."""
    if not running.cancelled() and running.exception() is None:
        _give_back(running.result())


def _give_back(item: Prepared | ImageError) -> None:
    """The item's inputs' bytes back to the budget (once; an ImageError holds none)."""
    if isinstance(item, Prepared) and item.held is not None:
        item.held.release()


def _drop_inputs(item: Prepared | ImageError) -> None:
    """After the item's forward pass: its tensors go now, not after encoding (which needs only
    its meta). Only for a finished item: a cancelled one may still be in a running batch, whose
    out-of-memory halving would read its inputs again."""
    if isinstance(item, Prepared):
        item.inputs = {}


async def arrivals(queue: asyncio.Queue[T], job: asyncio.Future) -> list[T]:
    """Everything on `queue` now, waiting for something while `job` runs; [] once the job is
    over and nothing is left (a job's listeners feed the queue, its end ends the waiting)."""
    arrived: list[T] = []
    while queue.empty() and not job.done():
        waiting = asyncio.ensure_future(queue.get())
        await asyncio.wait({waiting, job}, return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            arrived.append(waiting.result())
            break
        waiting.cancel()
    while not queue.empty():
        arrived.append(queue.get_nowait())
    return arrived


def _chunk_of(events: list[tuple[str, int, Any]]) -> dict[str, list[dict]]:
    """One stream chunk: results as {"index", **result}; text pieces of one image joined."""
    chunk: dict[str, list[dict]] = {}
    for kind, index, value in events:
        entries = chunk.setdefault(kind, [])
        if kind == "text":
            add_text_piece(entries, index, value)
        else:
            entries.append({"index": index, **value})
    return chunk


def _from_model_thread(listener: Callable[[str], None]) -> Callable[[str], None]:
    """A listener the model thread may call: handed to the event loop, never raising into the
    forward pass (a closed loop or a failing listener must not fail the batch)."""
    loop = asyncio.get_running_loop()

    def hand_over(text: str) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            loop.call_soon_threadsafe(listener, text)

    return hand_over


class _ProgressReport:
    """Counts a job's finished images and reports once per batch's worth (jobs of one batch
    report nothing: they finish about as soon as they would say anything)."""

    def __init__(self, total: int, batch_size: int, progress: Callable[[str], None] | None):
        self.total, self.step, self.done = total, max(1, batch_size), 0
        self.progress = progress if progress is not None and total > batch_size else None

    def image_done(self) -> None:
        self.done += 1
        if self.progress and (self.done % self.step == 0 or self.done == self.total):
            try:
                self.progress(f"{self.done}/{self.total} images")
            except Exception:  # progress is a courtesy; it never fails the job
                log.warning("progress update failed", exc_info=True)


def image_threads(configured: int) -> int:
    """IMAGE_THREADS, or from the cores this process may use: decoding is C code that releases
    the GIL (one thread per core keeps them busy) and downloads wait on the network (as many
    again overlap them)."""
    if configured:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(64, 2 * (cores or 1) + 2)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
