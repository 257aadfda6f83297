"""detect on a tiny YOLOS built offline, against transformers' object-detection pipeline on real
photos; images of different sizes in one job; thresholds and limits per job."""

from __future__ import annotations

import pytest
from transformers import pipeline

from conftest import PHOTOS, b64, photo, run_job, run_jobs


def real_photos() -> list:
    return [photo(name, size=None).convert("RGB") for name in PHOTOS]


def _key(d: dict) -> tuple:
    return (d["label"], round(d["score"], 4))


def test_detections_equal_the_transformers_pipeline_on_real_photos(make_worker, model_dir):
    worker = make_worker("yolos")
    assert worker.task.name == "detect"  # chosen from the checkpoint's architecture
    reference = pipeline("object-detection", model=str(model_dir("yolos")))
    images = real_photos()
    output = run_job(worker, {"images": [b64(i) for i in images], "threshold": 0.2,
                              "max_detections": 1000})  # fmt: skip
    for image, result in zip(images, output["results"], strict=True):
        expected = reference(image, threshold=0.2)
        ours = result["detections"]
        assert len(ours) == len(expected)
        assert sorted(map(_key, ours)) == sorted(map(_key, expected))
        # The pipeline truncates corners to whole pixels; ours keep two decimals.
        truncated = sorted((d["label"], *(int(v) for v in d["box"].values())) for d in ours)
        assert truncated == sorted((d["label"], *d["box"].values()) for d in expected)
        assert [d["score"] for d in ours] == sorted((d["score"] for d in ours), reverse=True)


def test_images_of_different_sizes_batched_equal_one_at_a_time(make_worker):
    worker = make_worker("yolos", MAX_BATCH_SIZE=16, BATCH_WAIT_MS=200)
    images = [b64(photo(name, size=size)) for name, size in
              [("chelsea", (120, 80)), ("rocket", (80, 120)), ("coffee", (120, 80)),
               ("astronaut", (100, 100))]]  # fmt: skip
    job = {"threshold": 0.1}
    together = run_job(worker, {"images": images, **job})["results"]
    alone = [r["results"][0] for r in run_jobs(worker, [{"image": i, **job} for i in images])]
    for a, b in zip(together, alone, strict=True):
        assert sorted(map(_key, a["detections"])) == sorted(map(_key, b["detections"]))


def test_boxes_are_in_the_original_images_pixels(make_worker):
    wide = run_job(make_worker("yolos"), {"image": b64(photo("chelsea", size=(400, 100))),
                                          "threshold": 0.0, "max_detections": 5})  # fmt: skip
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
    assert set(output) == {"error"}
    assert message in output["error"]
