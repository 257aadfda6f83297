"""The benchmark suite runs end to end on tiny models, so it cannot rot between real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_writes_every_result_summary_and_plot(tmp_path):
    environment = {**os.environ, "BENCH_MODEL_SIZE": "tiny", "BENCH_RESULTS": str(tmp_path),
                   "BENCH_CONCURRENCY": "1,8", "BENCH_NAIVE_REQUESTS": "8",
                   "BENCH_INPUT_SECONDS": "0.2", "BENCH_PHOTOS": "4",
                   "BENCH_TASK_IMAGES": "3"}  # fmt: skip
    done = subprocess.run([sys.executable, "bench/run_all.py"], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("cold_start", "batch_curve", "breakdown", "naive", "cross_job", "zero_shot",
                 "concurrency", "input_pipeline", "phone_photos", "tasks"):  # fmt: skip
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["machine"]["torch"], name
    assert (tmp_path / "batch_curve.png").stat().st_size > 10_000
    assert (tmp_path / "concurrency.png").stat().st_size > 10_000
    summary = (tmp_path / "summary.md").read_text()
    assert "| 64 concurrent jobs / one 64-image job |" in summary
    assert "| 32 concurrent zero-shot jobs / one 32-image job, CLIP |" in summary
    assert "| zero_shot_detect | owlvit |" in summary
    assert "(goal >= 0.90)" in done.stdout  # every ratio is printed with its goal
