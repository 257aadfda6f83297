"""A bounded load test through the pod server on 127.0.0.1: 512 jobs at concurrency 64, mixed
good and bad, every job gets exactly its own answer, and memory stays flat."""

from __future__ import annotations

import asyncio
import gc

import httpx
import pytest

from conftest import b64, noise_image, run_job, running_server
from vision_worker.settings import load_settings
from vision_worker.worker import Worker

JOBS = 512
CONCURRENCY = 64
IMAGES = [b64(noise_image(seed)) for seed in range(8)]


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def job_for(index: int) -> tuple[dict, object]:
    """Job number `index` and what its answer must be (a label list, an error code, or FAILED)."""
    kind = index % 4
    if kind == 3:
        return {"images": []}, "FAILED"
    images = [IMAGES[(index + k) % len(IMAGES)] for k in range(1 + index % 3)]
    if kind == 2:
        images.insert(index % 2, "not-an-image")
    return {"images": images, "top_k": 3}, images


async def fire(url: str, count: int) -> list[tuple[int, dict]]:
    semaphore = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(
        timeout=120, limits=httpx.Limits(max_connections=CONCURRENCY)
    ) as http:

        async def one(index: int) -> tuple[int, dict]:
            async with semaphore:
                body = {"input": job_for(index)[0]}
                return index, (await http.post(f"{url}/runsync", json=body)).json()

        return await asyncio.gather(*(one(i) for i in range(count)))


@pytest.fixture(scope="module")
def expected_labels(make_worker) -> dict[str, list]:
    worker = make_worker("resnet")
    return {
        image: run_job(worker, {"image": image, "top_k": 3})["results"][0]["labels"]
        for image in IMAGES
    }


def test_512_mixed_jobs_at_concurrency_64_each_get_their_own_answer(model_dir, expected_labels):
    settings = load_settings(
        MODEL_NAME=str(model_dir("resnet")),
        WARMUP=False,
        MAX_BATCH_SIZE=32,
        MAX_CONCURRENCY=CONCURRENCY,
        # The client shares this process's GIL with the server, the model and the image
        # threads: on a loaded 2-core machine a connection's first request can take longer
        # than the slow-client deadline to be written (test_hardening tests that deadline).
        HEADER_TIMEOUT_S=60,
    )
    with running_server(Worker.start(settings)) as (url, server):
        asyncio.run(fire(url, 128))  # warm: allocator, thread pools, connection setup
        gc.collect()
        before = rss_mb()
        answers = asyncio.run(fire(url, JOBS))
        gc.collect()
        after = rss_mb()
        batches = server.config.app.state.pod.worker.batcher.batch_sizes

    assert sorted(index for index, _ in answers) == list(range(JOBS))  # none lost, none twice
    assert len({body["id"] for _, body in answers}) == JOBS
    for index, body in answers:
        _, expected = job_for(index)
        if expected == "FAILED":
            assert body["status"] == "FAILED"
            assert '"images" is empty' in body["error"]
            continue
        assert body["status"] == "COMPLETED", body
        results = body["output"]["results"]
        assert len(results) == len(expected)
        for image, result in zip(expected, results, strict=True):
            if image == "not-an-image":
                assert result["error"]["code"] == "invalid_image"
            else:
                alone = expected_labels[image]
                assert [e["label"] for e in result["labels"]] == [e["label"] for e in alone]
                scores = [e["score"] for e in result["labels"]]
                assert scores == pytest.approx([e["score"] for e in alone], abs=1e-5)
    assert max(batches) > 1, "concurrent jobs were never batched together"
    print(f"\nRSS before {before:.0f} MB, after {after:.0f} MB; batches by size {dict(batches)}")
    assert after - before < 50, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
