"""segment on tiny SegFormer, Mask2Former, OneFormer and DETR panoptic models built offline,
against transformers' image-segmentation pipeline on real photos and 12 MP phone JPEGs: labels,
scores and masks equal (masks decoded from COCO RLE with pycocotools), in the photo's pixels;
cut-outs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools import mask as coco_mask
from transformers import pipeline

from conftest import PHOTOS, b64, phone_jpeg, photo, png_of, rotated_twin, run_job, run_jobs

# The tiny Mask2Former's queries score low: thresholds low enough to keep several segments.
LOOSE = {"threshold": 0.3, "overlap_mask_area_threshold": 0.3}
MASK_CLASSIFIERS = ("mask2former", "oneformer", "detr-panoptic")
CASES = [("segformer", "semantic", {})] + [
    (arch, subtask, LOOSE if subtask != "semantic" else {})
    for arch in MASK_CLASSIFIERS
    for subtask in ("panoptic", "instance", "semantic")
]


def decoded(mask) -> np.ndarray:
    """A result's mask as a boolean array: COCO RLE through pycocotools, or a PNG."""
    if isinstance(mask, str):
        return np.asarray(png_of(mask)) == 255
    rle = {"size": mask["size"], "counts": mask["counts"].encode()}
    return coco_mask.decode(rle).astype(bool)


def assert_same_segments(ours: list[dict], expected: list[dict]) -> None:
    assert [s["label"] for s in ours] == [s["label"] for s in expected]
    for mine, theirs in zip(ours, expected, strict=True):
        if theirs["score"] is None:
            assert mine["score"] is None
        else:
            assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
        np.testing.assert_array_equal(decoded(mine["mask"]), np.asarray(theirs["mask"]) == 255)


@pytest.mark.parametrize(("arch", "subtask", "options"), CASES)
def test_segments_equal_the_pipeline_on_real_photos(make_worker, model_dir, arch, subtask, options):
    worker = make_worker(arch)
    assert worker.task.name == "segment"  # chosen from the checkpoint's architecture
    reference = pipeline("image-segmentation", model=str(model_dir(arch)))
    found = 0
    for name in PHOTOS:
        image = photo(name, size=None).convert("RGB")
        job = {"image": b64(image), "subtask": subtask, **options}
        ours = run_job(worker, job)["results"][0]["segments"]
        assert_same_segments(ours, reference(image, subtask=subtask, **options))
        found += len(ours)
    assert found >= len(PHOTOS), "the options are set to find segments in a random model"


def test_the_default_subtask_is_the_pipelines(make_worker, model_dir):
    image = photo("chelsea", size=None).convert("RGB")
    for arch in ("segformer", *MASK_CLASSIFIERS):
        reference = pipeline("image-segmentation", model=str(model_dir(arch)))
        ours = run_job(make_worker(arch), {"image": b64(image), **LOOSE})["results"][0]
        assert_same_segments(ours["segments"], reference(image, **LOOSE))


def test_masks_come_as_png_on_request_and_labels_filter(make_worker):
    worker = make_worker("segformer")
    image = b64(photo("astronaut", size=(120, 90)))
    every = run_job(worker, {"image": image})["results"][0]["segments"]
    assert len(every) >= 2
    wanted = every[1]["label"]
    kept = run_job(worker, {"image": image, "labels": [wanted], "mask_format": "png"})
    (segment,) = kept["results"][0]["segments"]
    assert segment["label"] == wanted
    np.testing.assert_array_equal(decoded(segment["mask"]), decoded(every[1]["mask"]))
    assert decoded(segment["mask"]).shape == (90, 120)


def test_a_cutout_is_the_photo_with_the_kept_segments_opaque(make_worker):
    worker = make_worker("segformer")
    image = photo("coffee", size=(120, 90)).convert("RGB")
    every = run_job(worker, {"image": b64(image)})["results"][0]["segments"]
    wanted = [every[0]["label"], every[-1]["label"]]
    result = run_job(worker, {"image": b64(image), "labels": wanted, "cutout": True})
    cutout = result["results"][0]["cutout"]
    rgba = png_of(cutout["png"])
    assert (rgba.mode, rgba.size) == ("RGBA", (120, 90))
    alpha = decoded(cutout["alpha"])
    union = decoded(every[0]["mask"]) | decoded(every[-1]["mask"])
    np.testing.assert_array_equal(alpha, union)
    np.testing.assert_array_equal(np.asarray(rgba)[..., 3] == 255, union)
    np.testing.assert_array_equal(np.asarray(rgba)[..., :3], np.asarray(image))  # lossless


def test_bad_subtasks_and_labels_fail_the_job_with_what_is_possible(make_worker):
    worker = make_worker("segformer")
    image = b64(photo("chelsea"))
    output = run_job(worker, {"image": image, "subtask": "panoptic"})
    assert output["error_code"] == "invalid_input"
    assert "it does semantic" in output["error"]
    output = run_job(worker, {"image": image, "labels": ["unicorn"]})
    assert "labels the model does not know: ['unicorn']" in output["error"]


def test_photos_of_different_shapes_batched_equal_alone(make_worker):
    """Mask2Former, OneFormer and DETR keep each photo's aspect ratio, so shapes batch apart;
    SegFormer's fixed input batches them all. Either way each result equals the one made
    alone."""
    for arch in (*MASK_CLASSIFIERS, "segformer"):
        worker = make_worker(arch, MAX_BATCH_SIZE=8, BATCH_WAIT_MS=200)
        images = [
            b64(photo(name, size=size))
            for name, size in [("chelsea", (120, 80)), ("coffee", (120, 80)), ("rocket", (80, 120))]
        ]
        together = run_job(worker, {"images": images, **LOOSE})["results"]
        for image, batched in zip(images, together, strict=True):
            alone = run_job(worker, {"image": image, **LOOSE})["results"][0]
            assert [s["label"] for s in batched["segments"]] == [
                s["label"] for s in alone["segments"]
            ]
            for a, b in zip(batched["segments"], alone["segments"], strict=True):
                assert a["score"] == pytest.approx(b["score"], abs=1e-5) if b["score"] else True
                assert (decoded(a["mask"]) == decoded(b["mask"])).mean() > 0.999


@pytest.mark.parametrize("twin", [False, True])
@pytest.mark.parametrize("arch", ["segformer", *MASK_CLASSIFIERS])
def test_phone_jpegs_are_segmented_in_the_photos_upright_pixels(make_worker, model_dir, arch, twin):
    data = rotated_twin("chelsea") if twin else phone_jpeg("chelsea")
    opened = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    options = LOOSE if arch in MASK_CLASSIFIERS else {}
    worker = make_worker(arch, JPEG_DRAFT="false")
    ours = run_job(worker, {"image": b64(data), **options})["results"][0]["segments"]
    expected = pipeline("image-segmentation", model=str(model_dir(arch)))(opened, **options)
    assert_same_segments(ours, expected)
    assert decoded(ours[0]["mask"]).shape == (3024, 4032)


def test_oneformer_jobs_of_different_subtasks_at_once_equal_alone(make_worker, model_dir):
    """OneFormer's subtask is a model input (a task token): jobs asking for different subtasks
    share no forward pass, and each equals the pipeline's answer."""
    worker = make_worker("oneformer", MAX_BATCH_SIZE=8, BATCH_WAIT_MS=200)
    image = photo("coffee", size=None).convert("RGB")
    reference = pipeline("image-segmentation", model=str(model_dir("oneformer")))
    jobs = [{"image": b64(image), "subtask": s, **LOOSE} for s in ("panoptic", "instance")]
    jobs.append({"image": b64(image), "subtask": "semantic"})
    for job, output in zip(jobs, run_jobs(worker, jobs), strict=True):
        options = {key: value for key, value in job.items() if key != "image"}
        assert_same_segments(output["results"][0]["segments"], reference(image, **options))
