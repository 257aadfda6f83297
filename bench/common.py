"""Shared pieces of the benchmarks: full-size random-weight models, timing, results, plots."""

from __future__ import annotations

import asyncio
import atexit
import base64
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# As handler.py does in production: idle OpenMP threads sleep instead of spinning, or a
# benchmark that calls the model from two threads (direct and through the worker) measures
# their contention. Must precede the torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import skimage.data
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("BENCH_RESULTS", ROOT / "bench" / "results"))
# "tiny" runs every script in seconds (the test suite does, so the benchmarks cannot rot);
# the figures that mean something come from "full".
MODEL_SIZE = os.environ.get("BENCH_MODEL_SIZE", "full")
MODELS = ROOT / "models" / f"bench-{MODEL_SIZE}"  # gitignored; built once, reused by every script
sys.path.insert(0, str(ROOT / "src"))

from vision_worker.dev.tiny_models import build  # noqa: E402
from vision_worker.settings import load_settings  # noqa: E402
from vision_worker.worker import Worker  # noqa: E402

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "camera", "immunohistochemistry")
# Captions are pinned to this many tokens (min = max) so every run does the same work.
CAPTION_TOKENS = int(os.environ.get("BENCH_CAPTION_TOKENS", "8"))


def full_model(arch: str) -> Path:
    """A full-size architecture with random weights: true compute cost, no Hub."""
    path = MODELS / arch
    if not (path / "config.json").exists():
        build(arch, path, full=MODEL_SIZE == "full")
    return path


def best_batch_size(arch: str, default: int = 16) -> int:
    """The batch size batch_curve.py measured fastest for arch on this machine, as the README
    advises choosing MAX_BATCH_SIZE (on CPUs it is small: large batches fall out of cache)."""
    path = RESULTS / "batch_curve.json"
    if not path.exists():
        return default
    curves = json.loads(path.read_text())["curves"]
    for label, points in curves.items():
        if arch_label(arch) == label:
            return max(points, key=lambda p: p["images_per_s"])["batch_size"]
    return default


def arch_label(arch: str) -> str:
    return {"vit-gpt2": "caption (ViT-GPT2)", "resnet": "classify (ResNet-50)"}[arch]


def make_worker(arch: str, **overrides: Any) -> Worker:
    settings = {"MODEL_NAME": str(full_model(arch)), "WARMUP": True, **overrides}
    return Worker.start(load_settings(**settings))


def pin_caption_length(worker: Worker) -> None:
    """Force every caption to CAPTION_TOKENS tokens, so runs compare (random weights stop early)."""
    task = worker.task
    if task.name != "caption":
        return
    original = task.check

    def pinned(options):
        return original(options).model_copy(update={"max_new_tokens": CAPTION_TOKENS})

    task.check = pinned  # type: ignore[method-assign]
    task.pinned_min_new_tokens = CAPTION_TOKENS


def one_vs_concurrent_vs_sequential(
    worker: Worker, images: list[str], options: dict[str, Any], result_key: str
) -> dict[str, float]:
    """Images/s of one N-image job, N concurrent one-image jobs and N sequential ones."""
    count = len(images)

    def check(output: dict) -> None:
        assert all(result_key in r for r in output["results"]), output

    def one_big_job():
        check(run(worker.run({"images": images, **options})))

    def concurrent_jobs():
        async def all_jobs():
            jobs = (worker.run({"image": image, **options}) for image in images)
            return await asyncio.gather(*jobs)

        for output in run(all_jobs()):
            check(output)

    def sequential_jobs():
        for image in images:
            check(run(worker.run({"image": image, **options})))

    one_big_job()  # warm the allocator at this batch size
    seconds = {
        f"one_{count}_image_job": timed(one_big_job, repeat=2),
        f"{count}_concurrent_jobs": timed(concurrent_jobs, repeat=2),
        f"{count}_sequential_jobs": timed(sequential_jobs),
    }
    return {mode: count / s for mode, s in seconds.items()}


def photo_b64(index: int, size: tuple[int, int] = (320, 240)) -> str:
    array = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()
    image = Image.fromarray(array).convert("RGB").resize(size)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode()


def images_b64(count: int) -> list[str]:
    return [photo_b64(i) for i in range(count)]


def timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    """Best-of-`repeat` wall time in seconds (best is the least disturbed by the machine)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


# One loop for a whole script: the worker's batcher binds to the loop that first submits to it.
_LOOP = asyncio.new_event_loop()


def run(coro):
    return _LOOP.run_until_complete(coro)


@atexit.register
def _close_loop() -> None:
    """Stop the batcher's scheduler task cleanly instead of "Task was destroyed" at exit."""
    tasks = asyncio.all_tasks(_LOOP)
    for task in tasks:
        task.cancel()
    if tasks:  # gather() of nothing would bind to another loop
        _LOOP.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    _LOOP.close()


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def report(label: str, value: float, goal: str | None = None, unit: str = "x") -> str:
    line = f"  {label:<58} {value:8.2f}{unit}"
    if goal:
        line += f"   (goal {goal})"
    print(line, flush=True)
    return line


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
