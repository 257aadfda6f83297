"""Pod mode answers before the model has loaded: /ping 204 then 200 (503 if loading failed),
/health initializing / ready / broken, jobs 503 with one sentence until the model is ready."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import requests
import uvicorn

from conftest import b64, free_port, noise_image
from vision_worker.server import server_config
from vision_worker.settings import load_settings
from vision_worker.starting import StartingApp
from vision_worker.tasks import ModelLoadError
from vision_worker.worker import Worker


@contextmanager
def starting_server(settings, start):
    app = StartingApp(settings)
    port = free_port()
    server = uvicorn.Server(server_config(app, settings, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    app.load_in_background(start)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _wait_for(predicate, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_probes_answer_while_the_model_loads_then_jobs_run(model_dir):
    settings = load_settings(MODEL_NAME=str(model_dir("resnet")), WARMUP=False)
    release = threading.Event()

    def slow_start() -> Worker:
        release.wait(30)
        return Worker.start(settings)

    with starting_server(settings, slow_start) as (url, _app):
        assert requests.get(f"{url}/ping", timeout=5).status_code == 204
        health = requests.get(f"{url}/health", timeout=5)
        assert (health.status_code, health.json()["status"]) == (200, "initializing")
        job = {"input": {"image": b64(noise_image(1))}}
        early = requests.post(f"{url}/runsync", json=job, timeout=5)
        assert early.status_code == 503
        assert early.json() == {
            "error": "the model is still loading; retry in a few seconds",
            "error_code": "unavailable",
        }
        release.set()
        _wait_for(lambda: requests.get(f"{url}/ping", timeout=5).status_code == 200)
        assert requests.get(f"{url}/health", timeout=5).json()["status"] == "ready"
        done = requests.post(f"{url}/runsync", json=job, timeout=30).json()
        assert done["status"] == "COMPLETED"


def test_a_model_that_cannot_load_reports_broken(model_dir):
    settings = load_settings(MODEL_NAME=str(model_dir("resnet")), WARMUP=False)

    def failing_start() -> Worker:
        raise ModelLoadError("cannot load from directory /models/x: no config.json")

    with starting_server(settings, failing_start) as (url, app):
        _wait_for(lambda: app.error is not None)
        assert requests.get(f"{url}/ping", timeout=5).status_code == 503
        health = requests.get(f"{url}/health", timeout=5)
        assert health.status_code == 503
        assert health.json()["status"] == "broken"
        assert "no config.json" in health.json()["error"]
        job = requests.post(f"{url}/run", json={"input": {}}, timeout=5)
        assert job.status_code == 503
        assert job.json()["error"].startswith("the model failed to load: cannot load")
