"""RunPod's "webhook" on /run in pod mode: the final job JSON is POSTed when the job ends,
retried twice, through the same private-address guard as image URLs."""

from __future__ import annotations

import json
import time

import requests
from werkzeug import Response

from conftest import b64, noise_image, running_server
from vision_worker.settings import load_settings
from vision_worker.worker import Worker


def _worker(model_dir, **settings) -> Worker:
    return Worker.start(
        load_settings(
            MODEL_NAME=str(model_dir("resnet")), WARMUP=False, WEBHOOK_RETRY_S=0.1, **settings
        )
    )


def _wait_for(predicate, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_final_job_json_is_posted_and_retried(model_dir, httpserver):
    received: list[dict] = []

    def flaky(request):
        received.append(json.loads(request.data))
        return Response("busy", status=503 if len(received) == 1 else 200)

    httpserver.expect_request("/hook", method="POST").respond_with_handler(flaky)
    with running_server(_worker(model_dir, ALLOW_PRIVATE_URLS=True)) as (url, _):
        body = {"input": {"image": b64(noise_image(1))}, "webhook": httpserver.url_for("/hook")}
        job_id = requests.post(f"{url}/run", json=body, timeout=10).json()["id"]
        _wait_for(lambda: len(received) == 2)
    assert received[0] == received[1]  # the same delivery, tried again after a 503
    assert received[1]["id"] == job_id
    assert received[1]["status"] == "COMPLETED"
    assert received[1]["output"]["results"][0]["labels"]


def test_a_webhook_to_a_private_address_is_never_called(model_dir, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    with running_server(_worker(model_dir)) as (url, server):
        body = {"input": {"image": b64(noise_image(1))}, "webhook": httpserver.url_for("/hook")}
        job_id = requests.post(f"{url}/run", json=body, timeout=10).json()["id"]
        pod = server.config.app.state.pod
        _wait_for(lambda: pod.store.get(job_id).status == "COMPLETED")
        time.sleep(0.5)
    assert httpserver.log == []  # 127.0.0.1 is refused by the address guard


def test_a_malformed_webhook_is_refused_with_the_job(model_dir):
    with running_server(_worker(model_dir)) as (url, _):
        for webhook, message in (
            (42, '"webhook" must be a URL string'),
            ("file:///etc/passwd", "only http and https"),
        ):
            body = {"input": {"image": b64(noise_image(1))}, "webhook": webhook}
            refused = requests.post(f"{url}/run", json=body, timeout=10)
            assert refused.status_code == 400
            assert message in refused.json()["error"]
