"""zero_shot_detect on tiny OWL-ViT and OWLv2 built offline, against transformers'
zero-shot-object-detection pipeline on real photos; batched equals one at a time."""

from __future__ import annotations

import pytest
from transformers import pipeline

from conftest import PHOTOS, assert_close, b64, photo, run_job, run_jobs

LABELS = ["a cat", "a red rocket", "a cup of coffee"]


def _same_detections(ours: list[dict], expected: list[dict]) -> None:
    """Same labels, scores within 1e-4 and boxes within 0.5 px (the pipeline truncates corners
    to whole pixels), matched in score order."""
    assert len(ours) == len(expected)
    expected = sorted(expected, key=lambda d: (d["label"], d["score"]))
    for mine, theirs in zip(
        sorted(ours, key=lambda d: (d["label"], d["score"])), expected, strict=True
    ):
        assert mine["label"] == theirs["label"]
        assert abs(mine["score"] - theirs["score"]) <= 1e-4
        for corner, truncated in zip(mine["box"].values(), theirs["box"].values(), strict=True):
            assert abs(corner - truncated) < 1.01  # int() truncates toward zero


@pytest.mark.parametrize("arch", ["owlvit", "owlv2"])
def test_detections_equal_the_transformers_pipeline_on_real_photos(make_worker, model_dir, arch):
    worker = make_worker(arch)
    assert worker.task.name == "zero_shot_detect"  # chosen from the checkpoint's architecture
    reference = pipeline("zero-shot-object-detection", model=str(model_dir(arch)))
    images = [photo(name, size=None).convert("RGB") for name in PHOTOS[:3]]
    job = {
        "images": [b64(i) for i in images],
        "labels": LABELS,
        "threshold": 0.6,
        "max_detections": 1000,
    }
    output = run_job(worker, job)
    for image, result in zip(images, output["results"], strict=True):
        expected = reference(image, candidate_labels=LABELS, threshold=0.6)
        ours = result["detections"]
        assert ours, "a threshold this low must find something in a random model"
        _same_detections(ours, expected)
        assert [d["score"] for d in ours] == sorted((d["score"] for d in ours), reverse=True)


def test_a_batch_of_jobs_equals_each_job_alone(make_worker):
    worker = make_worker("owlvit", MAX_BATCH_SIZE=16, BATCH_WAIT_MS=100)
    images = [
        b64(photo(name, size=size))
        for name, size in [("chelsea", (120, 80)), ("rocket", (80, 120)), ("coffee", (100, 100))]
    ]
    thresholds = (0.5, 0.6, 0.7)
    jobs = [
        {"image": i, "labels": LABELS, "threshold": t}
        for i, t in zip(images, thresholds, strict=True)
    ]
    jobs.append({"image": images[0], "labels": ["a dog"], "threshold": 0.5})
    together = run_jobs(worker, jobs)
    alone = [run_job(worker, job) for job in jobs]
    for a, b in zip(together, alone, strict=True):
        assert_close(a["results"], b["results"])
    assert all(d["score"] > 0.7 for d in together[2]["results"][0]["detections"])
    assert {d["label"] for d in together[3]["results"][0]["detections"]} <= {"a dog"}


def test_max_detections_bounds_the_list_best_first(make_worker):
    job = {"image": b64(photo("chelsea")), "labels": LABELS, "threshold": 0.0}
    detections = run_job(make_worker("owlvit"), {**job, "max_detections": 5})["results"][0]
    scores = [d["score"] for d in detections["detections"]]
    assert len(scores) == 5
    assert scores == sorted(scores, reverse=True)


def test_long_labels_are_truncated_to_the_text_towers_positions(make_worker):
    long_label = "a cat sitting on a couch next to a remote " * 5  # ~50 tokens, 16 positions
    output = run_job(
        make_worker("owlvit"),
        {"image": b64(photo("chelsea")), "labels": [long_label], "threshold": 0.0},
    )
    assert output["results"][0]["detections"][0]["label"] == long_label


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({}, '"labels" is required'),
        ({"labels": []}, "labels"),
        ({"labels": ["cat", "cat"]}, "duplicates"),
        ({"labels": ["cat"], "threshold": 2}, "threshold"),
        ({"labels": ["cat"], "top_k": 2}, 'does not apply to task "zero_shot_detect"'),
    ],
)
def test_bad_options_fail_the_job_with_one_sentence(make_worker, job, message):
    output = run_job(make_worker("owlvit"), {"image": b64(photo("chelsea")), **job})
    assert message in output["error"]
