"""Pod mode over real HTTP on 127.0.0.1: RunPod's routes, the SDK's own client, auth, shutdown."""

from __future__ import annotations

import base64
import time

import pytest
import requests
import runpod

from conftest import encode, noise_image, running_server
from vision_worker.client import merge_stream
from vision_worker.settings import load_settings
from vision_worker.worker import Worker

PNG_BYTES = encode(noise_image(7))
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG_BYTES).decode()
KEY = "s3cret-key"


def _worker(model_dir, arch="resnet", **overrides) -> Worker:
    return Worker.start(
        load_settings(**{"MODEL_NAME": str(model_dir(arch)), "WARMUP": False, **overrides})
    )


@pytest.fixture(scope="module")
def server(model_dir):
    with running_server(_worker(model_dir, POD_API_KEY=KEY, MAX_BATCH_SIZE=8)) as (url, srv):
        yield url, srv


@pytest.fixture
def http(server) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    return session


def _job(**options) -> dict:
    return {"input": {"image": PNG_URI, **options}}


@pytest.mark.parametrize("prefix", ["", "/v2/any-endpoint-id"])
def test_runsync_returns_runpods_completed_body(server, http, prefix):
    url, _ = server
    body = http.post(f"{url}{prefix}/runsync", json=_job(top_k=2), timeout=30).json()
    assert body["status"] == "COMPLETED"
    assert body["id"].startswith("pod-")
    assert len(body["output"]["results"][0]["labels"]) == 2
    assert body["executionTime"] >= 0


def test_runsync_invalid_job_is_failed_with_the_error(server, http):
    url, _ = server
    body = http.post(f"{url}/runsync", json={"input": {"images": []}}, timeout=30).json()
    assert body["status"] == "FAILED"
    assert '"images" is empty' in body["error"]


def test_run_really_runs_in_the_background_and_status_reports_it(server, http):
    url, _ = server
    queued = http.post(f"{url}/run", json=_job(), timeout=30).json()
    assert queued["status"] in {"IN_QUEUE", "IN_PROGRESS"}
    deadline = time.monotonic() + 30
    while True:  # polled with GET and POST, as RunPod allows both
        method = http.get if int(time.monotonic() * 10) % 2 else http.post
        state = method(f"{url}/status/{queued['id']}", timeout=30).json()
        if state["status"] == "COMPLETED":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state["output"]["results"][0]["labels"]


def test_unknown_job_id_is_404(server, http):
    url, _ = server
    response = http.get(f"{url}/status/pod-nope", timeout=30)
    assert response.status_code == 404
    assert "not found" in response.json()["error"]


def test_predict_accepts_multipart_uploads(server, http):
    url, _ = server
    files = [
        ("image", ("a.png", PNG_BYTES, "image/png")),
        ("image", ("b.txt", b"text", "text/plain")),
    ]
    response = http.post(f"{url}/predict", files=files, data={"top_k": "3"}, timeout=30)
    assert response.status_code == 200
    first, second = response.json()["results"]
    assert len(first["labels"]) == 3
    assert second["error"]["code"] == "invalid_image"


def test_health_docs_and_demo_page_are_open_and_everything_else_needs_the_key(server):
    url, _ = server
    health = requests.get(f"{url}/health", timeout=30).json()
    assert health["status"] == "ready"
    assert health["task"] == "classify"
    assert "queue_depth" in health
    assert requests.get(f"{url}/v2/x/health", timeout=30).json()["jobs"]["inQueue"] >= 0
    protected = [
        ("post", "/runsync"),
        ("post", "/run"),
        ("get", "/status/x"),
        ("post", "/v2/x/runsync"),
        ("post", "/cancel/x"),
        ("post", "/predict"),
        ("get", "/status/../runsync"),
        ("get", "/docsx"),
    ]
    for method, path in protected:
        assert requests.request(method, f"{url}{path}", json=_job(), timeout=30).status_code == 401
        wrong = {"Authorization": "Bearer wrong"}
        assert (
            requests.request(method, f"{url}{path}", headers=wrong, timeout=30).status_code == 401
        )
    for path in ("/", "/docs", "/openapi.json"):  # a browser cannot send the key for these
        assert requests.get(f"{url}{path}", timeout=30).status_code == 200


def test_openapi_docs_are_served(server, http):
    url, _ = server
    assert http.get(f"{url}/docs", timeout=30).status_code == 200
    assert "/runsync" in http.get(f"{url}/openapi.json", timeout=30).json()["paths"]


def test_the_official_runpod_sdk_works_against_the_pod_unchanged(server, monkeypatch):
    url, _ = server
    monkeypatch.setattr(runpod, "endpoint_url_base", f"{url}/v2")
    monkeypatch.setattr(runpod, "api_key", KEY)
    endpoint = runpod.Endpoint("my-pod")

    output = endpoint.run_sync(_job(top_k=1), timeout=30)
    assert len(output["results"][0]["labels"]) == 1

    job = endpoint.run(_job(top_k=4))
    assert job.status() in {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert len(job.output(timeout=30)["results"][0]["labels"]) == 4
    assert job.status() == "COMPLETED"
    assert endpoint.health()["jobs"]["completed"] >= 2

    streamed = endpoint.run(_job(top_k=2))
    chunks = list(streamed.stream())  # GET /stream/{id} until the job ends
    assert len(merge_stream(chunks)["results"][0]["labels"]) == 2


def test_concurrent_http_clients_share_batches(server, http):
    from concurrent.futures import ThreadPoolExecutor

    url, srv = server
    worker = srv.config.app.state.pod.worker
    before = sum(n * c for n, c in worker.batcher.batch_sizes.items() if n > 1)
    with ThreadPoolExecutor(16) as pool:
        bodies = list(
            pool.map(
                lambda _: http.post(f"{url}/runsync", json=_job(), timeout=60).json(), range(32)
            )
        )
    assert all(b["status"] == "COMPLETED" for b in bodies)
    assert sum(n * c for n, c in worker.batcher.batch_sizes.items() if n > 1) > before


def test_cancel_and_shutdown_finish_or_cancel_every_job(model_dir):
    worker = _worker(model_dir, MAX_CONCURRENCY=2, MAX_BATCH_SIZE=1)
    original = worker.batcher._run_batch

    def slow(images, options):
        time.sleep(0.3)
        return original(images, options)

    worker.batcher._run_batch = slow
    with running_server(worker) as (url, srv):
        ids = [requests.post(f"{url}/run", json=_job(), timeout=30).json()["id"] for _ in range(6)]
        cancelled = requests.post(f"{url}/v2/e/cancel/{ids[-1]}", timeout=30).json()
        assert cancelled["status"] == "CANCELLED"
        store = srv.config.app.state.pod.store
    # Leaving the block asked the server to exit with five jobs still queued or running.
    states = [store.get(i) for i in ids]
    assert [s.status for s in states[:-1]] == ["COMPLETED"] * 5
    assert all(s.output["results"][0]["labels"] for s in states[:-1])


def test_finished_results_are_bounded_in_memory_and_age():
    from vision_worker.jobs import RECORD_OVERHEAD_BYTES
    from vision_worker.server import COMPLETED, JobRecord, JobStore

    held = RECORD_OVERHEAD_BYTES + 915  # a record, and 915 bytes of JSON each
    store = JobStore(ttl_s=0.3, max_bytes=3 * held + 100)
    records = [store.add(JobRecord(id=str(i), input="x" * 10_000)) for i in range(5)]
    for record in records:
        record.output = {"results": ["y" * 900]}
        store.finish(record, COMPLETED)
    assert [store.get(str(i)) is not None for i in range(5)] == [False, False, True, True, True]
    assert all(r.input is None for r in records)
    assert store.result_bytes <= 3 * held + 100
    assert store.kept_s() < 0.3  # memory, not the TTL, bounds retention now: said in /health
    small = JobStore(ttl_s=0.3, max_bytes=10**7)  # 1,000 records hold ~2 MB
    for i in range(1000):  # many small results all last the TTL
        record = small.add(JobRecord(id=str(i), input=None))
        record.output = {"labels": []}
        small.finish(record, COMPLETED)
    assert small.get("0") is not None
    assert small.kept_s() == 0.3
    time.sleep(0.35)
    assert small.get("999") is None


def test_oversized_bodies_and_too_many_uploads_are_refused_early(model_dir):
    worker = _worker(model_dir, MAX_IMAGES_PER_JOB=2, MAX_IMAGE_BYTES=4096)
    with running_server(worker) as (url, _server):
        huge = {"input": {"image": "A" * 200_000}}  # the limit here is 78,506 bytes
        response = requests.post(f"{url}/runsync", json=huge, timeout=30)
        assert response.status_code == 413
        assert "request body over" in response.json()["error"]
        assert response.json()["error_code"] == "too_large"
        files = [("image", (f"{i}.png", PNG_BYTES, "image/png")) for i in range(3)]
        response = requests.post(f"{url}/predict", files=files, timeout=30)
        assert response.status_code == 413
        assert response.json() == {
            "error": "too many images: 3, at most 2",
            "error_code": "too_large",
        }
        small = requests.post(f"{url}/runsync", json=_job(), timeout=30).json()
        assert small["status"] == "COMPLETED"


def test_predict_takes_options_from_the_query_string_too(server, http):
    url, _ = server
    files = [("image", ("a.png", PNG_BYTES, "image/png"))]
    response = http.post(f"{url}/predict?top_k=2", files=files, timeout=30)
    assert len(response.json()["results"][0]["labels"]) == 2
    twice = http.post(f"{url}/predict?top_k=2", files=files, data={"top_k": "3"}, timeout=30)
    assert twice.status_code == 400
    assert twice.json() == {
        "error": 'option "top_k" is given twice (query string and form)',
        "error_code": "invalid_input",
    }
    unknown = http.post(f"{url}/predict?colour=red", files=files, timeout=30)
    assert unknown.status_code == 400
    assert 'unknown input key "colour"' in unknown.json()["error"]


@pytest.fixture(scope="module")
def zero_shot_server(model_dir):
    with running_server(_worker(model_dir, "clip")) as (url, srv):
        yield url, srv


def test_predict_form_and_openapi_follow_the_served_tasks_options(zero_shot_server):
    from vision_worker.tasks.zero_shot import ZeroShotOptions

    url, _ = zero_shot_server
    files = [("image", ("a.png", PNG_BYTES, "image/png"))]
    repeated = requests.post(
        f"{url}/predict", files=files, data={"labels": ["cat", "dog", "car"]}, timeout=30
    ).json()
    as_json = requests.post(
        f"{url}/predict", files=files, data={"labels": '["cat", "dog", "car"]'}, timeout=30
    ).json()
    assert {e["label"] for e in repeated["results"][0]["labels"]} == {"cat", "dog", "car"}
    assert repeated["results"] == as_json["results"]
    one = requests.post(f"{url}/predict", files=files, data={"labels": "cat"}, timeout=30).json()
    assert [e["label"] for e in one["results"][0]["labels"]] == ["cat"]
    missing = requests.post(f"{url}/predict", files=files, timeout=30)
    assert missing.status_code == 400
    assert missing.json() == {"error": '"labels" is required', "error_code": "invalid_input"}

    schema = requests.get(f"{url}/openapi.json", timeout=30).json()
    form = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(form["schema"]["properties"]) == {"image", *ZeroShotOptions.model_fields}


def test_framework_errors_have_the_one_error_shape(server, http):
    url, _ = server
    missing = http.get(f"{url}/no/such/route", timeout=10)
    assert (missing.status_code, missing.json()) == (404, {"error": "Not Found"})
    wrong_method = http.get(f"{url}/runsync", timeout=10)
    assert (wrong_method.status_code, wrong_method.json()) == (405, {"error": "Method Not Allowed"})
    malformed = http.post(f"{url}/runsync", data="{not json", timeout=10)
    assert malformed.status_code == 400
    assert set(malformed.json()) == {"error", "error_code"}
    assert malformed.json()["error_code"] == "invalid_input"


RECORD_RSS_PROBE = """
import asyncio, gc, json, uuid
from vision_worker.jobs import FAILED, JobRecord, JobStore, JobStream

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

async def finished_run_jobs(store, count):
    async def job():
        return None
    for i in range(count):  # as /run leaves them: a stream, a done task, a failed image
        record = store.add(JobRecord(id=f"pod-{uuid.uuid4()}", input={"image": "A" * 100}))
        record.stream, record.task = JobStream(), asyncio.create_task(job())
        await record.task
        record.error, record.error_code = f"image 0: not a supported image ({i})", "invalid_input"
        store.finish(record, FAILED)

store = JobStore(ttl_s=3600, max_bytes=10**12)
asyncio.run(finished_run_jobs(store, 500))  # allocator and interpreter warm
gc.collect()
before, reported = rss(), store.result_bytes
asyncio.run(finished_run_jobs(store, 20_000))
gc.collect()
print(json.dumps({"rss": rss() - before, "reported": store.result_bytes - reported}))
"""


def test_the_result_store_reports_the_memory_its_records_hold():
    """20,000 failed /run jobs: what /health's result_store_mb counts is within 1.5x of the RSS
    they add (it once counted 69 bytes a record of the 2.7 KB they held)."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", RECORD_RSS_PROBE], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout)
    assert measured["reported"] / 1.5 <= measured["rss"] <= measured["reported"] * 1.5, measured


def test_admission_costs_the_same_however_full_the_store_is():
    """/run's admission check counts jobs in flight without walking the finished ones."""
    import timeit

    from vision_worker.server import COMPLETED, JobRecord, JobStore

    store = JobStore(ttl_s=3600, max_bytes=10**12)
    empty = min(timeit.repeat(store.active_count, number=1000, repeat=5))
    for i in range(20_000):
        store.finish(store.add(JobRecord(id=str(i), input=None)), COMPLETED)
    store.add(JobRecord(id="running", input=None))
    assert store.active_count() == 1
    full = min(timeit.repeat(store.active_count, number=1000, repeat=5))
    assert full < empty * 20  # a walk over 20,000 records would be ~10,000x
