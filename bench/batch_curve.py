"""Batch curve: images/s and latency per batch size, full-size captioning and classification.

Measures the model stage alone (task.predict: forward pass and decoding of preprocessed
images), the number that MAX_BATCH_SIZE should be chosen from. Writes batch_curve.json and .png.
"""

from __future__ import annotations

import os

from common import (
    RESULTS,
    arch_label,
    images_b64,
    make_worker,
    pin_caption_length,
    report,
    save,
    timed,
)

SIZES = [int(s) for s in os.environ.get("BENCH_BATCH_SIZES", "1,2,4,8,16,32,64").split(",")]
MODELS = {arch_label(arch): arch for arch in ("vit-gpt2", "resnet")}


def curve(arch: str) -> list[dict]:
    worker = make_worker(arch, MAX_BATCH_SIZE=max(SIZES))
    pin_caption_length(worker)
    task = worker.task
    options = task.check(task.Options())
    pixels = [worker.prepare_now(b, options) for b in images_b64(max(SIZES))]
    points = []
    for size in SIZES:
        batch = pixels[:size]
        task.predict(batch, [options] * size)  # warm-up at this shape
        repeat = 3 if size <= 8 else 1
        seconds = timed(
            lambda batch=batch: task.predict(batch, [options] * len(batch)), repeat=repeat
        )
        points.append({"batch_size": size, "latency_s": seconds, "images_per_s": size / seconds})
        report(f"{arch} batch {size:>3} (images/s)", size / seconds, unit="")
    return points


def plot(curves: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4))
    for label, points in curves.items():
        sizes = [p["batch_size"] for p in points]
        throughput.plot(sizes, [p["images_per_s"] for p in points], marker="o", label=label)
        latency.plot(sizes, [p["latency_s"] for p in points], marker="o", label=label)
    for axis, title in ((throughput, "throughput (images/s)"), (latency, "batch latency (s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "batch_curve.png", dpi=110)


def main() -> dict:
    curves = {label: curve(arch) for label, arch in MODELS.items()}
    best = {label: max(points, key=lambda p: p["images_per_s"]) for label, points in curves.items()}
    for label, point in best.items():
        gain = point["images_per_s"] / curves[label][0]["images_per_s"]
        report(f"{label}: best batch {point['batch_size']} vs batch 1", gain)
    save("batch_curve", {"curves": curves})
    plot(curves)
    return curves


if __name__ == "__main__":
    main()
