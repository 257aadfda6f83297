"""A job through the stages: validate -> load images -> batch -> predict -> encode."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from .batcher import DynamicBatcher
from .config import Settings
from .device import is_out_of_memory, release_cached_memory
from .errors import ImageError, JobError
from .fetch import UrlFetcher
from .images import ImageLimits, ImageLoader, is_url
from .schema import parse_job_input
from .tasks import Task, load_task

log = logging.getLogger(__name__)

# Image downloads and decodes are I/O and C code that release the GIL; this many run at once.
_IMAGE_THREADS = 16
# Grace beyond URL_TIMEOUT_S before the job stops waiting on a download thread.
_FETCH_GRACE_S = 1.0


class Worker:
    """Holds the loaded model and serves jobs; one per process, built at cold start."""

    def __init__(self, settings: Settings, task: Task) -> None:
        self.settings = settings
        self.task = task
        self.loader = ImageLoader(
            ImageLimits(settings.MAX_IMAGE_BYTES, settings.MAX_IMAGE_PIXELS),
            UrlFetcher(
                timeout_s=settings.URL_TIMEOUT_S,
                max_bytes=settings.MAX_IMAGE_BYTES,
                retries=settings.URL_RETRIES,
                max_redirects=settings.MAX_REDIRECTS,
                allow_private=settings.ALLOW_PRIVATE_URLS,
            ),
        )
        self.batcher = DynamicBatcher(
            task.predict,
            max_batch_size=settings.MAX_BATCH_SIZE,
            max_wait_s=settings.BATCH_WAIT_MS / 1000,
            batch_key=task.batch_key,
            is_out_of_memory=is_out_of_memory,
            after_out_of_memory=lambda: release_cached_memory(task.source.device),
        )
        self._image_threads = ThreadPoolExecutor(_IMAGE_THREADS, thread_name_prefix="images")

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
            "serving %s (task %s) on %s as %s: load %.2fs, warm-up %.2fs",
            settings.MODEL_NAME, task.name, task.source.device, task.source.dtype,
            loaded - started, time.perf_counter() - loaded,
        )  # fmt: skip
        return worker

    def warm_up(self) -> None:
        """One tiny batch, so lazy initialisation (kernels, allocator) is not job one's cost."""
        gray = self.task.preprocess(Image.new("RGB", (64, 64), (127, 127, 127)))
        self.task.predict([gray], self.task.resolve_options({}))

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.settings.MODEL_NAME,
            "task": self.task.name,
            "device": str(self.task.source.device),
            "dtype": str(self.task.source.dtype).removeprefix("torch."),
            "max_batch_size": self.batcher.working_batch_size,
            "queue_depth": self.batcher.queue_depth,
            "batches_by_size": dict(sorted(self.batcher.batch_sizes.items())),
        }

    # --- a job ------------------------------------------------------------------------------
    async def run(self, job_input: Any) -> dict[str, Any]:
        """The output for one job's "input": results per image, or {"error": "..."} for the job."""
        try:
            return await self._run(job_input)
        except JobError as error:
            return {"error": str(error)}
        except Exception as error:  # never a traceback to the caller; the worker keeps serving
            log.exception("job failed unexpectedly")
            return {"error": f"internal error: {type(error).__name__}: {error}"[:500]}

    async def _run(self, job_input: Any) -> dict[str, Any]:
        started = time.perf_counter()
        request = parse_job_input(job_input, self.settings.MAX_IMAGES_PER_JOB)
        if request.task is not None and request.task != self.task.name:
            raise JobError(
                f'task "{request.task}" is not served here: model {self.settings.MODEL_NAME} '
                f'serves "{self.task.name}"'
            )
        options = self._resolve_options(request.options())

        images = await asyncio.gather(*(self._load_image(s) for s in request.sources))
        loaded = time.perf_counter()
        outputs = await asyncio.gather(
            *(self._predict(image, options) for image in images), return_exceptions=True
        )
        results = [_result(i, out, self.task, options) for i, out in enumerate(outputs)]
        finished = time.perf_counter()
        return {
            "model": self.settings.MODEL_NAME,
            "task": self.task.name,
            "results": results,
            "timings_ms": {
                "load_images": _ms(loaded - started),
                "inference": _ms(finished - loaded),
                "total": _ms(finished - started),
            },
        }

    def _resolve_options(self, given: dict[str, int]) -> Any:
        foreign = sorted(set(given) - set(self.task.option_names))
        if foreign:
            raise JobError(f'option "{foreign[0]}" does not apply to task "{self.task.name}"')
        return self.task.resolve_options(given)

    def _model_input(self, source: str) -> Any:
        """Decode and preprocess one image on an image thread, off the model's critical path."""
        image = self.loader.load(source)
        try:
            return self.task.preprocess(image)
        except Exception as error:  # e.g. a 1x1 image the processor cannot resize
            raise ImageError("invalid_image", f"cannot preprocess image: {error}"[:300]) from None

    async def _load_image(self, source: str) -> Any:
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self._image_threads, self._model_input, source)
        limit = self.settings.URL_TIMEOUT_S + _FETCH_GRACE_S if is_url(source) else None
        try:
            return await asyncio.wait_for(pending, timeout=limit)
        except ImageError as error:
            return error
        except TimeoutError:
            return ImageError("fetch_failed", f"download exceeded {self.settings.URL_TIMEOUT_S}s")

    async def _predict(self, image: Any, options: Any) -> Any:
        if isinstance(image, ImageError):
            raise image
        return await self.batcher.submit(image, options)


def _result(index: int, output: Any, task: Task, options: Any) -> dict:
    if isinstance(output, ImageError):
        return output.to_result(index)
    if isinstance(output, BaseException):
        log.error("image %d failed: %r", index, output)
        return ImageError("inference_failed", f"{type(output).__name__}: {output}").to_result(index)
    return task.encode(output, options)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
