"""Phone-sized photos (12 MP JPEGs): scaled JPEG decoding keeps the answers of full decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTOS, b64, encode, photo, run_job
from vision_worker.images import ImageLimits, draft_for, draft_size, finish_decode, open_image

PHONE = (4032, 3024)


@pytest.fixture(scope="module")
def phone_jpegs() -> list[str]:
    """The scikit-image samples upscaled to 12 MP and saved as a phone would (JPEG q=90)."""
    return [b64(encode(photo(name, size=PHONE).convert("RGB"), "JPEG", quality=90))
            for name in PHOTOS]  # fmt: skip


def test_draft_size_keeps_at_least_the_processor_target():
    assert draft_size(4032, 3024, {"shortest_edge": 224}) == (299, 224)
    assert draft_size(4032, 3024, {"height": 384, "width": 384}) == (512, 384)
    assert draft_size(4032, 3024, {"longest_edge": 1008}) == (1008, 756)
    assert draft_size(200, 150, {"shortest_edge": 256}) is None  # already small enough
    assert draft_size(4032, 3024, {"max_num_patches": 256}) is None  # no fixed size: full decode


def test_a_12mp_jpeg_decodes_at_an_eighth_of_its_size_for_a_224_model():
    data = encode(photo("astronaut", size=PHONE).convert("RGB"), "JPEG", quality=90)
    opened = open_image(data, ImageLimits(50_000_000, 50_000_000))
    draft_for(opened, {"shortest_edge": 224})
    assert opened.size == (504, 378)  # libjpeg's 1/8: still >= 224 px on the short side
    image = finish_decode(opened)
    assert (image.mode, image.size) == ("RGB", (504, 378))
    png = open_image(
        encode(photo("astronaut", size=(1920, 1080)), "PNG"), ImageLimits(10**8, 10**8)
    )
    draft_for(png, {"shortest_edge": 224})
    assert png.size == (1920, 1080)  # PNG has no scaled decoding


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_top_1_labels_on_12mp_photos_equal_full_decoding(arch, make_worker, phone_jpegs):
    drafted = run_job(make_worker(arch, JPEG_DRAFT=True), {"images": phone_jpegs, "top_k": 1})
    full = run_job(make_worker(arch, JPEG_DRAFT=False), {"images": phone_jpegs, "top_k": 1})
    top = [[r["labels"][0]["label"] for r in out["results"]] for out in (drafted, full)]
    assert top[0] == top[1]


@pytest.mark.parametrize(("arch", "task"), [("clip", "embed"), ("dinov2", "embed")])
def test_embeddings_of_12mp_photos_stay_within_cosine_0_99_of_full_decoding(
    arch, task, make_worker, phone_jpegs
):
    drafted = run_job(make_worker(arch, TASK=task, JPEG_DRAFT=True), {"images": phone_jpegs})
    full = run_job(make_worker(arch, TASK=task, JPEG_DRAFT=False), {"images": phone_jpegs})
    for a, b in zip(drafted["results"], full["results"], strict=True):
        cosine = np.dot(a["embedding"], b["embedding"])  # both unit length
        assert cosine >= 0.99


def test_exif_rotation_still_applies_to_drafted_jpegs(make_worker):
    """A portrait phone photo is stored landscape with EXIF orientation 6."""
    wide = photo("chelsea", size=PHONE).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    wide.save(buffer, "JPEG", quality=90, exif=exif)
    opened = open_image(buffer.getvalue(), ImageLimits(50_000_000, 50_000_000))
    draft_for(opened, {"shortest_edge": 224})
    assert finish_decode(opened).size == (378, 504)  # rotated upright after scaled decoding
