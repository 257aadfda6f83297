"""The RunPod serverless edge: a job from the queue to the worker and its output back.

`Serverless(worker, settings)` holds what `runpod.serverless.start` needs: the handler (or the
streaming one, STREAM_RESULTS), the concurrency modifier and the fitness check. It uses the
worker's face only (`run`, `stream`, `broken`), so it can be tested without RunPod's queue.

RunPod's OpenAI passthrough (`https://api.runpod.ai/v2/<endpoint>/openai/v1/...`) arrives as a
job whose input is `{"openai_route": "/v1/...", "openai_input": {...}}` (the client's body; none
for GET /v1/models): answered in OpenAI's shapes by openai_api.py. A streamed chat answer is
server-sent-event text, which only a generator handler can yield (STREAM_RESULTS=true).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runpod.http_client import AsyncClientSession

# Private to the SDK, used for one reason: its public progress_update starts a thread per
# update, so updates a batch apart raced and arrived out of order ("5/5" before "4/5", seen
# with the real SDK in tests/test_streaming.py). send_result is what progress_update calls.
from runpod.serverless.modules.rp_http import send_result

from .config import Settings
from .fitness import check_fitness
from .openai_api import OpenAIError, OpenAIService
from .worker import Worker


class Serverless:
    """The handlers and settings one `runpod.serverless.start` call takes, over one worker."""

    def __init__(self, worker: Worker, settings: Settings) -> None:
        self.worker = worker
        self.settings = settings
        self._progress_poster = ThreadPoolExecutor(1, thread_name_prefix="progress")
        self.openai = OpenAIService(
            worker.run, worker.task_name, settings.MODEL_NAME, settings.SERVED_MODEL_NAME
        )
        # What the SDK runs; one dict, so a streaming job can still ask for a fresh worker.
        self.config: dict[str, Any] = {
            "handler": self.streaming_handler if settings.STREAM_RESULTS else self.handler,
            "return_aggregate_stream": True,  # only read for streaming handlers
            "concurrency_modifier": self.concurrency_modifier,
        }

    async def handler(self, job: dict) -> dict:
        """One job: {"id": ..., "input": {...}} -> output dict, or {"error": ...} (FAILED)."""
        if (route := _openai_route(job)) is not None:
            return await self._openai_response(route, job["input"], streaming=False)
        output = await self.worker.run(job.get("input"), progress=self._reporter(job))
        if self.worker.broken:
            # The GPU faulted: RunPod stops this worker after the job and starts a fresh one,
            # instead of a process that would fail every later job.
            output["refresh_worker"] = True
        return output

    async def streaming_handler(self, job: dict) -> AsyncIterator[dict]:
        """STREAM_RESULTS=true: the same job, yielded as batches finish (/stream/{id}); /run and
        /runsync get the list of chunks (return_aggregate_stream), merged by client.merge_stream."""
        if (route := _openai_route(job)) is not None:
            response = await self._openai_response(route, job["input"], streaming=True)
            if isinstance(response, dict):
                yield response  # one OpenAI response; RunPod's gateway unwraps the list
            else:
                async for events in response:
                    yield events  # "data: {...}\n\n" text, forwarded as server-sent events
            return
        async for chunk in self.worker.stream(job.get("input"), progress=self._reporter(job)):
            yield chunk
        if self.worker.broken:
            # A generator's output cannot carry refresh_worker; the SDK reads it from the config
            # it was started with, after each job.
            self.config["refresh_worker"] = True

    async def _openai_response(self, route: str, job_input: dict, streaming: bool) -> Any:
        """OpenAI's response to a passthrough job, or its error shape (the job then FAILS, as
        worker-vllm's do, and RunPod answers the client with an error)."""
        body = job_input.get("openai_input") or {}
        if not streaming and isinstance(body, dict) and body.get("stream") is True:
            error = OpenAIError(
                "streaming needs a streaming endpoint: set STREAM_RESULTS=true on this worker, "
                'or send "stream": false',
                param="stream",
            )
            return error.body()
        try:
            return await self.openai.handle(route, body)
        except OpenAIError as error:
            return error.body()
        finally:
            if self.worker.broken:
                # As for every job after a GPU fault: RunPod replaces this worker after it.
                self.config["refresh_worker"] = True

    def concurrency_modifier(self, current_concurrency: int) -> int:
        """Jobs this worker takes at once; their images share batches in the dynamic batcher."""
        return self.settings.MAX_CONCURRENCY

    def fitness_check(self) -> None:
        """Run by the SDK before taking jobs; a failure exits 1 and RunPod replaces the worker."""
        check_fitness(self.worker)

    def _reporter(self, job: dict):
        """Jobs of more than one batch report "32/64 images", visible through /status, posted in
        order by one thread."""
        return lambda text: self._progress_poster.submit(_post_progress, job, text)


def _openai_route(job: dict) -> str | None:
    """The OpenAI route of a passthrough job ("/v1/chat/completions"), else None."""
    job_input = job.get("input")
    route = job_input.get("openai_route") if isinstance(job_input, dict) else None
    return route if isinstance(route, str) and route else None


def _post_progress(job: dict, text: str) -> None:
    async def post() -> None:
        async with AsyncClientSession() as session:
            await send_result(session, {"status": "IN_PROGRESS", "output": text}, job)

    asyncio.run(post())
