"""Sample photos to try the worker on, offline: scikit-image's samples (a cat, an astronaut,
coffee, a rocket, a camera man, a motorcycle) written as JPEGs, and one as a 12 MP phone photo.

    python -m vision_worker.dev.sample_photos examples
    python handler.py --image examples/
"""

from __future__ import annotations

import sys
from pathlib import Path

import skimage.data
from PIL import Image

SAMPLES = ("chelsea", "astronaut", "coffee", "rocket", "camera")


def write(folder: Path) -> list[Path]:
    """The samples as JPEGs in `folder` (quality 90, as phones save them); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SAMPLES:
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path, quality=90)
        written.append(path)
    phone = folder / "phone-12mp.jpg"
    Image.open(written[0]).resize((4032, 3024), Image.Resampling.BICUBIC).save(phone, quality=90)
    return [*written, phone]


if __name__ == "__main__":
    paths = write(Path(sys.argv[1] if len(sys.argv) > 1 else "examples"))
    print("wrote " + ", ".join(str(p) for p in paths))
