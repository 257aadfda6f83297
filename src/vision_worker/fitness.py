"""Fitness at start on RunPod: a worker that cannot serve should be replaced before it takes jobs.

Registered with the runpod SDK (`register_fitness_check`), which runs it before polling the queue
and kills the worker with exit status 1 when it raises.
"""

from __future__ import annotations

import os
import shutil

import torch

from .worker import Worker


class UnfitError(RuntimeError):
    """The worker cannot serve; the message says every problem found, in one line."""


def fitness_problems(
    worker: Worker, *, min_free_disk_mb: int, min_free_memory_mb: int
) -> list[str]:
    """What stops this worker from serving, or nothing: model output, device, disk, memory."""
    problems = []
    try:
        worker.self_test()
    except Exception as error:
        problems.append(f"the model failed on a test image: {type(error).__name__}: {error}"[:300])
    device = worker.device
    if device.type == "cuda":
        try:
            probe = torch.ones(256, device=device) * 2
            torch.cuda.synchronize(device)
            if float(probe.sum()) != 512.0:
                problems.append(f"{device} computed a wrong result")
        except Exception as error:
            problems.append(f"{device} does not work: {error}"[:300])
    free_disk = shutil.disk_usage(os.environ.get("TMPDIR", "/tmp")).free // 2**20
    if free_disk < min_free_disk_mb:
        problems.append(f"only {free_disk} MiB free on disk, need {min_free_disk_mb}")
    free_memory = _available_memory_mb()
    if free_memory is not None and free_memory < min_free_memory_mb:
        problems.append(f"only {free_memory} MiB of memory available, need {min_free_memory_mb}")
    return problems


def check_fitness(worker: Worker) -> None:
    """Raise UnfitError naming every problem; the SDK then exits the worker with status 1."""
    settings = worker.settings
    problems = fitness_problems(
        worker,
        min_free_disk_mb=settings.FITNESS_MIN_FREE_DISK_MB,
        min_free_memory_mb=settings.FITNESS_MIN_FREE_MEMORY_MB,
    )
    if problems:
        raise UnfitError("vision-worker is not fit to serve: " + "; ".join(problems))


def _available_memory_mb() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None
