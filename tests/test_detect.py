"""detect on a tiny YOLOS built offline, against transformers' object-detection pipeline on real
photos; images of different sizes in one job; thresholds and limits per job."""

from __future__ import annotations

import pytest
from transformers import pipeline

from conftest import PHOTOS, b64, photo, run_job, run_jobs


def real_photos() -> list:
    return [photo(name, size=None).convert("RGB") for name in PHOTOS]


@pytest.mark.parametrize(("arch", "threshold"), [("yolos", 0.2), ("detr", 0.1)])
def test_detections_equal_the_transformers_pipeline_on_real_photos(
    make_worker, model_dir, arch, threshold
):
    worker = make_worker(arch)
    assert worker.task.name == "detect"  # chosen from the checkpoint's architecture
    reference = pipeline("object-detection", model=str(model_dir(arch)))
    images = real_photos()
    job = {"threshold": threshold, "max_detections": 1000}
    if arch == "yolos":  # batches only equal sizes, so one job of all the photos is exact
        results = run_job(worker, {"images": [b64(i) for i in images], **job})["results"]
    else:  # DETR pads mixed sizes (see below): each photo alone, as the pipeline runs it
        results = [run_job(worker, {"image": b64(i), **job})["results"][0] for i in images]
    for image, result in zip(images, results, strict=True):
        expected = reference(image, threshold=threshold)
        ours = result["detections"]
        assert ours, "the threshold is set to find something in a random model"
        _same_detections(ours, expected)
        assert [d["score"] for d in ours] == sorted((d["score"] for d in ours), reverse=True)


def _same_detections(ours: list[dict], expected: list[dict]) -> None:
    """Same labels, scores within 1e-4 and boxes within the pipeline's truncation to whole
    pixels, matched in score order."""
    assert len(ours) == len(expected)
    pairs = zip(
        sorted(ours, key=lambda d: (d["label"], d["score"])),
        sorted(expected, key=lambda d: (d["label"], d["score"])),
        strict=True,
    )
    for mine, theirs in pairs:
        assert mine["label"] == theirs["label"]
        assert abs(mine["score"] - theirs["score"]) <= 1e-4
        for corner, truncated in zip(mine["box"].values(), theirs["box"].values(), strict=True):
            assert abs(corner - truncated) < 1.01  # int() truncates toward zero


@pytest.mark.parametrize(("arch", "tolerance"), [("yolos", 1e-6), ("detr", 5e-3)])
def test_images_of_different_sizes_batched_match_one_at_a_time(make_worker, arch, tolerance):
    """YOLOS batches only equal sizes: exact. DETR pads and masks mixed sizes as its processor
    does, and a CNN backbone still sees the padding at the image's edge: scores move by up to
    3.5e-3 here, where the padding is a third of a 64 px image (less at real sizes)."""
    worker = make_worker(arch, MAX_BATCH_SIZE=16, BATCH_WAIT_MS=200)
    images = [
        b64(photo(name, size=size))
        for name, size in [
            ("chelsea", (120, 80)),
            ("rocket", (80, 120)),
            ("coffee", (120, 80)),
            ("astronaut", (100, 100)),
        ]
    ]
    job = {"threshold": 0.1, "max_detections": 1000}
    together = run_job(worker, {"images": images, **job})["results"]
    alone = [run_job(worker, {"image": i, **job})["results"][0] for i in images]
    for a, b in zip(together, alone, strict=True):
        assert sorted(d["label"] for d in a["detections"]) == sorted(
            d["label"] for d in b["detections"]
        )
        for x, y in zip(
            sorted(d["score"] for d in a["detections"]),
            sorted(d["score"] for d in b["detections"]),
            strict=True,
        ):
            assert abs(x - y) <= tolerance


def test_boxes_are_in_the_original_images_pixels(make_worker):
    wide = run_job(
        make_worker("yolos"),
        {"image": b64(photo("chelsea", size=(400, 100))), "threshold": 0.0, "max_detections": 5},
    )
    detections = wide["results"][0]["detections"]
    assert len(detections) == 5  # max_detections bounds the list
    boxes = [d["box"] for d in detections]
    centres = [((b["xmin"] + b["xmax"]) / 2, (b["ymin"] + b["ymax"]) / 2) for b in boxes]
    # Normalised boxes scaled by (400, 100): centres fall in the image's own coordinate range.
    assert all(-400 <= x <= 800 and -100 <= y <= 200 for x, y in centres)
    assert any(x > 100 for x, _ in centres)  # scaled by the width, not by 100 px


def test_each_job_keeps_its_own_threshold_in_a_shared_batch(make_worker):
    worker = make_worker("yolos", MAX_BATCH_SIZE=16, BATCH_WAIT_MS=200)
    image = b64(photo("chelsea", size=(120, 80)))
    jobs = [{"image": image, "threshold": t, "max_detections": 1000} for t in (0.0, 0.9)]
    low, high = run_jobs(worker, jobs)
    low_scores = [d["score"] for d in low["results"][0]["detections"]]
    high_scores = [d["score"] for d in high["results"][0]["detections"]]
    assert all(s > 0.9 for s in high_scores)
    assert sorted(high_scores) == sorted(s for s in low_scores if s > 0.9)


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"max_detections": 0}, "max_detections"),
        ({"labels": ["cat"]}, 'does not apply to task "detect"'),
    ],
)
def test_detect_option_errors(make_worker, job, message):
    output = run_job(make_worker("yolos"), {"image": b64(photo("chelsea")), **job})
    assert set(output) == {"error", "error_code"}
    assert output["error_code"] == "invalid_input"
    assert message in output["error"]
