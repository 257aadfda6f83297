"""Prometheus metrics from real jobs: at /metrics in pod mode, on METRICS_PORT in serverless."""

from __future__ import annotations

import re

import requests

from conftest import b64, free_port, noise_image, run_job, running_server
from vision_worker.settings import load_settings
from vision_worker.worker import Worker


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format."""
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{selector}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no sample {name}{labels} in:\n{text[:2000]}"
    return float(match.group(1))


def test_pod_metrics_count_jobs_images_and_batches(model_dir):
    worker = Worker.start(
        load_settings(MODEL_NAME=str(model_dir("resnet")), WARMUP=False, POD_API_KEY="k")
    )
    with running_server(worker) as (url, _):
        auth = {"Authorization": "Bearer k"}
        good = {"input": {"images": [b64(noise_image(1)), "bm90IGFuIGltYWdl", b64(noise_image(2))]}}
        assert requests.post(f"{url}/runsync", json=good, headers=auth, timeout=30).ok
        requests.post(f"{url}/runsync", json={"input": {"images": []}}, headers=auth, timeout=30)
        assert requests.get(f"{url}/metrics", timeout=10).status_code == 401  # behind the key
        text = requests.get(f"{url}/metrics", headers=auth, timeout=10).text
    assert sample(text, "vision_worker_jobs_total", outcome="completed") == 1
    assert sample(text, "vision_worker_jobs_total", outcome="failed") == 1
    assert sample(text, "vision_worker_images_total", outcome="ok") == 2
    assert sample(text, "vision_worker_images_total", outcome="invalid_image") == 1
    assert sample(text, "vision_worker_batch_size_count") >= 1
    assert sample(text, "vision_worker_batch_size_sum") == 2  # two good images were batched
    assert sample(text, "vision_worker_queue_seconds_count") == 2
    assert sample(text, "vision_worker_job_seconds_count") == 2
    assert sample(text, "vision_worker_queue_depth") == 0
    assert re.search(r'^vision_worker_model_info\{.*task="classify".*\} 1\.0$', text, re.M)


def test_serverless_metrics_serve_on_their_own_port(model_dir):
    worker = Worker.start(load_settings(MODEL_NAME=str(model_dir("resnet")), WARMUP=False))
    run_job(worker, {"image": b64(noise_image(3))})
    port = free_port()
    worker.metrics.serve(port)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert sample(text, "vision_worker_jobs_total", outcome="completed") == 1
