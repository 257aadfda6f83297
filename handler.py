"""RunPod entry point: the model loads once, here at import (cold start); jobs then reuse it.

python handler.py                          # run test_input.json, print the output as JSON
python handler.py --image cat.jpg photos/  # your own images (files, folders, URLs), -o KEY=VALUE
python handler.py --test_input '{"input": {"image": "https://..."}}'
python handler.py --serve --port 8000      # pod mode: HTTP server (or SERVE_MODE=pod)
(on RunPod serverless, the same command serves the endpoint's queue)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

# Idle OpenMP threads sleep instead of spinning: they otherwise steal the cores that decode
# images and serve HTTP between batches (+37% requests/s at 8 clients on a 2-core CPU, bench/).
# Must be set before torch loads OpenMP; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from concurrent.futures import ThreadPoolExecutor

import runpod
from runpod.http_client import AsyncClientSession
from runpod.serverless.modules.rp_http import send_result

from vision_worker.config import ConfigError, settings_from_env
from vision_worker.fitness import check_fitness
from vision_worker.tasks import ModelLoadError
from vision_worker.worker import Worker

try:
    settings = settings_from_env()
except ConfigError as error:
    # One line in the worker's log says what to fix; a traceback would bury it.
    sys.exit(f"vision-worker cannot start: {error}")
# force: the runpod SDK configures logging on import, and basicConfig alone would then do
# nothing. One format, on stderr, so stdout carries only results in local runs.
logging.basicConfig(
    level=settings.LOG_LEVEL,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    stream=sys.stderr,
    force=True,
)


def _pod_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--host", default=settings.HOST)
    parser.add_argument("--port", type=int, default=settings.PORT)
    args, rest = parser.parse_known_args()
    sys.argv = [sys.argv[0], *rest]  # what is left is runpod's (--test_input, --rp_log_level)
    return args


if __name__ == "__main__" and ((pod := _pod_args()).serve or settings.SERVE_MODE == "pod"):
    # Pod mode (and RunPod load-balancing endpoints): listen first, load the model on a thread,
    # so /ping says "initializing" instead of the port refusing connections for a minute.
    from vision_worker.starting import serve

    serve(settings, pod.host, pod.port, start=lambda: Worker.start(settings))
    sys.exit(0)

try:
    worker = Worker.start(settings)  # cold start: once, before the first job
except ModelLoadError as error:
    sys.exit(f"vision-worker cannot start: {error}")


async def handler(job: dict) -> dict:
    """One RunPod job: {"id": ..., "input": {...}} -> output dict, or {"error": ...} (FAILED)."""
    output = await worker.run(job.get("input"), progress=lambda text: _progress(job, text))
    if worker.broken:
        # The GPU faulted: RunPod stops this worker after the job and starts a fresh one,
        # instead of a process that would fail every later job.
        output["refresh_worker"] = True
    return output


async def streaming_handler(job: dict):
    """STREAM_RESULTS=true: the same job, yielded as batches finish (/stream/{id}); /run and
    /runsync get the list of chunks (return_aggregate_stream), merged by client.merge_stream."""
    async for chunk in worker.stream(job.get("input"), progress=lambda text: _progress(job, text)):
        yield chunk
    if worker.broken:
        # A generator's output cannot carry refresh_worker; the SDK reads it from the config
        # it was started with, after each job.
        runpod_config["refresh_worker"] = True


def _progress(job: dict, text: str) -> None:
    """Jobs of more than one batch report "32/64 images", visible through /status.

    The SDK's progress_update starts a thread per update, so updates a batch apart raced and
    arrived out of order ("5/5" before "4/5", seen with the real SDK in tests/test_streaming.py).
    One thread posts them in order, with the same SDK calls progress_update makes.
    """
    _progress_poster.submit(_post_progress, job, text)


def _post_progress(job: dict, text: str) -> None:
    async def post() -> None:
        async with AsyncClientSession() as session:
            await send_result(session, {"status": "IN_PROGRESS", "output": text}, job)

    asyncio.run(post())


_progress_poster = ThreadPoolExecutor(1, thread_name_prefix="progress")


def model_device_disk_and_memory_are_fit() -> None:
    """Run by the SDK on RunPod before taking jobs; a failure exits 1 and the worker is replaced."""
    check_fitness(worker)


def concurrency_modifier(current_concurrency: int) -> int:
    """Jobs this worker takes at once; their images share batches in the dynamic batcher."""
    return settings.MAX_CONCURRENCY


# What the SDK runs; one dict, so a streaming job can still ask for a fresh worker.
runpod_config = {
    "handler": streaming_handler if settings.STREAM_RESULTS else handler,
    "return_aggregate_stream": True,  # only read for streaming handlers
    "concurrency_modifier": concurrency_modifier,
}


def _on_runpod() -> bool:
    """RunPod's queue sets this; without it (and without the SDK's own --rp_serve_api test
    server) the run is local: one job, output as JSON on stdout."""
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB")) or "--rp_serve_api" in sys.argv


if __name__ == "__main__":
    if _on_runpod():
        # Registered only here: the SDK logs the registration on stdout, which local runs keep
        # for the job's JSON output.
        runpod.serverless.register_fitness_check(model_device_disk_and_memory_are_fit)
        if settings.METRICS_PORT:
            worker.metrics.serve(settings.METRICS_PORT)
        runpod.serverless.start(runpod_config)
    else:
        from vision_worker.local import run_locally

        sys.exit(run_locally(worker, sys.argv[1:]))
