"""RunPod platform hooks: the fitness check at start, and progress of jobs of several batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import b64, noise_image, run_job
from vision_worker.fitness import fitness_problems

ROOT = Path(__file__).resolve().parent.parent


def test_a_fit_worker_has_no_problems(make_worker):
    assert fitness_problems(make_worker("resnet"), min_free_disk_mb=1, min_free_memory_mb=1) == []
    assert fitness_problems(make_worker("clip"), min_free_disk_mb=1, min_free_memory_mb=1) == []


def test_each_problem_is_named(make_worker, monkeypatch):
    worker = make_worker("resnet")

    def broken(items, options):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(worker.task, "predict", broken)
    problems = fitness_problems(worker, min_free_disk_mb=10**9, min_free_memory_mb=10**9)
    assert problems[0].startswith("the model failed on a test image: RuntimeError: CUDA error")
    assert any(p.startswith("only ") and "free on disk" in p for p in problems)
    assert any("of memory available" in p for p in problems)


def test_on_runpod_an_unfit_worker_exits_1_before_taking_jobs(model_dir):
    """The real SDK path: RUNPOD_WEBHOOK_GET_JOB set, so runpod runs the registered fitness
    checks before polling; an impossible disk requirement fails ours."""
    environment = {
        **os.environ,
        "MODEL_NAME": str(model_dir("resnet")),
        "WARMUP": "false",
        "RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:9/job-take/$ID",
        "RUNPOD_POD_ID": "test",
        # Ours alone, not the SDK's own checks of this machine
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "FITNESS_MIN_FREE_DISK_MB": str(10**9),
    }
    done = subprocess.run(
        [sys.executable, "handler.py"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    assert "vision-worker is not fit to serve: only " in output


def test_jobs_of_several_batches_report_progress_per_batch(make_worker):
    worker = make_worker("resnet", MAX_BATCH_SIZE=4)
    heard: list[str] = []
    images = [b64(noise_image(i)) for i in range(10)]
    output = _run_with_progress(worker, {"images": images}, heard.append)
    assert all("labels" in r for r in output["results"])
    assert heard == ["4/10 images", "8/10 images", "10/10 images"]
    heard.clear()
    _run_with_progress(worker, {"images": images[:3]}, heard.append)
    assert heard == []  # one batch: nothing to report
    assert "labels" in run_job(worker, {"image": images[0]})["results"][0]


def _run_with_progress(worker, job, progress):
    from conftest import _LOOP

    return _LOOP.run_until_complete(worker.run(job, progress=progress))
