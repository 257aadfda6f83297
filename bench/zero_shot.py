"""Zero-shot classification across jobs: 32 concurrent one-image jobs with the same labels vs one
32-image job vs 32 sequential jobs, on the full-size CLIP ViT-B/32 architecture (random weights).

Goal: concurrent jobs reach >= 90% of the one-big-job throughput, and the label set's text
embeddings are computed once for all of them (the text tower is not re-run per job).
"""

from __future__ import annotations

from common import images_b64, make_worker, one_vs_concurrent_vs_sequential, report, save

JOBS = 32
LABELS = [
    "a cat",
    "a dog",
    "an astronaut",
    "a rocket",
    "a cup of coffee",
    "a camera",
    "a person",
    "a landscape",
    "a city street",
    "food",
    "a car",
    "a bird",
    "a document",
    "a chart",
    "a microscope slide",
    "a motorcycle",
]


def main() -> dict:
    worker = make_worker("clip", MAX_BATCH_SIZE=JOBS, BATCH_WAIT_MS=20)
    throughput = one_vs_concurrent_vs_sequential(
        worker, images_b64(JOBS), {"labels": LABELS}, "labels"
    )
    print(f"zero-shot, {JOBS} images, {len(LABELS)} labels, device {worker.describe()['device']}:")
    for mode, value in throughput.items():
        report(f"{mode} (images/s)", value, unit="")
    concurrent, one_job, sequential = (
        throughput[f"{JOBS}_concurrent_jobs"],
        throughput[f"one_{JOBS}_image_job"],
        throughput[f"{JOBS}_sequential_jobs"],
    )
    ratios = {
        "concurrent_vs_one_big_job": concurrent / one_job,
        "concurrent_vs_sequential": concurrent / sequential,
    }
    report(
        f"{JOBS} concurrent zero-shot jobs / one {JOBS}-image job",
        ratios["concurrent_vs_one_big_job"],
        ">= 0.90",
    )
    report(
        f"{JOBS} concurrent zero-shot jobs / {JOBS} sequential", ratios["concurrent_vs_sequential"]
    )
    encoded = worker.task.label_sets_encoded
    # The warm-up's label set, then this benchmark's one label set: twice in all, whatever the
    # number of jobs.
    assert encoded == 2, f"label set encoded {encoded} times"
    result = {
        "labels": len(LABELS),
        "images_per_s": throughput,
        "ratios": ratios,
        "label_sets_encoded": encoded,
        "batch_sizes_formed": dict(sorted(worker.batcher.batch_sizes.items())),
    }
    save("zero_shot", result)
    return result


if __name__ == "__main__":
    main()
