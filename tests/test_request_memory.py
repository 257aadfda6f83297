"""What a request may cost, counted as a whole: JSON bodies held to MAX_BODY_MB and to a
process-wide budget with what parsing makes of them, uploads parsed as they stream in with each
file cut one byte past its limit. Refusals are sentences; the process stays within its bound."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from conftest import encode, free_port, noise_image, running_server
from test_routes import FakeWorker, _labels

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
PNG_BYTES = encode(noise_image(7))


def _sizes(job_input) -> dict:
    """An answer saying how many bytes each uploaded image of the job carried."""
    return {"results": [{"bytes": len(data)} for data in job_input["files"]]}


def test_a_json_body_over_max_body_mb_is_refused_naming_the_setting():
    worker = FakeWorker(_labels, MAX_BODY_MB=1)
    with running_server(worker) as (url, _):
        big = {"input": {"image": "A" * (2 * MIB)}}
        answer = requests.post(f"{url}/runsync", json=big, timeout=30)
        assert answer.status_code == 413
        assert "MAX_BODY_MB" in answer.json()["error"]
        small = requests.post(f"{url}/runsync", json={"input": {"image": "A"}}, timeout=30)
        assert small.json()["status"] == "COMPLETED"
    assert len(worker.jobs) == 1


def test_a_body_of_a_million_small_values_is_refused_before_parsing():
    worker = FakeWorker(_labels)
    with running_server(worker) as (url, _):
        body = b'{"input": {"image": "A", "x": "' + b'"ab",' * 300_000 + b'"ab"}}'
        answer = requests.post(f"{url}/runsync", data=body, timeout=30)
        assert answer.status_code == 400
        assert "over 200000 values" in answer.json()["error"]
    assert worker.jobs == []


def test_a_body_that_can_never_fit_the_request_budget_is_413_and_one_that_must_wait_is_503():
    worker = FakeWorker(_labels, REQUEST_MEMORY_MB=8)
    with running_server(worker) as (url, _):
        answer = requests.post(
            f"{url}/runsync", json={"input": {"image": "A" * (2 * MIB)}}, timeout=30
        )  # 6x of 2 MB is over 8 MB
        assert answer.status_code == 413
        assert "REQUEST_MEMORY_MB" in answer.json()["error"]
        fits = requests.post(f"{url}/runsync", json={"input": {"image": "A" * MIB}}, timeout=30)
        assert fits.json()["status"] == "COMPLETED"


def test_an_oversized_upload_part_costs_its_limit_and_fails_its_image_alone():
    """A 40 MB file with MAX_IMAGE_BYTES of 1 MiB: the job gets one byte over the limit of it
    (the image stage then fails that image as too_large) and the next file whole; nothing of
    it is spooled to disk."""
    worker = FakeWorker(_sizes, MAX_IMAGE_BYTES=MIB)
    spooled_before = _spooled_files()
    with running_server(worker) as (url, _):
        files = [
            ("image", ("huge.jpg", b"\xff" * (40 * MIB), "image/jpeg")),
            ("image", ("cat.png", PNG_BYTES, "image/png")),
        ]
        answer = requests.post(f"{url}/predict", files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"] == [{"bytes": MIB + 1}, {"bytes": len(PNG_BYTES)}]
    assert _spooled_files() <= spooled_before


def test_form_fields_are_bounded_in_number_and_size():
    worker = FakeWorker(_labels)
    with running_server(worker) as (url, _):
        image = [("image", ("cat.png", PNG_BYTES, "image/png"))]
        many = [(f"f{i}", (None, "x")) for i in range(65)]
        answer = requests.post(f"{url}/predict", files=image + many, timeout=30)
        assert answer.status_code == 400
        assert "too many form fields: at most 64" in answer.json()["error"]
        long = [("top_k", (None, "1" * (300 * 1024)))]
        answer = requests.post(f"{url}/predict", files=image + long, timeout=30)
        assert answer.status_code == 413
        assert 'form field "top_k" over' in answer.json()["error"]
    assert worker.jobs == []


def _spooled_files() -> int:
    import tempfile

    return len(os.listdir(tempfile.gettempdir()))


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _pod_server(model_dir, **settings: str) -> tuple[subprocess.Popen, str]:
    """A pod server (`python handler.py --serve`) on the tiny ResNet in a process of its own,
    ready; the caller kills it."""
    from test_newcomer import _wait_ready

    port = free_port()
    environment = {
        **os.environ,
        "MODEL_NAME": str(model_dir("resnet")),
        "SERVE_MODE": "pod",
        "WARMUP": "false",
        **settings,
    }
    pod = subprocess.Popen(
        [sys.executable, "handler.py", "--serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, pod)
    except BaseException:
        pod.kill()
        raise
    return pod, url


# The worst legal JSON body: 30 MB of base64 behind one escaped emoji, which makes Python hold
# the whole string at four bytes a character (126 MB parsed).
WORST_BODY = b'{"input": {"image": "\\ud83d\\ude00' + b"A" * (30 * MIB - 64) + b'"}}'


def test_many_worst_legal_bodies_at_once_stay_within_the_request_budget(model_dir):
    """Six of the worst 30 MB bodies at once: without a budget they parse to ~1 GB together;
    with REQUEST_MEMORY_MB=400 at most two are held at a time, the others wait their turn
    (or get 503), every one is answered and the pod's peak RSS stays within the budget."""
    pod, url = _pod_server(model_dir, REQUEST_MEMORY_MB="400")
    try:
        requests.post(f"{url}/runsync", json={"input": {"image": "A"}}, timeout=60)
        idle = _vm(pod.pid, "VmRSS")

        def send(_: int) -> requests.Response:
            headers = {"Content-Type": "application/json"}
            return requests.post(f"{url}/runsync", data=WORST_BODY, headers=headers, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(send, range(6)))
        peak = _vm(pod.pid, "VmHWM")
        assert pod.poll() is None
    finally:
        pod.kill()
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 503}, [a.text[:200] for a in answers]
    assert statuses.count(200) >= 2
    for answer in answers:
        if answer.status_code == 200:  # the job ran; its one image is not an image
            error = answer.json()["output"]["results"][0]["error"]
            assert error["code"] in {"invalid_image", "too_large"}
        else:
            assert "REQUEST_MEMORY_MB" in answer.json()["error"]
    print(f"peak over idle: {(peak - idle) / MIB:.0f} MiB, statuses {statuses}")
    assert peak - idle < (400 + 150) * MIB, (peak - idle) / MIB


def test_openai_routes_share_the_request_budget():
    worker = FakeWorker(_labels, REQUEST_MEMORY_MB=8)
    with running_server(worker) as (url, _):
        body = {"model": "m", "messages": [{"role": "user", "content": "x" * (2 * MIB)}]}
        answer = requests.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 413
    assert "REQUEST_MEMORY_MB" in answer.json()["error"]["message"]
    assert worker.jobs == []


def test_uploaded_files_reach_the_worker_as_bytes_and_answer_as_base64_does(make_worker):
    from conftest import _LOOP, b64, encode, photo

    worker = make_worker("resnet")
    image = encode(photo("chelsea"))
    as_files = _LOOP.run_until_complete(worker.run({"top_k": 2}, files=[image, b"junk"]))
    as_base64 = _LOOP.run_until_complete(
        worker.run({"images": [b64(image), b64(b"junk")], "top_k": 2})
    )
    assert as_files["results"] == as_base64["results"]
    assert as_files["results"][1]["error"]["code"] == "invalid_image"
    both = _LOOP.run_until_complete(worker.run({"image": b64(image)}, files=[image]))
    assert both["error"] == 'give images as uploaded files or in "images", not both'


def test_memory_goes_back_after_a_large_body_even_once_its_input_is_small(monkeypatch):
    """A 4 MB body reserves 24 MB while it is read and parsed, then only what its input holds:
    its chunks and the parse's garbage were heap all the same, so its release trims the heap
    (the hour soak's classify server kept 20 MiB a time of such bodies, given back only later)."""
    import asyncio

    from vision_worker import bodies

    trims = []
    monkeypatch.setattr(bodies, "return_free_memory", lambda: trims.append(1) or True)

    async def a_large_body_parsed_small() -> None:
        budget = bodies.RequestBudget(1024 * 1024 * 1024)
        reservation = await budget.reserve(24 * 1024 * 1024)
        await reservation.resize(512 * 1024)  # what the parsed input holds
        await reservation.release()
        small = await budget.reserve(1024 * 1024)
        await small.release()

        await asyncio.sleep(bodies.TRIM_DELAY_S + 0.5)  # the trim comes shortly after

    asyncio.run(a_large_body_parsed_small())
    assert trims == [1]  # the large body's release trims; the small one's does not


def test_bodies_cut_off_over_the_limit_leave_no_heap_behind(model_dir):
    """Chunked bodies (no Content-Length) over the body limit are cut off with a 413. Their
    chunks rode on the failed read's error, in a reference cycle that only the garbage
    collector's next full pass freed: 15 such 21 MB bodies grew the pod by 84-117 MiB, given
    back minutes later (the hour soak's classify sawtooth); now by 3 MiB."""
    pod, url = _pod_server(model_dir, MAX_IMAGE_BYTES="1000000", MAX_IMAGES_PER_JOB="16")

    def over_the_limit():
        for _ in range(24 * MIB // 65536):
            yield b" " * 65536

    def cut_off() -> int | None:
        headers = {"Content-Type": "application/json"}
        try:
            return requests.post(
                f"{url}/runsync", data=over_the_limit(), headers=headers, timeout=60
            ).status_code
        except requests.RequestException:
            return None  # cut off mid-body, after the 413

    try:
        cut_off()  # the first one's heap is the pool every later one reuses
        time.sleep(1.0)
        before = _vm(pod.pid, "VmRSS")
        statuses = {cut_off() for _ in range(15)}
        time.sleep(1.0)  # the trim comes shortly after each
        grown = _vm(pod.pid, "VmRSS") - before
        assert pod.poll() is None
    finally:
        pod.kill()
    assert statuses <= {413, None}, statuses
    assert grown < 30 * MIB, grown / MIB
