"""Cross-job batching: 64 concurrent single-image jobs vs one 64-image job vs 64 sequential jobs.

Full-size ViT-GPT2 architecture (random weights) on this machine's device, captions pinned to
BENCH_CAPTION_TOKENS tokens. Goal: concurrent jobs reach >= 90% of the one-big-job throughput.
"""

from __future__ import annotations

from common import (
    images_b64,
    make_worker,
    one_vs_concurrent_vs_sequential,
    pin_caption_length,
    report,
    save,
)

JOBS = 64


def main() -> dict:
    worker = make_worker("vit-gpt2", MAX_BATCH_SIZE=JOBS, BATCH_WAIT_MS=20)
    pin_caption_length(worker)
    throughput = one_vs_concurrent_vs_sequential(worker, images_b64(JOBS), {}, "caption")
    print(f"cross-job batching, {JOBS} images, device {worker.describe()['device']}:")
    for mode, value in throughput.items():
        report(f"{mode} (images/s)", value, unit="")
    ratios = {
        "concurrent_vs_one_big_job": throughput["64_concurrent_jobs"]
        / throughput["one_64_image_job"],
        "concurrent_vs_sequential": throughput["64_concurrent_jobs"]
        / throughput["64_sequential_jobs"],
    }
    report("64 concurrent jobs / one 64-image job", ratios["concurrent_vs_one_big_job"], ">= 0.90")
    report("64 concurrent jobs / 64 sequential jobs", ratios["concurrent_vs_sequential"])
    batch_sizes = dict(sorted(worker.batcher.batch_sizes.items()))
    result = {
        "images_per_s": throughput,
        "ratios": ratios,
        "batch_sizes_formed": batch_sizes,
    }
    save("cross_job", result)
    return result


if __name__ == "__main__":
    main()
