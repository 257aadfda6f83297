"""Soak: one pod server per task on a tiny model, fed a steady mix of valid jobs and both red
teams' hostile inputs; reports RSS, latency, lost jobs, crashes, fds and threads, with verdicts.

python bench/soak.py --duration 3600 --rate 3 --out bench/results/soak_1h.json

Each server is `python handler.py` in pod mode on 127.0.0.1, as a pod runs it. Requests go out
open-loop at --rate per second (a slow server does not slow the sender down), each on a fresh
connection, so the server's file descriptors count only what it keeps by itself. The run:
one pass of every request kind at once (the pools reach their working size), --warmup seconds
of load, the baseline (fds, threads), --duration seconds measured, then a quiet settle and the
end figures. Exit status 0 when every verdict holds.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

# The red teams' inputs, reused from the tests rather than copied: the soak replays what they
# send. Their imports need only the dev requirements.
from conftest import b64, encode, noise_image, photo  # noqa: E402
from corpus import GOOD, IMAGES  # noqa: E402
from test_hostile_round2 import (  # noqa: E402
    _drip_headers,
    _endless_body,
    _never_answer,
    _raw_server,
    _tiled_tiff,
)
from vision_worker.dev.tiny_models import build  # noqa: E402

# What every server runs with. The corpus's own limits (test_hostile.py), so its large entries
# cross them; short read deadlines and URL timeout, so dripping clients and servers are cut
# within seconds; a 30 s result TTL, so the result store is full by the end of the warm-up and
# the RSS verdict sees leaks, not the store filling; a short drain, so the servers stop quickly.
SERVER_SETTINGS = {
    "SERVE_MODE": "pod",
    "HOST": "127.0.0.1",
    "LOG_LEVEL": "WARNING",
    "MAX_IMAGE_BYTES": "1000000",
    "MAX_IMAGE_PIXELS": "20000000",
    "MAX_IMAGES_PER_JOB": "16",
    "URL_RETRIES": "0",
    "URL_TIMEOUT_S": "1",
    "HEADER_TIMEOUT_S": "2",
    "BODY_TIMEOUT_S": "4",
    "RESULT_TTL_S": "30",
    "WEBHOOK_RETRY_S": "0.5",
    "SHUTDOWN_GRACE_S": "1",
    # Eleven servers share the machine's cores: one torch thread each keeps them from
    # oversubscribing it (latency then measures queueing, not thread thrash).
    "OMP_NUM_THREADS": "1",
}
# The pod's body limit for these settings (server.max_request_bytes).
BODY_LIMIT = 16 * (1_000_000 * 4 // 3 + 1024) + 64 * 1024
HEADER_TIMEOUT_S = float(SERVER_SETTINGS["HEADER_TIMEOUT_S"])
BODY_TIMEOUT_S = float(SERVER_SETTINGS["BODY_TIMEOUT_S"])
# The server that may fetch from 127.0.0.1: the dripping image server and the endless webhook
# receiver live there. Only this one: the corpus's private URLs must stay forbidden elsewhere.
PRIVATE_URL_TASK = "detect"

PNG = b64(photo("chelsea", (64, 48)))
SMALL_PNG = b64(noise_image(5, (24, 16)))  # upscale's output is 4x: keep it small


@dataclass(frozen=True)
class TaskSpec:
    """A task's server: the tiny architecture that serves it and its valid job's options."""

    arch: str
    options: dict[str, Any]
    image: str = PNG
    env: dict[str, str] = field(default_factory=dict)


TASKS: dict[str, TaskSpec] = {
    "classify": TaskSpec("resnet", {"top_k": 3}),
    "caption": TaskSpec("vit-gpt2", {"max_new_tokens": 8}),
    "zero_shot": TaskSpec("clip", {"labels": ["a cat", "a dog", "a car"]}),
    "embed": TaskSpec("clip", {}, env={"TASK": "embed"}),
    "detect": TaskSpec("yolos", {}, env={"ALLOW_PRIVATE_URLS": "true"}),
    "zero_shot_detect": TaskSpec("owlvit", {"labels": ["cat", "remote"]}),
    "ask": TaskSpec("llava", {"question": "What is in the picture?", "max_new_tokens": 8}),
    "segment": TaskSpec("segformer", {}),
    "depth": TaskSpec("depth-anything", {}),
    "mask": TaskSpec("sam", {"prompts": [{"points": [[30, 20]]}]}),
    "upscale": TaskSpec("swin2sr", {}, image=SMALL_PNG),
    "ocr": TaskSpec("got-ocr2", {"max_new_tokens": 8}),
    "florence": TaskSpec("florence2", {"task_prompt": "<OD>", "max_new_tokens": 8}),
}


# --- the servers -------------------------------------------------------------------------------
@dataclass
class PodProcess:
    """One `python handler.py` pod server and what /proc says about it."""

    task: str
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_mib(self) -> float:
        return _proc_status(self.process.pid, "VmRSS") / 1024

    def threads(self) -> int:
        return _proc_status(self.process.pid, "Threads")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(task: str, model: Path, logs: Path) -> PodProcess:
    spec = TASKS[task]
    port = free_port()
    env = {**os.environ, **SERVER_SETTINGS, **spec.env, "MODEL_NAME": str(model)}
    env["PORT"] = str(port)
    with (logs / f"{task}.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "handler.py")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return PodProcess(task, port, process)


def wait_ready(server: PodProcess, timeout_s: float) -> None:
    """Until /ping answers 200 (204 while the model loads)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.task} server exited with {server.process.returncode}")
        try:
            status = requests.get(f"{server.url}/ping", timeout=5).status_code
        except requests.ConnectionError:
            status = None  # not listening yet
        if status == 200:
            return
        if status == 503:  # the model failed to load: /health says why
            error = requests.get(f"{server.url}/health", timeout=5).json().get("error")
            raise RuntimeError(f"{server.task} server cannot start: {error}")
        time.sleep(0.3)
    raise RuntimeError(f"{server.task} server not ready within {timeout_s:.0f} s")


@contextmanager
def pod_servers(tasks: list[str], models: Path, logs: Path) -> Iterator[list[PodProcess]]:
    """Every task's server, started at once and ready; SIGTERM (then SIGKILL) at the end."""
    paths = {task: models / TASKS[task].arch for task in tasks}
    for path in set(paths.values()):
        if not (path / "config.json").exists():
            build(path.name, path)
    logs.mkdir(parents=True, exist_ok=True)
    servers = [start_server(task, paths[task], logs) for task in tasks]
    try:
        for server in servers:
            wait_ready(server, timeout_s=300)
        yield servers
    finally:
        for server in servers:
            if server.alive():
                server.process.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


# --- requests ----------------------------------------------------------------------------------
class Lost(Exception):
    """A valid job that did not come back completed: the reason."""


TIMEOUT_S = 60.0  # a valid job not answered (or /run not finished) in this long is stuck
JSON = {"Content-Type": "application/json"}


def post(url: str, body: bytes, headers: dict | None = None, timeout: float = TIMEOUT_S):
    return requests.post(url, data=body, headers=headers or JSON, timeout=timeout)


def job_body(job_input: Any, **extra: Any) -> bytes:
    return json.dumps({"input": job_input, **extra}).encode()


def _completed_results(body: dict) -> None:
    if body.get("status") != "COMPLETED":
        raise Lost(f"status {body.get('status')}: {str(body.get('error'))[:200]}")
    _results_ok(body["output"])


def _results_ok(output: dict) -> None:
    failed = [r for r in output.get("results", []) if "error" in r]
    if not output.get("results") or failed:
        raise Lost(f"results failed: {str(failed or output)[:200]}")


@dataclass(frozen=True)
class ValidKind:
    """A valid job of one task, sent one way (/runsync, /run + /status, /predict)."""

    task: str
    route: str

    def send(self, base: str) -> None:
        """Raises Lost unless the job completes with every result."""
        spec = TASKS[self.task]
        job = {"image": spec.image, **spec.options}
        try:
            getattr(self, f"_{self.route}")(base, job)
        except requests.RequestException as error:
            raise Lost(f"{type(error).__name__}: {str(error)[:200]}") from None

    def _runsync(self, base: str, job: dict) -> None:
        response = post(f"{base}/runsync", job_body(job))
        if response.status_code != 200:
            raise Lost(f"HTTP {response.status_code}: {response.text[:200]}")
        _completed_results(response.json())

    def _run(self, base: str, job: dict) -> None:
        response = post(f"{base}/run", job_body(job))
        if response.status_code != 200:
            raise Lost(f"HTTP {response.status_code}: {response.text[:200]}")
        job_id = response.json()["id"]
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            state = requests.get(f"{base}/status/{job_id}", timeout=TIMEOUT_S).json()
            if state["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
                _completed_results(state)
                return
            time.sleep(0.05)
        raise Lost(f"stuck: /run job {job_id} not finished in {TIMEOUT_S:.0f} s")

    def _predict(self, base: str, job: dict) -> None:
        image = base64.b64decode(job.pop("image"))
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in job.items()}
        files = [("image", ("photo.png", image, "image/png"))]
        response = requests.post(f"{base}/predict", data=form, files=files, timeout=TIMEOUT_S)
        if response.status_code != 200:
            raise Lost(f"HTTP {response.status_code}: {response.text[:200]}")
        _results_ok(response.json())


def valid_kinds(tasks: list[str]) -> list[ValidKind]:
    return [ValidKind(t, r) for t in tasks for r in ("runsync", "run", "predict")]


# A hostile request's check: None when the server answered as it should, else what it did.
Check = Callable[[str], str | None]


@dataclass(frozen=True)
class Hostile:
    name: str
    task: str
    check: Check


def _answer(response: requests.Response, statuses: set[int]) -> str | None:
    if response.status_code in statuses:
        return None
    return f"HTTP {response.status_code} (wanted {sorted(statuses)}): {response.text[:160]}"


def refused(path: str, body: bytes, status: int, headers: dict | None = None) -> Check:
    """The request is refused with `status` and the {"error": ...} shape."""

    def check(base: str) -> str | None:
        try:
            response = post(f"{base}{path}", body, headers)
        except requests.ConnectionError:
            # A body over the limit is answered 413 before it is read, and the connection
            # closed: the client may see that as a reset while it is still sending.
            return None if status == 413 else "connection failed"
        problem = _answer(response, {status})
        if problem is None and "error" not in response.json():
            return f"HTTP {status} without an error: {response.text[:160]}"
        return problem

    return check


def image_fails_alone(image: str, code: str | None) -> Check:
    """The corpus's test: the hostile image among two good ones fails alone with `code` (or
    succeeds where the corpus says it should); a body over the limit is a 413."""
    body = job_body({"images": [GOOD, image, GOOD]})
    if len(body) > BODY_LIMIT:
        return refused("/runsync", body, 413)

    def check(base: str) -> str | None:
        response = post(f"{base}/runsync", body)
        if (problem := _answer(response, {200})) is not None:
            return problem
        output = response.json().get("output") or {}
        results = output.get("results") or [{}, {}, {}]
        first, middle, last = results
        if "error" in first or "error" in last:
            return f"a good image failed beside it: {str(results)[:160]}"
        got = middle.get("error", {}).get("code")
        return None if got == code else f"image code {got}, wanted {code}"

    return check


def job_fails(job_input_json: bytes, *phrases: str) -> Check:
    """A job refused as a whole: 200 FAILED with one sentence (holding `phrases`), or 400."""

    def check(base: str) -> str | None:
        response = post(f"{base}/runsync", job_input_json)
        if response.status_code == 400:
            return None
        if (problem := _answer(response, {200})) is not None:
            return problem
        body = response.json()
        error = str(body.get("error", ""))
        if body.get("status") != "FAILED" or not all(p in error for p in phrases):
            return f"not FAILED with {phrases}: {response.text[:160]}"
        return None if len(error) < 500 else "an error of over 500 characters"

    return check


def images_fail(images: list[str], expected: list[str | None]) -> Check:
    """Each image's outcome: its error code, or None for a result."""
    body = job_body({"images": images})

    def check(base: str) -> str | None:
        response = post(f"{base}/runsync", body)
        if (problem := _answer(response, {200})) is not None:
            return problem
        results = (response.json().get("output") or {}).get("results") or []
        got = [r.get("error", {}).get("code") if "error" in r else None for r in results]
        return None if got == expected else f"codes {got}, wanted {expected}"

    return check


def cut_off(request_start: bytes, within_s: float) -> Check:
    """A client that sends part of a request and waits: the server closes the connection."""

    def check(base: str) -> str | None:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(request_start)
            sock.settimeout(within_s)
            try:
                while chunk := sock.recv(4096):
                    if b"HTTP/1.1" in chunk:
                        return f"answered instead of cut off: {chunk[:80]!r}"
            except TimeoutError:
                return f"still open after {within_s:.0f} s"
            except ConnectionResetError:
                pass
        return None

    return check


def chunked_over_limit(base: str) -> str | None:
    """A chunked body (no Content-Length) that never ends within the limit: 413."""

    def chunks() -> Iterator[bytes]:
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b" " * 65536

    try:
        response = requests.post(f"{base}/runsync", data=chunks(), headers=JSON, timeout=60)
    except requests.ConnectionError:
        return None  # cut off mid-body, after the 413
    return _answer(response, {413})


def run_with_webhook(webhook: str) -> Check:
    """A /run job whose webhook receiver answers with an endless body: the job still ends."""
    body = job_body({"image": PNG}, webhook=webhook)

    def check(base: str) -> str | None:
        response = post(f"{base}/run", body)
        if (problem := _answer(response, {200})) is not None:
            return problem
        job_id = response.json()["id"]
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            state = requests.get(f"{base}/status/{job_id}", timeout=10).json()
            if state["status"] == "COMPLETED":
                return None
            time.sleep(0.1)
        return "webhook job not finished"

    return check


def random_job(base: str) -> str | None:
    """Fuzz: any JSON as "input" gets 200 (results or one sentence), or 400; never a 5xx."""
    rng = random.Random()
    body = json.dumps({"input": _random_json(rng, depth=3)}).encode()
    response = post(f"{base}/runsync", body)
    if (problem := _answer(response, {200, 400})) is not None:
        return problem
    answer = response.json()
    if response.status_code == 200 and answer["status"] not in ("COMPLETED", "FAILED"):
        return f"status {answer['status']}"
    if "Traceback" in response.text or "internal" in str(answer.get("error", ""))[:20]:
        return f"an internal error: {response.text[:160]}"
    return None


def _random_json(rng: random.Random, depth: int) -> Any:
    keys = ["images", "image", "task", "top_k", "labels", "max_new_tokens", "prompts", "x"]
    scalars = [None, True, 0, -1, 2**70, 1.5, "", "x", GOOD, "data:image/png;base64,AAAA"]
    kind = rng.randrange(4) if depth > 0 else 0
    if kind == 0:
        return rng.choice(scalars)
    if kind == 1:
        return [_random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {rng.choice(keys): _random_json(rng, depth - 1) for _ in range(rng.randrange(4))}


def many_scans_jpeg() -> str:
    """test_hostile_round2's progressive JPEG with its last scan repeated 500 times."""
    progressive = encode(photo("chelsea").convert("RGB"), "JPEG", progressive=True)
    scan = progressive[progressive.rindex(b"\xff\xda") : -2]
    return b64(progressive[:-2] + scan * 500 + b"\xff\xd9")


def _nested_images(depth: int) -> bytes:
    # Built as text: json.dumps itself recurses too deeply for this.
    return (
        b'{"input": {"images": ' + b"[" * depth + json.dumps(GOOD).encode() + b"]" * depth + b"}}"
    )


def corpus_cases() -> list[Hostile]:
    """Round one's image corpus (tests/corpus.py), each among good images on the classifier."""
    return [
        Hostile(name, "classify", image_fails_alone(image, code)) for name, image, code in IMAGES
    ]


def job_shape_cases() -> list[Hostile]:
    """Round one's wrong job shapes and bodies (test_hostile.py, test_hardening.py)."""
    shapes = [
        ({"images": [[[[[[[[[[[GOOD]]]]]]]]]]]}, 'invalid "images.0"'),
        ({"images": [GOOD] * 17}, "too many images: 17 given, at most 16"),
        ({"image": GOOD, "x" * 10_000: 1}, "unknown input key"),
        ({"image": GOOD, "top_k": 2**200}, 'invalid "top_k"'),
        ({"image": GOOD, "top_k": -1}, 'invalid "top_k"'),
        ({"image": GOOD, "top_k": float("nan")}, 'invalid "top_k"'),
        ({"image": {"url": "https://example.com/a.png"}}, 'invalid "image"'),
        ({"images": None, "image": None}, "give either"),
        ({"image": GOOD, "task": "\ud800" * 10_000}, 'task "?'),
    ]
    cases = [
        Hostile(f"shape-{i}", "classify", job_fails(job_body(job), phrase))
        for i, (job, phrase) in enumerate(shapes)
    ]
    bodies = [
        ("nested-5000", _nested_images(5000), None),
        ("json-amplification", b'{"input": [' + b"{}," * 20_000 + b"{}]}", 400),
        ("malformed-json", b'{"input": "' + b"SECRET-PAYLOAD-" * 1000, 400),
        ("no-input-key", b'{"inputs": {}}', 400),
        ("not-an-object", b"[1, 2, 3]", 400),
    ]
    for name, body, status in bodies:
        check = job_fails(body) if status is None else refused("/runsync", body, status)
        cases.append(Hostile(name, "classify", check))
    cases.append(Hostile("chunked-over-limit", "classify", chunked_over_limit))
    cases.append(Hostile("fuzz-json", "classify", random_job))
    return cases


def slow_client_cases() -> list[Hostile]:
    """Dripping clients (test_hardening.py): cut off at the header, then the body deadline."""
    headers = b"POST /runsync HTTP/1.1\r\nHost: x\r\n"
    body = b'POST /runsync HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"input"'
    return [
        Hostile("drip-headers", "caption", cut_off(headers, HEADER_TIMEOUT_S + 5)),
        Hostile("drip-body", "zero_shot", cut_off(body, BODY_TIMEOUT_S + 5)),
    ]


@dataclass(frozen=True)
class HostileHosts:
    """Round two's hostile servers on 127.0.0.1, for image URLs and webhooks."""

    drip: str  # drips its response headers a byte at a time
    endless: str  # answers 200, then a body that never ends
    silent: str  # accepts and never answers
    blackhole: str  # never completes a handshake (its accept queue is full)


@contextmanager
def hostile_hosts() -> Iterator[HostileHosts]:
    with (
        _raw_server(_drip_headers) as drip,
        _raw_server(_endless_body) as endless,
        _raw_server(_never_answer) as silent,
        blackholed_host() as blackhole,
    ):
        yield HostileHosts(drip, endless, silent, blackhole)


@contextmanager
def blackholed_host() -> Iterator[str]:
    """A listener whose accept queue is full, so new handshakes go unanswered as a blackholed
    host's do (test_hostile_round2.py's recipe)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(4)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for sock in [*fillers, listener]:
            sock.close()


def round_two_cases(hosts: HostileHosts) -> list[Hostile]:
    """Round two (test_hostile_round2.py): images within every old limit, hostile servers."""
    tiff = b64(_tiled_tiff(16, 16, 16384, 43680))
    strips = [b64(encode(noise_image(1, size))) for size in [(1, 6000), (6000, 1), (3300, 100)]]
    bad_urls = ["http://[::1", "http://a]b/", "https://[bad::ip/x.png"]
    return [
        Hostile("tiff-huge-tile", "classify", images_fail([tiff, GOOD], ["too_large", None])),
        Hostile("strips", "segment", images_fail([*strips, GOOD], ["too_large"] * 3 + [None])),
        Hostile("jpeg-500-scans", "depth", images_fail([many_scans_jpeg()], ["too_large"])),
        Hostile("unparseable-urls", "embed", images_fail([*bad_urls], ["invalid_image"] * 3)),
        Hostile(
            "dripping-image-server",
            PRIVATE_URL_TASK,
            images_fail([f"{hosts.drip}/slow.png", GOOD], ["fetch_failed", None]),
        ),
        Hostile(
            "blackholed-image-host",
            PRIVATE_URL_TASK,
            images_fail([f"{hosts.blackhole}/a.png", GOOD], ["fetch_failed", None]),
        ),
        Hostile("endless-webhook-receiver", PRIVATE_URL_TASK, run_with_webhook(hosts.endless)),
        Hostile("silent-webhook-receiver", PRIVATE_URL_TASK, run_with_webhook(hosts.silent)),
    ]


def route_cases() -> list[Hostile]:
    """Refusals of the other routes: /predict, /status, /stream and the OpenAI ones."""
    files = {"Content-Type": "multipart/form-data; boundary=x"}
    no_image = b'--x\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n--x--\r\n'
    part = (
        b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + base64.b64decode(GOOD) + b"\r\n"
    )
    return [
        Hostile("predict-no-image", "mask", refused("/predict", no_image, 400, files)),
        Hostile(
            "predict-17-images",
            "upscale",
            refused("/predict", part * 17 + b"--x--\r\n", 413, files),
        ),
        Hostile(
            "status-unknown", "classify", lambda base: _get_status(base, "/status/pod-nope", 404)
        ),
        Hostile(
            "stream-unknown", "caption", lambda base: _get_status(base, "/stream/pod-nope", 404)
        ),
        Hostile("chat-not-json", "ask", refused("/v1/chat/completions", b"{nope", 400)),
        Hostile("chat-n-2", "ask", refused("/v1/chat/completions", _chat(n=2), 400)),
        Hostile("chat-extra", "ask", refused("/v1/chat/completions", _chat(foo=1), 400)),
        Hostile("embeddings-empty", "embed", refused("/v1/embeddings", b'{"input": []}', 400)),
    ]


def _chat(**extra: Any) -> bytes:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + GOOD}},
    ]
    return json.dumps({"messages": [{"role": "user", "content": content}], **extra}).encode()


def _get_status(base: str, path: str, status: int) -> str | None:
    return _answer(requests.get(f"{base}{path}", timeout=TIMEOUT_S), {status})


def hostile_cases(tasks: list[str], hosts: HostileHosts) -> list[Hostile]:
    cases = [
        *corpus_cases(),
        *job_shape_cases(),
        *slow_client_cases(),
        *round_two_cases(hosts),
        *route_cases(),
    ]
    return [case for case in cases if case.task in tasks]


# --- the load ----------------------------------------------------------------------------------
@dataclass
class Tally:
    """What came back, counted from the sender's threads."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    valid_sent: int = 0
    lost: list[str] = field(default_factory=list)
    hostile_sent: int = 0
    hostile_unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def valid(self, kind: ValidKind, base: str) -> None:
        started = time.perf_counter()
        try:
            kind.send(base)
        except Exception as lost:  # Lost, or an answer of the wrong shape: the job is lost
            with self.lock:
                self.lost.append(f"{kind.task}/{kind.route}: {type(lost).__name__}: {lost}")
            return
        took = time.perf_counter() - started
        with self.lock:
            self.latencies.setdefault(kind.task, []).append(took)

    def hostile(self, case: Hostile, base: str) -> None:
        try:
            problem = case.check(base)
        except Exception as error:  # a hostile request's failure is a finding, not a crash
            problem = f"{type(error).__name__}: {str(error)[:160]}"
        if problem is not None:
            with self.lock:
                self.hostile_unexpected.append(f"{case.name}: {problem}")


class Sender:
    """Sends one request of the mix every 1/rate seconds, each on a thread of its own."""

    def __init__(self, servers: list[PodProcess], hostile: list[Hostile], share: float) -> None:
        self.urls = {server.task: server.url for server in servers}
        self.valid = itertools.cycle(valid_kinds(list(self.urls)))
        self.hostile = itertools.cycle(random.Random(0).sample(hostile, len(hostile)))
        self.hostile_list = hostile
        self.share = share
        self.rng = random.Random(1)
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="soak")
        self.in_flight: set[Future] = set()
        self.behind_s = 0.0  # how late the sender ran at worst: 0 unless the client is the limit

    def send(self, tally: Tally) -> Future:
        if self.rng.random() < self.share:
            case = next(self.hostile)
            tally.hostile_sent += 1
            return self._submit(tally.hostile, case, self.urls[case.task])
        kind = next(self.valid)
        tally.valid_sent += 1
        return self._submit(tally.valid, kind, self.urls[kind.task])

    def _submit(self, fn: Callable, item: Any, url: str) -> Future:
        future = self.pool.submit(fn, item, url)
        self.in_flight.add(future)
        future.add_done_callback(self.in_flight.discard)
        return future

    def every_kind_at_once(self, tally: Tally) -> None:
        """Every request kind, valid ones four times over, all in flight together: each
        server's thread pools grow to their working size before the baseline is taken (a pool
        that first grows in the measured run reads as a thread not given back)."""
        kinds = valid_kinds(list(self.urls)) * 4
        futures = [self._submit(tally.valid, k, self.urls[k.task]) for k in kinds]
        futures += [self._submit(tally.hostile, c, self.urls[c.task]) for c in self.hostile_list]
        for future in futures:
            future.result()

    def steady(self, tally: Tally, rate: float, seconds: float) -> None:
        start = time.monotonic()
        for n in itertools.count():
            due = start + n / rate
            if due - start >= seconds:
                return
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            self.behind_s = max(self.behind_s, -wait)
            self.send(tally)

    def drain(self, timeout_s: float = 2 * TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.1)


class Sampler:
    """RSS, fds and threads of every server every `every_s` seconds, on a thread."""

    def __init__(self, servers: list[PodProcess], every_s: float, tally: Tally) -> None:
        self.servers = servers
        self.every_s = every_s
        self.tally = tally  # for a progress line each minute (an hour's run shows it is alive)
        self.samples: list[dict[str, Any]] = []
        self.crashes: dict[str, int] = {}
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._start = time.monotonic()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        point: dict[str, Any] = {"t_s": round(time.monotonic() - self._start, 1), "rss_mib": {}}
        point["threads"] = {}
        for server in self.servers:
            try:
                point["rss_mib"][server.task] = round(server.rss_mib(), 1)
                point["threads"][server.task] = server.threads()
            except OSError:  # /proc/<pid> is gone: the process has exited
                self.crashes[server.task] = server.process.wait()
        minute = int(point["t_s"] // 60)
        if self.samples and minute > int(self.samples[-1]["t_s"] // 60):
            self.progress(point)
        self.samples.append(point)

    def progress(self, point: dict[str, Any]) -> None:
        total = sum(point["rss_mib"].values())
        print(
            f"{time.strftime('%H:%M:%S')} minute {int(point['t_s'] // 60)}: RSS {total:.0f} MiB "
            f"in {len(point['rss_mib'])} servers; valid {self.tally.valid_sent}, "
            f"lost {len(self.tally.lost)}, hostile {self.tally.hostile_sent}, "
            f"unexpected {len(self.tally.hostile_unexpected)}, crashes {len(self.crashes)}",
            flush=True,
        )


def counts(servers: list[PodProcess]) -> dict[str, dict[str, int]]:
    return {s.task: {"fds": s.fds(), "threads": s.threads()} for s in servers if s.alive()}


def settle(servers: list[PodProcess], base: dict, timeout_s: float) -> dict:
    """fds and threads once they are back at base, or what they are at `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = counts(servers)
        back = all(
            now.get(t, {}).get(k, 1 << 30) <= base[t][k] for t in base for k in ("fds", "threads")
        )
        if back or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


def stuck_in_servers(servers: list[PodProcess]) -> dict[str, int]:
    """Jobs a server still counts as queued or running once the load has stopped."""
    stuck = {}
    for server in servers:
        if not server.alive():
            continue
        health = requests.get(f"{server.url}/health", timeout=10).json()
        if left := health["jobs_in_queue"] + health["jobs_in_progress"]:
            stuck[server.task] = left
    return stuck


# --- the report --------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_ms(latencies: dict[str, list[float]]) -> dict[str, Any]:
    def figures(values: list[float]) -> dict[str, Any]:
        ms = [v * 1000 for v in values]
        return {
            "count": len(ms),
            "p50": round(percentile(ms, 0.50) or 0, 1),
            "p99": round(percentile(ms, 0.99) or 0, 1),
            "max": round(max(ms, default=0), 1),
        }

    every = [v for values in latencies.values() for v in values]
    return {"all": figures(every), **{t: figures(v) for t, v in sorted(latencies.items())}}


def rss_per_minute(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last sample of each minute of the measured run, and the servers' total."""
    by_minute: dict[int, dict[str, Any]] = {}
    for point in samples:
        by_minute[int(point["t_s"] // 60)] = point
    return [
        {
            "minute": minute + 1,
            "total_mib": round(sum(p["rss_mib"].values()), 1),
            "rss_mib": p["rss_mib"],
        }
        for minute, p in sorted(by_minute.items())
    ]


def rss_growth(samples: list[dict[str, Any]], duration_s: float) -> dict[str, float]:
    """Per server: the last half's largest RSS over its smallest (1.0 = perfectly flat)."""
    last_half = [p for p in samples if p["t_s"] >= duration_s / 2]
    growth = {}
    for task in samples[0]["rss_mib"]:
        values = [p["rss_mib"][task] for p in last_half if task in p["rss_mib"]]
        growth[task] = round(max(values) / min(values), 3) if values else float("inf")
    return growth


def rss_trend(samples: list[dict[str, Any]], duration_s: float) -> dict[str, float]:
    """Per server: the last half's least-squares slope in MiB per hour. A leak climbs; memory
    taken by a burst of large inputs and given back does not (the spread cannot tell them
    apart, so the report shows both)."""
    last_half = [p for p in samples if p["t_s"] >= duration_s / 2]
    trend = {}
    for task in samples[0]["rss_mib"]:
        points = [(p["t_s"], p["rss_mib"][task]) for p in last_half if task in p["rss_mib"]]
        if len(points) < 2:
            continue
        mean_t = sum(t for t, _ in points) / len(points)
        mean_r = sum(r for _, r in points) / len(points)
        spread = sum((t - mean_t) ** 2 for t, _ in points) or 1.0
        slope = sum((t - mean_t) * (r - mean_r) for t, r in points) / spread
        trend[task] = round(slope * 3600, 1)
    return trend


# Threads the worker's pools may still start after warm-up (a webhook delivery thread, a
# default-executor thread for a large body's parse or trim).
LAZY_POOL_THREADS = 2


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    base, end = report["base"], report["end"]
    return {
        "rss_flat_after_warmup": all(g <= 1.10 for g in report["rss_last_half_growth"].values()),
        "no_lost_or_stuck_jobs": not report["lost"] and not report["stuck_in_servers"],
        "no_crashes": not report["crashes"] and set(end) == set(base),
        "fds_back_at_base": all(end.get(t, {}).get("fds", 1 << 30) <= base[t]["fds"] for t in base),
        # Thread pools start their threads lazily and keep them (image, encode, webhook and
        # default executors): a pool reaching one more of its own late is not a leak; a leak
        # grows with traffic, past what the pools may add.
        "threads_back_at_base": all(
            end.get(t, {}).get("threads", 1 << 30) <= base[t]["threads"] + LAZY_POOL_THREADS
            for t in base
        ),
        "hostile_answered_as_expected": not report["hostile_unexpected"],
    }


# --- the run -----------------------------------------------------------------------------------
@contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    phases[name] = round(time.monotonic() - started, 1)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    phases: dict[str, float] = {}
    with ExitStack() as stack:
        hosts = stack.enter_context(hostile_hosts())
        with timed(phases, "start_servers_s"):
            servers = stack.enter_context(pod_servers(args.tasks, args.models, args.logs))
        hostile = hostile_cases(args.tasks, hosts)
        sender = Sender(servers, hostile, args.hostile_share)
        warm = Tally()
        with timed(phases, "warmup_s"):
            sender.every_kind_at_once(warm)
            sender.steady(warm, args.rate, args.warmup)
            sender.drain()
        base = settle(servers, {}, 0)  # after the warm-up: the pools are at their working size
        tally = Tally()
        with timed(phases, "measured_s"), Sampler(servers, args.sample_s, tally) as sampler:
            sender.steady(tally, args.rate, args.duration)
            sender.drain()
        with timed(phases, "settle_s"):
            end = settle(servers, base, args.settle_s)
        report = {
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "config": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rate_per_s": args.rate,
                "hostile_share": args.hostile_share,
                "tasks": {t: TASKS[t].arch for t in args.tasks},
                "server_settings": SERVER_SETTINGS,
                "hostile_cases": [c.name for c in hostile],
            },
            "valid_jobs": tally.valid_sent,
            "hostile_requests": tally.hostile_sent,
            "latency_ms": latency_ms(tally.latencies),
            "lost": tally.lost,
            # Of those, the ones that never came back in TIMEOUT_S (the rest came back wrong).
            "stuck": [r for r in tally.lost if "stuck" in r or "Timeout" in r],
            "stuck_in_servers": stuck_in_servers(servers),
            "hostile_unexpected": tally.hostile_unexpected,
            "warmup_problems": warm.lost + warm.hostile_unexpected,
            "crashes": sampler.crashes,
            "base": base,
            "end": end,
            "rss_per_minute": rss_per_minute(sampler.samples),
            "rss_last_half_growth": rss_growth(sampler.samples, args.duration),
            "rss_last_half_trend_mib_per_h": rss_trend(sampler.samples, args.duration),
            "rss_samples": sampler.samples,
            "sender_behind_s": round(sender.behind_s, 2),
            "phases": phases,
            "logs": str(args.logs),
        }
        sender.pool.shutdown(wait=True)
    report["verdicts"] = verdicts(report)
    report["passed"] = all(report["verdicts"].values())
    report["wall_s"] = round(time.time() - started, 1)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=60, help="seconds of load before base")
    parser.add_argument("--rate", type=float, default=3.0, help="requests per second, all told")
    parser.add_argument("--hostile-share", type=float, default=0.25, help="hostile fraction")
    parser.add_argument("--sample-s", type=float, default=10, help="seconds between samples")
    parser.add_argument("--settle-s", type=float, default=30, help="wait for fds/threads")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--models", type=Path, default=ROOT / "models" / "soak-tiny")
    parser.add_argument("--logs", type=Path, help="servers' logs (default: a new temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.logs = args.logs or Path(tempfile.mkdtemp(prefix="vision-worker-soak-"))
    report = soak(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report[k] for k in ("verdicts", "latency_ms", "base", "end", "crashes")}
    summary["lost"], summary["stuck"] = len(report["lost"]), len(report["stuck"])
    summary["hostile_unexpected"] = report["hostile_unexpected"][:10]
    summary["rss_total_mib_per_minute"] = [m["total_mib"] for m in report["rss_per_minute"]]
    print(json.dumps(summary, indent=1))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
