"""Run every benchmark (each in its own process) and write results/summary.md.

python bench/run_all.py          # about 10 minutes on a 2-core CPU
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from common import RESULTS, ROOT, machine

SCRIPTS = [
    "cold_start",
    "batch_curve",
    "breakdown",
    "naive",
    "cross_job",
    "zero_shot",
    "concurrency",
    "input_pipeline",
    "decode_accuracy",
    "phone_photos",
    "tasks",
]


def main() -> int:
    started = time.perf_counter()
    # --summary: only rewrite summary.md from the results already there (one script was rerun).
    for script in [] if "--summary" in sys.argv[1:] else SCRIPTS:
        print(f"\n=== {script}", flush=True)
        done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py")], cwd=ROOT)
        if done.returncode != 0:
            print(f"{script} failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
    (RESULTS / "summary.md").write_text(summary())
    print(f"\nall benchmarks in {time.perf_counter() - started:.0f}s; see bench/results/summary.md")
    return 0


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def summary() -> str:
    info = machine()
    cold, curve, split = _load("cold_start"), _load("batch_curve"), _load("breakdown")
    naive, cross, sweep = _load("naive"), _load("cross_job"), _load("concurrency")
    zero_shot = _load("zero_shot")["ratios"]
    vit, res = naive["vit-gpt2"]["ratios"], naive["resnet"]["ratios"]
    rows = [
        ("handler / raw model, ViT-GPT2 batch 16", split["vit-gpt2"]["handler_vs_raw"], ">= 0.95"),
        ("handler / raw model, ResNet-50 batch 16", split["resnet"]["handler_vs_raw"], ">= 0.95"),
        ("ours / model-loaded-per-request, ViT-GPT2", vit["ours_vs_per_request_load"], ">= 20"),
        ("ours / model-loaded-per-request, ResNet-50", res["ours_vs_per_request_load"], ">= 20"),
        ("batched / one-image-at-a-time, ViT-GPT2", vit["ours_vs_one_at_a_time"], ">= 1.5"),
        ("batched / one-image-at-a-time, ResNet-50", res["ours_vs_one_at_a_time"], ">= 1.5"),
        (
            "64 concurrent jobs / one 64-image job",
            cross["ratios"]["concurrent_vs_one_big_job"],
            ">= 0.9",
        ),
        (
            "64 concurrent jobs / 64 sequential jobs",
            cross["ratios"]["concurrent_vs_sequential"],
            "",
        ),
        (
            "32 concurrent zero-shot jobs / one 32-image job, CLIP",
            zero_shot["concurrent_vs_one_big_job"],
            ">= 0.9",
        ),
        ("32 concurrent zero-shot jobs / 32 sequential", zero_shot["concurrent_vs_sequential"], ""),
        *(
            (f"12 MP JPEGs / pre-resized 224 px, ResNet-50, JPEG_DRAFT={mode}", m["ratio"], goal)
            for mode, m in _load("phone_photos")["modes"].items()
            for goal in [">= 0.8" if mode == "fast" else ""]
        ),
        (
            "one-client latency, direct / worker, ViT-GPT2",
            split["vit-gpt2"]["one_client_direct_vs_worker"],
            ">= 0.98",
        ),
        (
            "one-client latency, direct / worker, ResNet-50",
            split["resnet"]["one_client_direct_vs_worker"],
            ">= 0.98",
        ),
    ]
    where = f"{info['device']}, {info['cpu_count']} cores, torch {info['torch']}, {info['date']}"
    lines = [
        f"# Benchmark results ({where})",
        "",
        "Full-size architectures with random weights; captions pinned to the same token count.",
        "",
        "| ratio | measured | goal |",
        "| --- | ---: | --- |",
        *[f"| {name} | {value:.2f}x | {goal} |" for name, value, goal in rows],
        "",
        "| batch size | ViT-GPT2 images/s | ResNet-50 images/s |",
        "| ---: | ---: | ---: |",
    ]
    caption, classify = curve["curves"].values()
    for a, b in zip(caption, classify, strict=True):
        lines.append(f"| {a['batch_size']} | {a['images_per_s']:.2f} | {b['images_per_s']:.2f} |")
    lines += [
        "",
        "| clients | requests/s | p50 ms | p95 ms | p99 ms | mean batch |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in sweep["levels"]:
        lines.append(
            f"| {level['concurrency']} | {level['requests_per_s']:.2f} | {level['p50_ms']:.0f} | "
            f"{level['p95_ms']:.0f} | {level['p99_ms']:.0f} | {level['mean_batch_size']:.1f} |"
        )
    tasks = _load("tasks")
    count = tasks["images"]
    lines += [
        "",
        f"| task ({count} images) | model | one {count}-image job, images/s | "
        f"{count} concurrent / one job | {count} concurrent / {count} sequential |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for case, measured in tasks["tasks"].items():
        one = measured["images_per_s"][f"one_{count}_image_job"]
        lines.append(
            f"| {case} | {measured['arch']} | {one:.2f} | "
            f"{measured['concurrent_vs_one_big_job']:.2f}x | "
            f"{measured['concurrent_vs_sequential']:.2f}x |"
        )
    lines += _input_pipeline_tables()
    lines += [
        "",
        "| cold start | imports s | weights s | warm-up s | start to ready s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for arch in ("vit-gpt2", "resnet"):
        phases = cold[arch]
        seconds = [phases[k] for k in ("imports_s", "load_weights_s", "warm_up_s")]
        seconds.append(phases["process_start_to_ready_s"])
        lines.append(f"| {arch} | " + " | ".join(f"{s:.1f}" for s in seconds) + " |")
    return "\n".join(lines) + "\n"


def _input_pipeline_tables() -> list[str]:
    """Decode + preprocess per core by mode and backend, and each mode's answers beside it."""
    pipeline = _load("input_pipeline")["images_per_s_per_core"]
    families = list(next(iter(pipeline.values())))
    header = "| input, backend: images/s per core, full / default / fast | " + " | ".join(families)
    lines = ["", header + " |", "| --- |" + " ---: |" * len(families)]
    for name, by_family in pipeline.items():
        for backend in next(iter(by_family.values())):
            cells = [_per_mode(by_family[family][backend]) for family in families]
            lines.append(f"| {name}, {backend} | " + " | ".join(cells) + " |")
    accuracy = _load("decode_accuracy")["modes"]
    lines += [
        "",
        "| EfficientNet-Lite0 on 12 MP JPEGs vs the pipeline | JPEG_DRAFT | "
        "max top-5 difference | top-1 agree | images/s per core |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for backend, modes in accuracy.items():
        for mode, m in modes.items():
            lines.append(
                f"| {backend} | `{mode}` | {m['max_top5_difference']:.4f} | "
                f"{m['top1_agree']}/{m['photos']} | {m['images_per_s_per_core']:.1f} |"
            )
    return lines


def _per_mode(rates: dict[str, float]) -> str:
    return " / ".join(f"{rates[mode]:.1f}" for mode in ("false", "true", "fast"))


if __name__ == "__main__":
    sys.exit(main())
