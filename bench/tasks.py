"""Every task through the worker: one N-image job vs N concurrent one-image jobs vs N sequential
jobs, on full-size architectures with random weights (true compute, no Hub), same run.

    detect            YOLOS-base (ViT-B/16 with 100 detection tokens, 512-864 px)
    zero_shot_detect  OWL-ViT base patch32 (768 px), 3 labels
    caption + prompt  BLIP base (384 px), "a photograph of", pinned to CAPTION_TOKENS tokens
    ask               LLaVA-style: ViT-B/14 at 336 px (576 image tokens) + a 0.5B decoder shaped
                      like Qwen2-0.5B (LLaVA-Interleave 0.5B's size), 4 new tokens
    ask_qwen2_vl      Qwen2-VL-2B's shape (dynamic resolution: 320x240 photos, 4 new tokens)
    florence_od       Florence-2-base (DaViT + BART, 768 px), <OD>, 8 new tokens, 3 beams
    ocr_got           GOT-OCR2 (1024 px, 256 image tokens + a Qwen2-0.5B decoder), 8 new tokens
    ocr_donut         Donut base (Swin-B at 2560x1920 + MBart), 8 new tokens
    zero_shot_detect_grounding  Grounding DINO tiny (Swin-T + BERT-base, 800x1333), 3 labels
    classify explain  ResNet-50 with Grad-CAM (a backward pass), against plain classify
    segment           SegFormer-B0 (512 px, 10 labels): semantic masks at each photo's size
    segment panoptic  Mask2Former Swin-T (100 queries, 384-1536 px): panoptic masks
    depth             Depth Anything V2 small shape (ViT-S/14, 518 px): 16-bit maps
    mask              SAM ViT-B (1024 px), 4 point prompts per image: one embedding per image

BENCH_TASK_IMAGES sets N (default 8: the largest models take seconds per image on a CPU).
Then SAM's prompts: one image embedding, every prompt of the job through the mask decoder; a
1-prompt job against a BENCH_MASK_PROMPTS-prompt one (default 32, MAX_PROMPTS) on the same
image gives the embedding's seconds and the decoder's prompts/s, and so what a prompt costs.
Last, streaming: when the first results of a 4N-image ResNet-50 job arrive, against its end;
and ask's answers streamed token by token (BENCH_ANSWER_TOKENS, default 16) against the same
job unstreamed: the cost of streaming, and when the first words arrive.
"""

from __future__ import annotations

import os
import time

from common import (
    images_b64,
    make_worker,
    one_vs_concurrent_vs_sequential,
    pin_caption_length,
    report,
    run,
    save,
    timed,
)

IMAGES = int(os.environ.get("BENCH_TASK_IMAGES", "8"))
PROMPTS = int(os.environ.get("BENCH_MASK_PROMPTS", "32"))
ANSWER_TOKENS = int(os.environ.get("BENCH_ANSWER_TOKENS", "16"))
CASES = {
    "detect": ("yolos", {"threshold": 0.5}, "detections"),
    "zero_shot_detect": ("owlvit", {"labels": ["a cat", "a rocket", "a cup"]}, "detections"),
    "caption_prompt": ("blip", {"prompt": "a photograph of"}, "caption"),
    "ask": ("llava", {"question": "What is in the image?", "max_new_tokens": 4}, "answer"),
    "ask_qwen2_vl": (
        "qwen2-vl",
        {"question": "What is in the image?", "max_new_tokens": 4},
        "answer",
    ),
    "florence_od": ("florence2", {"task_prompt": "<OD>", "max_new_tokens": 8}, "parsed"),
    "ocr_got": ("got-ocr2", {"max_new_tokens": 8}, "text"),
    "ocr_donut": ("donut", {"max_new_tokens": 8}, "sequence"),
    "zero_shot_detect_grounding": (
        "grounding-dino",
        {"labels": ["a cat", "a rocket", "a cup"]},
        "detections",
    ),
    "classify": ("resnet", {}, "labels"),
    "classify_explain": ("resnet", {"explain": True}, "explanation"),
    "segment": ("segformer", {}, "segments"),
    "segment_panoptic": ("mask2former", {"threshold": 0.5}, "segments"),
    "depth": ("depth-anything", {}, "depth"),
    "upscale": ("swin2sr", {}, "image"),
    "mask": (
        "sam",
        {"prompts": [{"points": [[8 * i + 4, 8 * i + 4]]} for i in range(4)]},
        "prompts",
    ),
}


CASE_NAMES = list(CASES)


def first_results_vs_whole_job(worker, images: list[str]) -> dict:
    """Seconds until a streamed job's first results chunk, and until its end."""

    async def stream() -> tuple[float, float]:
        started, first = time.perf_counter(), None
        async for chunk in worker.stream({"images": images}):
            if first is None and chunk.get("results"):
                first = time.perf_counter() - started
        return first or 0.0, time.perf_counter() - started

    first, whole = run(stream())
    return {
        "images": len(images),
        "batch_size": worker.batcher.working_batch_size,
        "first_results_s": first,
        "whole_job_s": whole,
        "first_vs_whole": first / whole,
    }


def streamed_vs_plain_answers(worker, images: list[str], tokens: int = ANSWER_TOKENS) -> dict:
    """ask: the same job plain and streamed token by token (side by side, best of 3 each):
    what streaming costs the batch, and when its first text arrives."""
    job = {"images": images, "question": "What is in the image?", "max_new_tokens": tokens}

    async def streamed() -> tuple[float, float]:
        started, first = time.perf_counter(), None
        async for chunk in worker.stream(job):
            if first is None and chunk.get("text"):
                first = time.perf_counter() - started
        return first or 0.0, time.perf_counter() - started

    run(worker.run(job))  # warm-up
    plain_s, streams = [], []
    for _ in range(3):
        plain_s.append(timed(lambda: run(worker.run(job))))
        streams.append(run(streamed()))
    first_s, whole_s = min(streams, key=lambda s: s[1])
    return {
        "images": len(images),
        "max_new_tokens": tokens,
        "plain_job_s": min(plain_s),
        "streamed_job_s": whole_s,
        "streamed_vs_plain": whole_s / min(plain_s),
        "first_text_s": first_s,
        "first_text_vs_whole": first_s / whole_s,
    }


def prompts_per_second(worker, image: str, prompts: int = PROMPTS) -> dict:
    """SAM with one embedding per image: seconds of a 1-prompt and a `prompts`-prompt job on
    the same image; the difference is the mask decoder's (and the masks' post-processing)."""

    def job(count: int) -> None:
        points = [{"points": [[4.0 + 2 * i, 4.0 + 2 * i]]} for i in range(count)]
        output = run(worker.run({"image": image, "prompts": points}))
        assert len(output["results"][0]["prompts"]) == count, output

    job(prompts)  # warm-up at this many prompts
    one, many = timed(lambda: job(1), repeat=3), timed(lambda: job(prompts), repeat=3)
    return {
        "prompts": prompts,
        "one_prompt_job_s": one,
        f"{prompts}_prompt_job_s": many,
        "prompts_per_s": (prompts - 1) / max(many - one, 1e-9),
        "jobs_per_s_at_one_prompt": 1 / one,
        "prompts_per_s_in_one_job": prompts / many,
    }


def main() -> dict:
    images = images_b64(IMAGES)
    results: dict[str, dict] = {}
    workers = []  # kept to the end: each one's batcher runs on the shared loop until exit
    for case, (arch, options, key) in CASES.items():
        worker = make_worker(arch, MAX_BATCH_SIZE=IMAGES, BATCH_WAIT_MS=20)
        workers.append(worker)
        pin_caption_length(worker)
        throughput = one_vs_concurrent_vs_sequential(worker, images, options, key)
        one, concurrent, sequential = throughput.values()
        results[case] = {
            "arch": arch,
            "images_per_s": throughput,
            "concurrent_vs_one_big_job": concurrent / one,
            "concurrent_vs_sequential": concurrent / sequential,
        }
        print(f"{case} ({arch}), {IMAGES} images:")
        report("  one job (images/s)", one, unit="")
        report(f"  {IMAGES} concurrent jobs / one job", concurrent / one, ">= 0.90")
        report(f"  {IMAGES} concurrent jobs / {IMAGES} sequential", concurrent / sequential)
    explain_cost = (
        results["classify"]["images_per_s"][f"one_{IMAGES}_image_job"]
        / results["classify_explain"]["images_per_s"][f"one_{IMAGES}_image_job"]
    )
    report("classify time with explain / without", explain_cost, unit="x")
    streaming = first_results_vs_whole_job(workers[CASE_NAMES.index("classify")], images * 4)
    report("streamed job: first results at / whole job", streaming["first_vs_whole"], unit="x")
    mask_prompts = prompts_per_second(workers[CASE_NAMES.index("mask")], images[0])
    report(
        "mask: one-prompt job (s, mostly the embedding)", mask_prompts["one_prompt_job_s"], unit="s"
    )
    report(
        f"mask: decoder prompts/s (1 vs {PROMPTS} prompts)", mask_prompts["prompts_per_s"], unit=""
    )
    answers = streamed_vs_plain_answers(workers[CASE_NAMES.index("ask")], images)
    report("ask streamed token by token / plain", answers["streamed_vs_plain"], "<= 1.05")
    report("ask: first text at / whole job", answers["first_text_vs_whole"], unit="x")
    result = {
        "images": IMAGES,
        "tasks": results,
        "explain_cost": explain_cost,
        "streaming": streaming,
        "mask_prompts": mask_prompts,
        "token_streaming": answers,
    }
    save("tasks", result)
    return result


if __name__ == "__main__":
    main()
