"""Streaming: results as batches finish, on serverless (the real runpod SDK against a stand-in
for RunPod's job API) and on the pod's /stream/{id}, without changing the plain output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from werkzeug import Request, Response

from conftest import _LOOP, b64, noise_image, run_job, running_server
from vision_worker.client import merge_stream
from vision_worker.settings import load_settings
from vision_worker.worker import Worker

ROOT = Path(__file__).resolve().parents[1]


def _job(count: int = 5) -> dict:
    """Several batches at MAX_BATCH_SIZE=2, with one bad image that must fail alone."""
    images = [b64(noise_image(seed)) for seed in range(count)]
    images[2] = "not an image"
    return {"images": images}


def _collect(worker, job_input) -> list[dict]:
    async def chunks() -> list[dict]:
        return [chunk async for chunk in worker.stream(job_input)]

    return _LOOP.run_until_complete(chunks())


def _without_timings(output: dict) -> dict:
    return {k: v for k, v in output.items() if k != "timings_ms"}


def _slowed(worker: Worker, seconds: float) -> Worker:
    """Batches that take a while, so each one finishes well apart from the next."""
    predict = worker.batcher._run_batch

    def slow_predict(items, options):
        time.sleep(seconds)
        return predict(items, options)

    worker.batcher._run_batch = slow_predict
    return worker


def test_a_streamed_job_merges_back_into_the_plain_output(make_worker, model_dir):
    slow = _slowed(
        Worker.start(
            load_settings(MODEL_NAME=str(model_dir("resnet")), WARMUP=False, MAX_BATCH_SIZE=2)
        ),
        0.2,
    )
    chunks = _collect(slow, _job())
    result_chunks = [c for c in chunks if "results" in c]
    # The bad image at once, then one chunk per batch as it finished, then the rest of the
    # output. How the four good images split into batches of at most 2 depends on when each is
    # decoded (one batch of 1 when the idle model takes the first at once): at least two.
    assert result_chunks[0]["results"] == [
        r for r in result_chunks[0]["results"] if r["index"] == 2
    ]
    assert len(result_chunks) >= 3
    assert all(1 <= len(c["results"]) <= 2 for c in result_chunks)
    assert sorted(r["index"] for c in result_chunks for r in c["results"]) == [0, 1, 2, 3, 4]
    assert set(chunks[-1]) == {"model", "task", "timings_ms"}
    bad = next(r for c in result_chunks for r in c["results"] if r["index"] == 2)
    assert bad["error"]["code"] == "invalid_image"

    merged = merge_stream(chunks)
    plain = run_job(make_worker("resnet", MAX_BATCH_SIZE=2), _job())
    assert _without_timings(merged) == _without_timings(plain)


def test_a_job_error_streams_as_one_error_chunk(make_worker):
    worker = make_worker("resnet", MAX_BATCH_SIZE=2)
    chunks = _collect(worker, {"images": []})
    assert len(chunks) == 1
    assert "error" in chunks[0]
    assert merge_stream(chunks) == chunks[0]


def test_a_consumer_that_goes_away_cancels_the_job(make_worker):
    worker = make_worker("resnet", MAX_BATCH_SIZE=2)

    async def first_chunk_only() -> dict:
        stream = worker.stream(_job(8))
        first = await anext(stream)
        await stream.aclose()
        return first

    assert "results" in _LOOP.run_until_complete(first_chunk_only())
    # The worker keeps serving: nothing of the abandoned job is left queued.
    _LOOP.run_until_complete(worker.batcher.drain())
    assert worker.batcher.queue_depth == 0
    assert run_job(worker, {"images": [b64(noise_image(9))]})["results"][0]["labels"]


def test_pod_stream_returns_new_results_then_the_end(make_worker):
    worker = make_worker("resnet", MAX_BATCH_SIZE=2, MAX_CONCURRENCY=2)
    with running_server(worker) as (url, _server):
        job_id = requests.post(f"{url}/run", json={"input": _job()}, timeout=30).json()["id"]
        chunks, statuses, deadline = [], [], time.monotonic() + 60
        while not statuses or statuses[-1] != "COMPLETED":
            assert time.monotonic() < deadline
            answer = requests.get(f"{url}/stream/{job_id}", timeout=30).json()
            statuses.append(answer["status"])
            chunks += [item["output"] for item in answer["stream"]]
        # Each call gave only what was new: every image exactly once, the end exactly once.
        indices = [r["index"] for c in chunks for r in c.get("results", [])]
        assert sorted(indices) == [0, 1, 2, 3, 4]
        assert sum("model" in c for c in chunks) == 1
        again = requests.get(f"{url}/stream/{job_id}", timeout=30).json()
        assert again == {"id": job_id, "status": "COMPLETED", "stream": []}

        # /status keeps the one-output shape; the stream merges back into it.
        status = requests.get(f"{url}/status/{job_id}", timeout=30).json()
        assert _without_timings(merge_stream(chunks)) == _without_timings(status["output"])


def test_pod_stream_of_a_failed_job_says_why_and_unknown_jobs_are_404(make_worker):
    worker = make_worker("resnet", MAX_BATCH_SIZE=2, MAX_CONCURRENCY=3)
    with running_server(worker) as (url, _server):
        job_id = requests.post(f"{url}/run", json={"input": {"images": []}}, timeout=30).json()
        answer = requests.get(f"{url}/stream/{job_id['id']}", timeout=30).json()
        assert answer["status"] == "FAILED"
        assert answer["stream"] == []
        assert "images" in answer["error"]
        missing = requests.get(f"{url}/stream/pod-nope", timeout=30)
        assert missing.status_code == 404
        sync_id = requests.post(f"{url}/runsync", json={"input": _job(3)}, timeout=30).json()["id"]
        assert requests.get(f"{url}/stream/{sync_id}", timeout=30).status_code == 400


# --- the real SDK, against a stand-in for RunPod's job API ------------------------------------


class _FakeRunPod:
    """Hands out one job, records what the SDK streams and posts back, like RunPod's queue."""

    def __init__(self, job: dict) -> None:
        self.job, self.taken = job, False
        self.streamed: list[dict] = []
        self.progress: list[str] = []
        self.final: dict | None = None
        self.done = threading.Event()

    def take(self, request: Request) -> Response:
        if self.taken:
            return Response(status=204)
        self.taken = True
        batch = "/job-take-batch/" in request.path
        return Response(json.dumps([self.job] if batch else self.job), mimetype="application/json")

    def stream(self, request: Request) -> Response:
        self.streamed.append(json.loads(request.get_data()))
        return Response("{}", mimetype="application/json")

    def finish(self, request: Request) -> Response:
        body = json.loads(request.get_data())
        if body.get("status") == "IN_PROGRESS":
            self.progress.append(body["output"])
        else:
            self.final = body
            self.done.set()
        return Response("{}", mimetype="application/json")


def _serve_one_job(httpserver, model: Path, stream_results: bool) -> _FakeRunPod:
    runpod_api = _FakeRunPod({"id": "job-1", "input": _job()})
    httpserver.expect_request(re.compile("/job-take")).respond_with_handler(runpod_api.take)
    httpserver.expect_request(re.compile("/job-stream")).respond_with_handler(runpod_api.stream)
    httpserver.expect_request(re.compile("/job-done")).respond_with_handler(runpod_api.finish)
    base = httpserver.url_for("")
    environment = {
        **os.environ,
        "MODEL_NAME": str(model),
        "WARMUP": "false",
        "MAX_BATCH_SIZE": "2",
        "STREAM_RESULTS": str(stream_results).lower(),
        "RUNPOD_POD_ID": "worker-1",
        # The SDK's own host checks (disk >= 10% free, ...) judge the test machine, not the worker
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_WEBHOOK_GET_JOB": f"{base}job-take/$ID?gpu=test",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}job-done/$ID?gpu=test",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{base}job-stream/$ID?gpu=test",
    }
    worker = subprocess.Popen(
        [sys.executable, "handler.py"],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        finished = runpod_api.done.wait(timeout=120)
        deadline = time.monotonic() + 10  # progress posts may trail the result by a moment
        while len(runpod_api.progress) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.kill()
        log = worker.communicate()[0]
    assert finished, log[-3000:]
    return runpod_api


@pytest.mark.parametrize("stream_results", [False, True])
def test_the_runpod_sdk_streams_batches_and_run_still_gets_the_output(
    httpserver, model_dir, make_worker, stream_results
):
    runpod_api = _serve_one_job(httpserver, model_dir("resnet"), stream_results)
    expected = _without_timings(run_job(make_worker("resnet", MAX_BATCH_SIZE=2), _job()))
    output = runpod_api.final["output"]
    if stream_results:
        # Each batch went out on /stream as it finished; /run gets the aggregate of the chunks.
        chunks = [posted["output"] for posted in runpod_api.streamed]
        assert len(chunks) >= 2
        assert output == chunks
        assert _without_timings(merge_stream(output)) == expected
    else:
        assert runpod_api.streamed == []
        assert _without_timings(output) == expected
    # Jobs of more than one batch report progress per batch, in order, through /status.
    assert runpod_api.progress == ["2/5 images", "4/5 images", "5/5 images"]


def test_two_last_stream_polls_at_once_send_the_rest_once():
    """The last /stream poll of a finished job parses its output on a thread; two at once must
    not both send the results and the summary."""
    from concurrent.futures import ThreadPoolExecutor

    from vision_worker.jobs import COMPLETED, JobRecord, JobStream

    output = {"results": [{"caption": "x" * 200} for _ in range(20_000)], "task": "caption"}
    for _ in range(5):
        record = JobRecord(id="pod-1", input={}, status=COMPLETED, stream=JobStream())
        record.output = output
        start = threading.Barrier(2)

        def poll(record: JobRecord = record, start: threading.Barrier = start) -> list[dict]:
            start.wait()
            return record.stream.take(record)

        with ThreadPoolExecutor(2) as pool:
            polls = [pool.submit(poll) for _ in range(2)]
            taken = [chunk for done in polls for chunk in done.result()]
        indexes = [r["index"] for chunk in taken for r in chunk.get("results", [])]
        assert sorted(indexes) == list(range(20_000))
        assert [chunk for chunk in taken if "task" in chunk] == [{"task": "caption"}]


def test_pod_stream_shows_answers_as_they_are_generated(make_worker):
    """/stream/{id} of an ask job: each answer's text as it grows, before its result; the text
    joins into a prefix of the answer and the stream still merges back into /status's output."""
    worker = make_worker("llava", MAX_CONCURRENCY=3, BATCH_WAIT_MS=50)
    decoder = worker.task.model.model.language_model
    forward = decoder.forward

    def slow_forward(*args, **kwargs):  # a decoding step the poller can see, as on a real model
        time.sleep(0.05)
        return forward(*args, **kwargs)

    decoder.forward = slow_forward
    try:
        job = {"images": [b64(noise_image(i, (64, 64))) for i in range(2)], "question": "what?"}
        with running_server(worker) as (url, _server):
            body = {"input": {**job, "max_new_tokens": 12}}
            job_id = requests.post(f"{url}/run", json=body, timeout=30).json()["id"]
            chunks, deadline = [], time.monotonic() + 120
            while True:
                assert time.monotonic() < deadline
                answer = requests.get(f"{url}/stream/{job_id}", timeout=30).json()
                chunks += [item["output"] for item in answer["stream"]]
                if answer["status"] == "COMPLETED":
                    break
            status = requests.get(f"{url}/status/{job_id}", timeout=30).json()
    finally:
        decoder.forward = forward
    streamed = {0: "", 1: ""}
    finished: set[int] = set()
    for chunk in chunks:
        for entry in chunk.get("text", []):
            assert entry["index"] not in finished
            streamed[entry["index"]] += entry["text"]
        finished |= {r["index"] for r in chunk.get("results", [])}
    answers = [r["answer"] for r in status["output"]["results"]]
    assert all(a.startswith(streamed[i]) for i, a in enumerate(answers))
    assert any(streamed.values())  # at 50 ms a step, some text arrived before the end
    assert _without_timings(merge_stream(chunks)) == _without_timings(status["output"])
