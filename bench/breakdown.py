"""Where the time goes: decode, preprocess, model and postprocess per image, and the handler's
overhead (handler throughput / raw model throughput at the same batch size; goal >= 95%).
"""

from __future__ import annotations

import os
import time

import torch

from common import images_b64, make_worker, pin_caption_length, report, run, save, timed

BATCH = int(os.environ.get("BENCH_BREAKDOWN_BATCH", "16"))


def stages(arch: str) -> dict:
    worker = make_worker(arch, MAX_BATCH_SIZE=BATCH)
    pin_caption_length(worker)
    task = worker.task
    options = task.check(task.Options())
    encoded = images_b64(BATCH)

    started = time.perf_counter()
    target = task.decode_target(options)  # decoded as serving decodes: scaled where it can be
    images = [worker.images.prepared(source, lambda image: image, target) for source in encoded]
    decode = time.perf_counter() - started

    started = time.perf_counter()
    pixels = task.processor(images=images, return_tensors="pt").pixel_values
    preprocess = time.perf_counter() - started

    started = time.perf_counter()
    with torch.inference_mode():
        if task.name == "caption":
            raw = task.model.generate(
                pixel_values=pixels,
                max_new_tokens=options.max_new_tokens,
                min_new_tokens=task.pinned_min_new_tokens,
                do_sample=False,
            )
        else:
            raw = task.model(pixel_values=pixels).logits
    model = time.perf_counter() - started

    started = time.perf_counter()
    if task.name == "caption":
        task.tokenizer.batch_decode(raw, skip_special_tokens=True)
    else:
        [task.encode(p, {}, options) for p in raw.float().softmax(-1)]
    postprocess = time.perf_counter() - started

    per_image_ms = {
        name: 1000 * seconds / BATCH
        for name, seconds in {
            "decode": decode,
            "preprocess": preprocess,
            "model": model,
            "postprocess": postprocess,
        }.items()
    }
    total = sum(per_image_ms.values())
    print(f"{arch}, batch {BATCH}, per image:")
    for name, ms in per_image_ms.items():
        report(f"  {name} (ms/image, {100 * ms / total:.0f}%)", ms, unit="")

    inputs = [task.prepare(image, options) for image in images]
    # Alternated, best of three each: this machine's noise is larger than the effect measured.
    raw_runs, handler_runs = [], []
    for _ in range(3):
        raw_runs.append(timed(lambda: task.predict(inputs, [options] * len(inputs))))
        handler_runs.append(timed(lambda: run(worker.run({"images": encoded}))))
    raw_s, handler_s = min(raw_runs), min(handler_runs)
    overhead_ratio = raw_s / handler_s
    report(f"{arch}: handler throughput / raw model throughput", overhead_ratio, ">= 0.95")

    # One client, one image: the worker against the same stages called directly in one thread
    # (decode, preprocess, model). The batcher must add no wait when the model is idle.
    def direct() -> None:
        item = worker.prepare_now(encoded[0], options)
        task.predict([item], [options])

    direct_runs, lone_runs = [], []
    for _ in range(5):
        direct_runs.append(timed(direct))
        lone_runs.append(timed(lambda: run(worker.run({"image": encoded[0]}))))
    latency_ratio = min(direct_runs) / min(lone_runs)
    report(f"{arch}: one-client latency, direct / worker", latency_ratio, ">= 0.98")
    return {
        "batch_size": BATCH,
        "per_image_ms": per_image_ms,
        "raw_batch_s": raw_s,
        "handler_batch_s": handler_s,
        "handler_vs_raw": overhead_ratio,
        "one_client_direct_s": min(direct_runs),
        "one_client_worker_s": min(lone_runs),
        "one_client_direct_vs_worker": latency_ratio,
    }


def main() -> dict:
    result = {arch: stages(arch) for arch in ("vit-gpt2", "resnet")}
    save("breakdown", result)
    return result


if __name__ == "__main__":
    main()
