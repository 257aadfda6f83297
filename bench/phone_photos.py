"""End to end on phone photos: worker images/s on 12 MP JPEGs vs the same photos pre-resized to
224 px, same model (full-size ResNet-50 architecture, random weights), same run, per JPEG_DRAFT
mode: "false" (full decode), "true" (the default: here a full decode too, as the accuracy margin
asks for a 224 px model) and "fast" (1/8 scale).

Goal >= 0.8 for fast mode: scaled decoding on the image threads keeps up with the model. The
default's ratio is the price of the pipeline's exact answers on this machine's 2 cores.
"""

from __future__ import annotations

import base64
import io
import os

import skimage.data
from PIL import Image

from common import PHOTOS, best_batch_size, make_worker, report, run, save, timed

IMAGES = int(os.environ.get("BENCH_PHOTOS", "32"))
PHONE = (4032, 3024)


def jpeg_b64(name: str, size: tuple[int, int]) -> str:
    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode()


def main() -> dict:
    names = [PHOTOS[i % 5] for i in range(IMAGES)]
    phone = [jpeg_b64(name, PHONE) for name in names]
    small = [jpeg_b64(name, (299, 224)) for name in names]
    modes = {}
    for mode in ("false", "true", "fast"):
        worker = make_worker("resnet", MAX_BATCH_SIZE=best_batch_size("resnet"), JPEG_DRAFT=mode)
        modes[mode] = measure(worker, phone, small)
        report(
            f"12 MP JPEGs / pre-resized 224 px, ResNet-50, JPEG_DRAFT={mode}",
            modes[mode]["ratio"],
            ">= 0.80" if mode == "fast" else "",
        )
    result = {
        "images": IMAGES,
        "modes": modes,
        "ratio": modes["true"]["ratio"],
        "image_threads": worker.image_thread_count,
    }
    save("phone_photos", result)
    return result


def measure(worker, phone: list[str], small: list[str]) -> dict:
    def through_worker(images: list[str]) -> None:
        output = run(worker.run({"images": images}))
        assert all("labels" in r for r in output["results"]), output["results"][:1]

    through_worker(small)  # warm-up
    rates: dict[str, float] = {}
    for _ in range(2):  # alternated, best of two each: this machine's noise is ~10%
        for label, images in (("12MP_jpeg", phone), ("pre_resized_224", small)):
            rate = IMAGES / timed(lambda images=images: through_worker(images))
            rates[label] = max(rates.get(label, 0.0), rate)
    for label, rate in rates.items():
        report(f"{label} (images/s through the worker)", rate, unit="")
    return {"images_per_s": rates, "ratio": rates["12MP_jpeg"] / rates["pre_resized_224"]}


if __name__ == "__main__":
    main()
