"""The second red team's inputs, each within every limit before: bounded before they cost
anything, failing their own image alone, and never holding a thread past its deadline."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from conftest import _LOOP, b64, encode, photo, run_job
from vision_worker.errors import ImageError
from vision_worker.fetch import UrlFetcher
from vision_worker.images import ImageLimits, open_image

LIMITS = ImageLimits(max_bytes=20_000_000, max_pixels=40_000_000)


def _tiled_tiff(width: int, height: int, tile_width: int, tile_height: int) -> bytes:
    """A TIFF of width x height declaring one LZW tile of tile_width x tile_height (167 B)."""
    entries = [
        (256, 3, width),
        (257, 3, height),
        (258, 3, 8),
        (259, 3, 5),
        (262, 3, 1),
        (277, 3, 1),
        (322, 4, tile_width),
        (323, 4, tile_height),
        (324, 4, 8 + 2 + 10 * 12 + 4),
        (325, 4, 16),
    ]
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + struct.pack("<I", 0) + b"\x80" + b"\x00" * 15


def test_a_tiff_declaring_a_huge_tile_is_refused_before_libtiff_allocates_it():
    with pytest.raises(ImageError, match="TIFF tiles of 16384x43680 for a 16x16 image") as caught:
        open_image(_tiled_tiff(16, 16, 16384, 43680), LIMITS)
    assert caught.value.code == "too_large"
    open_image(_tiled_tiff(16, 16, 256, 256), LIMITS)  # a usual tile for a small image: fine


@pytest.mark.parametrize("size", [(1, 6000), (6000, 1), (3300, 100)])
def test_strips_are_refused_by_their_aspect_ratio_before_decoding(size):
    strip = encode(Image.new("RGB", size, (9, 9, 9)))
    with pytest.raises(ImageError, match="over MAX_ASPECT_RATIO=32") as caught:
        open_image(strip, LIMITS)
    assert caught.value.code == "too_large"
    open_image(encode(Image.new("RGB", (4000, 500))), LIMITS)  # an 8:1 panorama: fine


def test_a_jpeg_with_thousands_of_scans_is_refused_without_decoding():
    progressive = encode(photo("chelsea").convert("RGB"), "JPEG", progressive=True)
    last_scan = progressive.rindex(b"\xff\xda")
    scan = progressive[last_scan:-2]  # the last scan, up to the end-of-image marker
    hostile = progressive[:-2] + scan * 500 + b"\xff\xd9"
    started = time.perf_counter()
    with pytest.raises(ImageError, match="scans, at most 100"):
        open_image(hostile, LIMITS)
    assert time.perf_counter() - started < 1.0
    open_image(progressive, LIMITS)  # an ordinary progressive JPEG (about 10 scans): fine


@pytest.mark.parametrize("url", ["http://[::1", "http://a]b/", "https://[bad::ip/x.png"])
def test_a_url_that_does_not_parse_fails_its_own_image(make_worker, url):
    worker = make_worker("resnet")
    output = run_job(worker, {"images": [url, b64(photo("chelsea"))]})
    assert output["results"][0]["error"]["code"] == "invalid_image"
    assert "not a valid URL" in output["results"][0]["error"]["message"]
    assert "labels" in output["results"][1]


@contextmanager
def _raw_server(respond):
    """A TCP server on 127.0.0.1 whose every connection is handed to respond(sock)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_quietly, args=(respond, conn, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _quietly(respond, conn, stop) -> None:
    try:
        conn.recv(65536)
        respond(conn, stop)
    except OSError:
        pass
    finally:
        conn.close()


def _drip_headers(conn, stop) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Slow: " + b"a" * 1000:
        if stop.is_set():
            return
        conn.sendall(bytes([byte]))
        time.sleep(0.2)


def _endless_body(conn, stop) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    chunk = b"x" * 65536
    while not stop.is_set():
        conn.sendall(chunk)


def test_a_server_dripping_headers_is_cut_at_the_deadline_and_frees_its_thread():
    fetcher = UrlFetcher(timeout_s=1.0, max_bytes=1_000_000, allow_private=True, retries=0)
    with _raw_server(_drip_headers) as base:
        before = threading.active_count()
        started = time.perf_counter()
        errors = []

        def fetch(i: int) -> None:
            try:
                fetcher.fetch(f"{base}/slow{i}.png")
            except ImageError as error:
                errors.append(error)

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        took = time.perf_counter() - started
    assert len(errors) == 6
    assert all(e.code == "fetch_failed" for e in errors)
    assert took < 3.0, took  # cut at 1 s, not after the drip's 200 s
    deadline = time.monotonic() + 5
    while threading.active_count() > before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the server's own handler threads wind down
    assert threading.active_count() <= before + 1  # the watchdog thread, at most


def test_a_webhook_receiver_answering_with_an_endless_body_costs_nothing():
    fetcher = UrlFetcher(timeout_s=2.0, max_bytes=1_000_000, allow_private=True, retries=0)
    with _raw_server(_endless_body) as base:
        started = time.perf_counter()
        assert fetcher.post_json(f"{base}/hook", {"id": "job"}) == 200
    assert time.perf_counter() - started < 2.0


def test_streamed_chunks_hold_the_output_limit_too(make_worker):
    worker = make_worker("vit", MAX_OUTPUT_MB=0.05)
    images = [b64(photo("chelsea", size=(800, 600)))] * 4

    async def chunks() -> list[dict]:
        return [chunk async for chunk in worker.stream({"images": images, "explain": True})]

    streamed = _LOOP.run_until_complete(chunks())
    assert "over the 0.05 MB a job may return" in streamed[-1]["error"]
    sent = sum(len(json.dumps(c)) for c in streamed[:-1])
    assert sent <= 50_000 + 2_000, sent  # what went out before the limit, not 4 heatmaps


def test_the_aspect_ratio_limit_is_a_setting(make_worker):
    strip = b64(encode(Image.fromarray(np.zeros((10, 400, 3), np.uint8))))  # 40:1
    assert run_job(make_worker("resnet"), {"image": strip})["results"][0]["error"]["code"] == (
        "too_large"
    )
    relaxed = make_worker("resnet", MAX_ASPECT_RATIO=50)
    assert "labels" in run_job(relaxed, {"image": strip})["results"][0]


def _never_answer(conn, stop) -> None:
    stop.wait(60)


def test_webhook_receivers_that_never_answer_do_not_hold_up_other_requests():
    """Eight /run jobs whose receivers hold their deliveries open: a /runsync behind them is
    answered at once (deliveries once shared the small pool that parses request bodies)."""
    import requests

    from conftest import running_server
    from test_routes import FakeWorker, _labels

    worker = FakeWorker(_labels, ALLOW_PRIVATE_URLS=True, URL_TIMEOUT_S=60)
    with _raw_server(_never_answer) as receiver, running_server(worker) as (url, _):
        for i in range(8):
            job = {"input": {"image": "x"}, "webhook": f"{receiver}/hook{i}"}
            assert requests.post(f"{url}/run", json=job, timeout=10).status_code == 200
        time.sleep(0.5)  # the deliveries are under way, each holding a thread
        answer = requests.post(f"{url}/runsync", json={"input": {"image": "y"}}, timeout=10)
        assert answer.json()["status"] == "COMPLETED"


def test_a_host_that_drops_the_handshake_holds_a_download_only_its_deadline():
    """A listener whose accept queue is full drops every new SYN, as a blackholed host does:
    connect retries stay within URL_TIMEOUT_S (they once took it three times over)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    try:
        for _ in range(4):  # fill the accept queue; later handshakes go unanswered
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            queued.append(filler)
        time.sleep(0.2)
        fetcher = UrlFetcher(timeout_s=1.0, max_bytes=1_000_000, allow_private=True, retries=2)
        started = time.perf_counter()
        with pytest.raises(ImageError) as failed:
            fetcher.fetch(f"http://127.0.0.1:{port}/a.png")
        took = time.perf_counter() - started
    finally:
        for filler in queued:
            filler.close()
        listener.close()
    assert failed.value.code == "fetch_failed"
    assert took < 2.0, took  # one deadline (1 s), not three connect timeouts; measured 1.0 s


def test_polling_a_large_result_never_serialises_it_again(monkeypatch):
    """Eight clients polling one finished 7.6 MB result: each answer copies the kept bytes; the
    output is not serialised per request on the event loop (that took /health from 4 to 240 ms)."""
    import concurrent.futures

    import requests

    from conftest import running_server
    from test_routes import FakeWorker
    from vision_worker import jobs

    big = {"results": [{"embedding": [0.123456789] * 640} for _ in range(1000)]}
    worker = FakeWorker(lambda _input: big)
    serialised: list[int] = []
    real = jobs.encode_output
    monkeypatch.setattr(jobs, "encode_output", lambda v: serialised.append(1) or real(v))
    with running_server(worker) as (url, _):
        job_id = requests.post(f"{url}/run", json={"input": {"image": "x"}}, timeout=10).json()
        job_id = job_id["id"]
        deadline = time.monotonic() + 10
        while requests.get(f"{url}/status/{job_id}", timeout=10).json()["status"] != "COMPLETED":
            assert time.monotonic() < deadline
        serialised.clear()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: requests.get(f"{url}/status/{job_id}", timeout=30), range(16))
            )
    assert all(a.json()["output"] == big for a in answers)
    assert len(answers[0].content) > 7_000_000
    assert len(serialised) == 16  # each answer's small envelope, never the output again
