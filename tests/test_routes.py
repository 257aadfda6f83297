"""The pod's HTTP plumbing against a fake worker: no model is built, so every route's shape,
status and error code is checked in milliseconds (cog tests its HTTP layer the same way)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import requests

from conftest import running_server
from vision_worker.errors import JOB_ERROR_STATUS, job_failure
from vision_worker.metrics import Metrics
from vision_worker.settings import load_settings
from vision_worker.tasks.classify import ClassifyOptions


class FakeWorker:
    """The worker's face (run, drain, describe, broken, metrics, the task's options), answering
    each job with what `answer` makes of its input."""

    def __init__(self, answer, **settings) -> None:
        self.settings = load_settings(MODEL_NAME="fake/model", **settings)
        self.answer = answer
        self.broken: str | None = None
        self.task = SimpleNamespace(
            name="classify",
            Options=ClassifyOptions,
            options_schema=ClassifyOptions.model_json_schema,
        )
        self.task_name, self.model_name = "classify", "fake/model"
        self.metrics = Metrics(queue_depth=lambda: 0)
        self.jobs: list = []

    async def run(self, job_input, progress=None, on_result=None, files=(), on_text=None) -> dict:
        if files:  # uploaded images, handed over as bytes
            job_input = {**job_input, "files": list(files)}
        self.jobs.append(job_input)
        return self.answer(job_input)

    async def drain(self) -> None:
        return None

    def describe(self) -> dict:
        return {"model": self.settings.MODEL_NAME, "task": self.task.name}


def _labels(job_input) -> dict:
    return {"results": [{"labels": [{"label": "cat", "score": 0.9}]}]}


def test_runsync_returns_runpods_completed_body():
    worker = FakeWorker(_labels)
    with running_server(worker) as (url, _):
        response = requests.post(f"{url}/runsync", json={"input": {"image": "x"}}, timeout=10)
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "COMPLETED"
    assert body["id"].startswith("pod-")
    assert body["output"] == _labels(None)
    assert worker.jobs == [{"image": "x"}]


@pytest.mark.parametrize("code", sorted(JOB_ERROR_STATUS))
def test_a_failed_job_carries_its_code_on_every_route(code):
    worker = FakeWorker(lambda job_input: job_failure(f"it failed: {code}", code))
    with running_server(worker) as (url, _):
        synced = requests.post(f"{url}/runsync", json={"input": {}}, timeout=10).json()
        files = [("image", ("a.png", b"not really", "image/png"))]
        predicted = requests.post(f"{url}/predict", files=files, timeout=10)
        started = requests.post(f"{url}/run", json={"input": {}}, timeout=10).json()
        deadline = time.monotonic() + 10
        while (status := requests.get(f"{url}/status/{started['id']}", timeout=10).json())[
            "status"
        ] != "FAILED":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    # RunPod's shape: 200 and FAILED, the sentence as "error", the code in "output".
    assert (synced["status"], synced["error"]) == ("FAILED", f"it failed: {code}")
    assert synced["output"] == {"error_code": code}
    assert status["output"] == {"error_code": code}
    assert predicted.status_code == JOB_ERROR_STATUS[code]
    assert predicted.json() == {"error": f"it failed: {code}", "error_code": code}


def test_a_broken_worker_refuses_jobs_as_unavailable_and_health_says_why():
    worker = FakeWorker(_labels)
    worker.broken = "RuntimeError: CUDA error: an illegal memory access"
    with running_server(worker) as (url, _):
        refused = requests.post(f"{url}/runsync", json={"input": {}}, timeout=10)
        health = requests.get(f"{url}/health", timeout=10)
        ping = requests.get(f"{url}/ping", timeout=10)
    assert refused.status_code == 503
    assert refused.json()["error_code"] == "unavailable"
    assert (health.status_code, health.json()["status"]) == (200, "broken")
    assert health.json()["error"] == worker.broken
    assert ping.status_code == 503
    assert worker.jobs == []  # refused before the worker saw it


def test_bodies_that_are_not_jobs_are_invalid_input_and_never_reach_the_worker():
    worker = FakeWorker(_labels)
    with running_server(worker) as (url, _):
        not_json = requests.post(f"{url}/runsync", data="{nope", timeout=10)
        no_input = requests.post(f"{url}/runsync", json={"images": []}, timeout=10)
        bad_hook = requests.post(f"{url}/run", json={"input": {}, "webhook": "ftp://x"}, timeout=10)
    for response in (not_json, no_input, bad_hook):
        assert response.status_code == 400
        assert response.json()["error_code"] == "invalid_input"
    assert worker.jobs == []


def test_the_api_key_guards_every_job_route_but_not_health():
    worker = FakeWorker(_labels, POD_API_KEY="sesame")
    with running_server(worker) as (url, _):
        anonymous = requests.post(f"{url}/runsync", json={"input": {}}, timeout=10)
        keyed = requests.post(
            f"{url}/runsync",
            json={"input": {}},
            headers={"Authorization": "Bearer sesame"},
            timeout=10,
        )
        health = requests.get(f"{url}/health", timeout=10)
    assert anonymous.status_code == 401
    assert keyed.json()["status"] == "COMPLETED"
    assert health.status_code == 200
    assert len(worker.jobs) == 1
