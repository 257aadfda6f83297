"""The input pipeline alone, per core: decode + preprocess images/s for phone photos (12 MP JPEG),
1080p PNGs and 640x480 JPEGs, per JPEG_DRAFT mode (false: full decode; true: the default, scaled
only within the accuracy margin; fast), per processor family and backend (PIL, torchvision).

Runs on one thread (torch and Pillow), so the figures are per core; a worker's image threads
multiply them by the cores they get. The processors are the real families' (ViT, ConvNeXt as
ResNet-50 uses, CLIP, BLIP) at their real sizes; models are not needed for this stage. What each
mode costs in answers is bench/decode_accuracy.py's.
"""

from __future__ import annotations

import os
import time

import torch
import transformers
from PIL import Image

from common import PHOTOS, report, save
from vision_worker.images import ImageLimits, draft_for, finish_decode, open_image

SECONDS_PER_POINT = float(os.environ.get("BENCH_INPUT_SECONDS", "3"))
INPUTS = {  # name: (size, format)
    "12MP JPEG": ((4032, 3024), "JPEG"),
    "1080p PNG": ((1920, 1080), "PNG"),
    "640x480 JPEG": ((640, 480), "JPEG"),
}
PROCESSORS = {  # family: (class name, its arguments)
    "ViT": ("ViTImageProcessor", {"size": {"height": 224, "width": 224}}),
    "ConvNeXt/ResNet": (
        "ConvNextImageProcessor",
        {"size": {"shortest_edge": 224}, "crop_pct": 224 / 256},
    ),
    "CLIP": ("CLIPImageProcessor", {"size": {"shortest_edge": 224}, "crop_size": 224}),
    "BLIP": ("BlipImageProcessor", {"size": {"height": 384, "width": 384}}),
}
BACKENDS = {"pil": "Pil", "torchvision": ""}  # transformers 5: the plain name is torchvision's
MODES = ("false", "true", "fast")
LIMITS = ImageLimits(max_bytes=100_000_000, max_pixels=100_000_000)


def encoded_inputs(size: tuple[int, int], fmt: str) -> list[bytes]:
    import io

    import skimage.data

    encoded = []
    for name in PHOTOS[:4]:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size)
        buffer = io.BytesIO()
        image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        encoded.append(buffer.getvalue())
    return encoded


def processor(family: str, backend: str):
    name, arguments = PROCESSORS[family]
    return getattr(transformers, name + BACKENDS[backend])(**arguments)


def rate(encoded: list[bytes], processor, mode: str) -> float:
    """Images/s of bytes -> pixel tensor, as the worker's image threads do it."""

    def one(data: bytes) -> None:
        opened = open_image(data, LIMITS)
        draft_for(opened, dict(processor.size), mode)
        processor(images=[finish_decode(opened)], return_tensors="pt")

    one(encoded[0])  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS_PER_POINT:
        one(encoded[done % len(encoded)])
        done += 1
    return done / (time.perf_counter() - started)


def main() -> dict:
    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    for input_name, (size, fmt) in INPUTS.items():
        encoded = encoded_inputs(size, fmt)
        for family in PROCESSORS:
            for backend in BACKENDS:
                chosen = processor(family, backend)
                rates = {mode: rate(encoded, chosen, mode) for mode in MODES}
                results.setdefault(input_name, {}).setdefault(family, {})[backend] = rates
                for mode, value in rates.items():
                    report(
                        f"{input_name}, {family}, {backend}, JPEG_DRAFT={mode}: images/s per core",
                        value,
                        unit="",
                    )
    save("input_pipeline", {"images_per_s_per_core": results})
    return results


if __name__ == "__main__":
    main()
