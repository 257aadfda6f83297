"""Against the naive designs, in one run on the same machine:

* model loaded per request (seed 001: from_pretrained inside the request handler),
* one image at a time (seeds 000/003: model loaded once, no batching),
* ours: loaded once, images from concurrent jobs batched.
Goals: ours >= 20x the per-request-load design; batched >= 1.5x one-at-a-time on CPU.
"""

from __future__ import annotations

import asyncio
import os

from common import (
    best_batch_size,
    full_model,
    images_b64,
    make_worker,
    pin_caption_length,
    report,
    run,
    save,
    timed,
)
from vision_worker.settings import load_settings
from vision_worker.tasks import load_task

REQUESTS = int(os.environ.get("BENCH_NAIVE_REQUESTS", "32"))
LOAD_PER_REQUEST_SAMPLES = 3  # each costs a full model load; the rate is per request anyway


def concurrent_jobs(worker, images) -> None:
    async def all_jobs():
        return await asyncio.gather(*(worker.run({"image": image}) for image in images))

    outputs = run(all_jobs())
    assert all("error" not in o["results"][0] for o in outputs)


def compare(arch: str) -> dict:
    images = images_b64(REQUESTS)
    ours = make_worker(arch, MAX_BATCH_SIZE=best_batch_size(arch), BATCH_WAIT_MS=20)
    one_at_a_time = make_worker(arch, MAX_BATCH_SIZE=1)
    for worker in (ours, one_at_a_time):
        pin_caption_length(worker)

    def per_request_load():
        for image in images[:LOAD_PER_REQUEST_SAMPLES]:
            task = load_task(load_settings(MODEL_NAME=str(full_model(arch))))  # what seed 001 does
            options = task.check(task.Options())
            target = task.decode_target(options)
            item = ours.images.prepared(image, lambda im: task.prepare(im, options), target)  # noqa: B023
            task.predict([item], [options])

    rates = {
        "per_request_load": LOAD_PER_REQUEST_SAMPLES / timed(per_request_load),
        "one_at_a_time": REQUESTS / timed(lambda: concurrent_jobs(one_at_a_time, images)),
        "ours_batched": REQUESTS / timed(lambda: concurrent_jobs(ours, images), repeat=2),
    }
    print(f"{arch}: {REQUESTS} concurrent single-image requests")
    for name, rate in rates.items():
        report(f"  {name} (requests/s)", rate, unit="")
    ratios = {
        "ours_vs_per_request_load": rates["ours_batched"] / rates["per_request_load"],
        "ours_vs_one_at_a_time": rates["ours_batched"] / rates["one_at_a_time"],
    }
    report(f"{arch}: ours / model-loaded-per-request", ratios["ours_vs_per_request_load"], ">= 20")
    report(f"{arch}: batched / one-image-at-a-time", ratios["ours_vs_one_at_a_time"], ">= 1.5")
    return {"requests": REQUESTS, "requests_per_s": rates, "ratios": ratios}


def main() -> dict:
    result = {arch: compare(arch) for arch in ("vit-gpt2", "resnet")}
    save("naive", result)
    return result


if __name__ == "__main__":
    main()
