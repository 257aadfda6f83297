"""A GPU fault that is not out-of-memory leaves a process that would fail every later job: the
jobs in flight fail clearly, later ones fail at once, health says broken, RunPod replaces it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import requests

from conftest import _LOOP, b64, noise_image, run_job, running_server
from vision_worker.device import is_device_fault
from vision_worker.settings import load_settings
from vision_worker.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
FAULT = "CUDA error: an illegal memory access was encountered"


def _faulty_worker(model_dir) -> Worker:
    worker = Worker.start(load_settings(MODEL_NAME=str(model_dir("resnet")), WARMUP=False))

    def fault(items, options):
        raise RuntimeError(FAULT)

    worker.batcher._run_batch = fault
    return worker


@pytest.mark.parametrize(
    ("message", "fault"),
    [
        (FAULT, True),
        ("CUDA error: device-side assert triggered", True),
        ("CUDA out of memory. Tried to allocate 2.00 GiB", False),
        ("shapes cannot be multiplied", False),
    ],
)
def test_device_faults_are_told_from_out_of_memory_and_bad_input(message, fault):
    assert is_device_fault(RuntimeError(message)) is fault


def test_a_device_fault_fails_the_batch_then_every_later_job_at_once(model_dir):
    worker = _faulty_worker(model_dir)
    first = run_job(worker, {"images": [b64(noise_image(1)), b64(noise_image(2))]})
    errors = [r["error"] for r in first["results"]]
    assert all(e["code"] == "inference_failed" for e in errors)
    assert "this worker is being replaced" in errors[0]["message"]
    assert worker.broken.startswith("RuntimeError: CUDA error: an illegal memory access")
    later = run_job(worker, {"image": b64(noise_image(3))})
    assert later["error"].startswith("this worker's GPU failed (RuntimeError: CUDA error")
    assert later["error_code"] == "unavailable"  # send it again: it goes to another worker


def test_pod_mode_reports_broken_and_refuses_jobs(model_dir):
    worker = _faulty_worker(model_dir)
    with running_server(worker) as (url, _):
        job = {"input": {"image": b64(noise_image(1))}}
        requests.post(f"{url}/runsync", json=job, timeout=30)
        ping = requests.get(f"{url}/ping", timeout=5)
        assert (ping.status_code, ping.json()["status"]) == (503, "broken")
        assert requests.get(f"{url}/health", timeout=5).json()["status"] == "broken"
        refused = requests.post(f"{url}/runsync", json=job, timeout=30)
        assert refused.status_code == 503
        assert refused.json()["error"].startswith("worker is broken: RuntimeError: CUDA error")
        assert refused.json()["error_code"] == "unavailable"


def _handler_module(model_dir, monkeypatch):
    """handler.py imported as RunPod runs it (not as __main__): the cold start happens here."""
    monkeypatch.setenv("MODEL_NAME", str(model_dir("resnet")))
    monkeypatch.setenv("WARMUP", "false")
    monkeypatch.setattr(sys, "argv", ["handler.py"])
    from vision_worker.settings import settings_from_env

    settings_from_env.cache_clear()
    spec = importlib.util.spec_from_file_location("handler_under_test", ROOT / "handler.py")
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    settings_from_env.cache_clear()
    return handler


def test_the_serverless_handler_asks_runpod_to_replace_the_worker(model_dir, monkeypatch):
    handler = _handler_module(model_dir, monkeypatch)
    job = {"id": "j1", "input": {"image": b64(noise_image(1))}}
    healthy = _LOOP.run_until_complete(handler.handler(job))
    assert "refresh_worker" not in healthy

    def fault(items, options):
        raise RuntimeError(FAULT)

    handler.worker.batcher._run_batch = fault
    broken = _LOOP.run_until_complete(handler.handler(job))
    # The SDK pops this flag from the output and stops the worker after the job.
    assert broken["refresh_worker"] is True


def test_a_streaming_handler_asks_runpod_to_replace_the_worker(model_dir, monkeypatch):
    """A generator's chunks cannot carry refresh_worker: the SDK reads it from its config."""
    monkeypatch.setenv("STREAM_RESULTS", "true")
    handler = _handler_module(model_dir, monkeypatch)
    assert handler.runpod_config["handler"] == handler.streaming_handler  # the same bound method
    job = {"id": "j1", "input": {"image": b64(noise_image(1))}}

    async def stream() -> list[dict]:
        return [chunk async for chunk in handler.streaming_handler(job)]

    assert "results" in _LOOP.run_until_complete(stream())[0]
    assert "refresh_worker" not in handler.runpod_config

    def fault(items, options):
        raise RuntimeError(FAULT)

    handler.worker.batcher._run_batch = fault
    chunks = _LOOP.run_until_complete(stream())
    assert chunks[0]["results"][0]["error"]["code"] == "inference_failed"
    assert handler.runpod_config["refresh_worker"] is True
