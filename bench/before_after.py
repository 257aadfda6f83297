"""The same task cases through two versions of the worker, side by side in one run: images/s of
one N-image job, N concurrent one-image jobs and N sequential ones (bench/tasks.py's measure),
for the code at --before (a git revision) and the working tree.

    python bench/before_after.py --before 4628d2a^ --cases detect zero_shot_detect ask classify

Each measurement is a fresh process of that version (its own bench/common.py and tasks.py
CASES, on the same model directories: identical weights, so identical work), and the versions
alternate (before, after, after, before, ...) so a machine whose load drifts cannot favour one.
The best of each version's rounds is reported, with after / before per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from common import MODELS, ROOT, report, save

# Run inside a version's bench/ directory: its own common.py, tasks.py and src/.
_MEASURE = """
import json, sys
from common import images_b64, make_worker, one_vs_concurrent_vs_sequential, pin_caption_length
from tasks import CASES
case, count = sys.argv[1], int(sys.argv[2])
arch, options, key = CASES[case]
worker = make_worker(arch, MAX_BATCH_SIZE=count, BATCH_WAIT_MS=20)
pin_caption_length(worker)
measured = one_vs_concurrent_vs_sequential(worker, images_b64(count), options, key)
print("RESULT " + json.dumps(measured))
"""


def checkout(revision: str, where: Path) -> Path:
    """The tree at `revision` (git archive: no worktree left behind), sharing this tree's models."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    (where / "models").mkdir(exist_ok=True)
    (where / "models" / MODELS.name).symlink_to(MODELS)
    return where


def measure(tree: Path, case: str, images: int) -> dict[str, float]:
    environment = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, case, str(images)],
        cwd=tree / "bench",
        env=environment,
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{case} in {tree}: {done.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    return {mode: max(run[mode] for run in runs) for mode in runs[0]}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--cases", nargs="+", default=["detect", "zero_shot_detect", "ask"])
    parser.add_argument("--rounds", type=int, default=2, help="measurements per version")
    parser.add_argument("--images", type=int, default=int(os.environ.get("BENCH_TASK_IMAGES", 8)))
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="before-") as scratch:
        trees = {"before": checkout(args.before, Path(scratch)), "after": ROOT}
        for case in args.cases:
            runs: dict[str, list] = {"before": [], "after": []}
            for round_ in range(args.rounds):
                order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
                for version in order:
                    runs[version].append(measure(trees[version], case, args.images))
            before, after = best(runs["before"]), best(runs["after"])
            results[case] = {
                "before": before,
                "after": after,
                "after_vs_before": {mode: after[mode] / before[mode] for mode in before},
            }
            print(f"{case}, {args.images} images (images/s, best of {args.rounds}):")
            for mode in before:
                label = f"  {mode}: before {before[mode]:.3g}, after / before"
                report(label, after[mode] / before[mode], ">= 0.95")
    result = {"before": args.before, "images": args.images, "rounds": args.rounds, "cases": results}
    save("before_after", result)
    return result


if __name__ == "__main__":
    main()
