"""The benchmark suite runs end to end on tiny models, so it cannot rot between real runs.

One test per script, each far inside its own timeout on a loaded 2-core machine (the whole
suite at once took 241 s of pytest's 300); the last one writes the summary from their results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from run_all import SCRIPTS  # noqa: E402

TINY = {
    "BENCH_MODEL_SIZE": "tiny",
    "BENCH_CONCURRENCY": "1,8",
    "BENCH_NAIVE_REQUESTS": "8",
    "BENCH_INPUT_SECONDS": "0.1",
    "BENCH_PHOTOS": "4",
    "BENCH_TASK_IMAGES": "3",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


def _bench(results: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **TINY, "BENCH_RESULTS": str(results)}
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=280,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_benchmark_runs_and_writes_its_result(results, script):
    done = _bench(results, f"bench/{script}.py")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    measured = json.loads((results / f"{script}.json").read_text())
    assert measured["machine"]["torch"], script


def test_the_summary_has_every_table(results):
    done = _bench(results, "bench/run_all.py", "--summary")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (results / "batch_curve.png").stat().st_size > 10_000
    assert (results / "concurrency.png").stat().st_size > 10_000
    summary = (results / "summary.md").read_text()
    assert "| 64 concurrent jobs / one 64-image job |" in summary
    assert "| 32 concurrent zero-shot jobs / one 32-image job, CLIP |" in summary
    assert "| zero_shot_detect | owlvit |" in summary
    assert "| torchvision | `true` |" in summary  # the decode accuracy table
    assert "| 12MP JPEG, torchvision |" in summary


def test_before_and_after_runs_two_versions_side_by_side(results):
    """bench/before_after.py against this very revision: both versions measured, ratios near 1
    are not asserted (tiny models on a loaded machine), only that each mode was measured."""
    done = _bench(
        results, "bench/before_after.py", "--before", "HEAD", "--cases", "classify", "--rounds", "1"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    measured = json.loads((results / "before_after.json").read_text())["cases"]["classify"]
    assert set(measured["before"]) == set(measured["after"]) == set(measured["after_vs_before"])
    assert all(value > 0 for value in measured["after_vs_before"].values())
