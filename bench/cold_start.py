"""Cold start: process start to ready, split into imports, weight loading and warm-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import ROOT, full_model, report, save

PROBE = r"""
import json, time
t0 = time.perf_counter()
import torch, transformers, runpod  # the handler's heavy imports
from vision_worker.settings import load_settings
from vision_worker.tasks import load_task
from vision_worker.worker import Worker
t1 = time.perf_counter()
settings = load_settings()
task = load_task(settings)
t2 = time.perf_counter()
Worker(settings, task).warm_up()
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "load_weights_s": t2 - t1, "warm_up_s": t3 - t2}))
"""


def measure(arch: str) -> dict:
    environment = {**os.environ, "MODEL_NAME": str(full_model(arch)), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    phases = json.loads(done.stdout.strip().splitlines()[-1])
    phases["process_start_to_ready_s"] = wall
    print(f"cold start, {arch} (full size, local disk):")
    for name, seconds in phases.items():
        report(f"  {name}", seconds, unit="s")
    return phases


def main() -> dict:
    result = {arch: measure(arch) for arch in ("vit-gpt2", "resnet")}
    save("cold_start", result)
    return result


if __name__ == "__main__":
    main()
