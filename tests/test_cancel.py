"""A cancelled job leaves at once: its images still queued never reach the model (RunPod's
/cancel cancels the handler's task in the runpod SDK; the pod's /cancel cancels the job's)."""

from __future__ import annotations

import asyncio
import threading
import time

import requests

from conftest import _LOOP, b64, noise_image, running_server


def _slow_forward(worker, seconds: float) -> list[int]:
    """The model thread takes `seconds` a batch; returns the list of batch sizes it ran."""
    ran: list[int] = []
    forward = worker.batcher._run_batch

    def slow(items, options):
        ran.append(len(items))
        time.sleep(seconds)
        return forward(items, options)

    worker.batcher._run_batch = slow  # what the model thread calls for each batch
    return ran


def test_a_cancelled_jobs_queued_images_never_reach_the_model(make_worker):
    worker = make_worker("resnet", MAX_BATCH_SIZE=2, BATCH_WAIT_MS=0)
    ran = _slow_forward(worker, 0.3)
    images = [b64(noise_image(i)) for i in range(12)]

    async def cancel_after_first_batch() -> None:
        job = asyncio.ensure_future(worker.run({"images": images}))
        deadline = time.monotonic() + 20
        while not ran and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        await asyncio.sleep(1.0)  # time for more batches, were any left queued

    _LOOP.run_until_complete(cancel_after_first_batch())
    assert sum(ran) <= 4, ran  # the batch running, perhaps the next one taken: not twelve
    after = _LOOP.run_until_complete(worker.run({"image": images[0]}))
    assert "labels" in after["results"][0]  # the worker serves on


def test_the_pods_cancel_stops_the_rest_of_a_running_job(model_dir):
    from vision_worker.settings import load_settings
    from vision_worker.worker import Worker

    # What earlier tests' workers keep running is theirs: this test counts its own threads.
    threads_before = threading.active_count()
    worker = Worker.start(
        load_settings(
            MODEL_NAME=str(model_dir("resnet")), WARMUP=False, MAX_BATCH_SIZE=2, BATCH_WAIT_MS=0
        )
    )
    ran = _slow_forward(worker, 0.3)
    images = [b64(noise_image(i)) for i in range(12)]
    with running_server(worker) as (url, _):
        job = requests.post(f"{url}/run", json={"input": {"images": images}}, timeout=10).json()
        deadline = time.monotonic() + 20
        while not ran and time.monotonic() < deadline:
            time.sleep(0.01)
        cancelled = requests.post(f"{url}/cancel/{job['id']}", timeout=10).json()
        time.sleep(1.0)
        status = requests.get(f"{url}/status/{job['id']}", timeout=10).json()
    assert cancelled["status"] == "CANCELLED"
    assert status["status"] == "CANCELLED"
    assert sum(ran) <= 4, ran
    # Its worker's pools (images, downloads, encodes), the model and split threads, the
    # server's: 12 here, and no thread per cancelled image (twelve images).
    assert threading.active_count() - threads_before < 30, threading.active_count()
