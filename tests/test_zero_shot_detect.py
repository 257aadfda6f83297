"""zero_shot_detect on tiny OWL-ViT and OWLv2 built offline, against transformers'
zero-shot-object-detection pipeline on real photos; batched equals one at a time."""

from __future__ import annotations

import pytest
from transformers import pipeline

from conftest import PHOTOS, assert_close, b64, photo, run_job, run_jobs
from vision_worker.tasks.zero_shot_detect import ZeroShotDetectTask

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
        "threshold": 0.5,
        "max_detections": 1000,
    }
    output = run_job(worker, job)
    for image, result in zip(images, output["results"], strict=True):
        expected = reference(image, candidate_labels=LABELS, threshold=0.5)
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


def test_owl_keeps_the_pipelines_default_threshold_and_refuses_text_threshold(make_worker):
    worker = make_worker("owlvit")
    job = {"image": b64(photo("chelsea")), "labels": LABELS, "max_detections": 1000}
    unset = run_job(worker, job)["results"]
    assert unset == run_job(worker, {**job, "threshold": 0.1})["results"]
    assert unset != run_job(worker, {**job, "threshold": 0.6})["results"]
    refused = run_job(worker, {**job, "text_threshold": 0.3})
    assert refused["error"] == (
        'option "text_threshold" applies to Grounding DINO only: OWL-ViT and OWLv2 score each '
        'label on its own, so "threshold" alone decides'
    )


# --- Grounding DINO and MM Grounding DINO: one prompt of all labels, the model card's recipe ---
GROUNDING_ARCHS = ("grounding-dino", "mm-grounding-dino")
# Mixed case: the prompt is lower-cased, the labels that come back are the job's own.
PROMPT_LABELS = ["Cat", "a red rocket", "Remote"]


@pytest.fixture(scope="module")
def grounding_recipe(model_dir):
    """The model card's recipe, run directly with transformers: the labels as one batch entry
    of the processor's text, `post_process_grounded_object_detection` on the outputs."""
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    loaded: dict = {}

    def detect(arch, image, labels, threshold=0.25, text_threshold=0.25) -> list[dict]:
        if arch not in loaded:
            path = model_dir(arch)
            model = AutoModelForZeroShotObjectDetection.from_pretrained(path).eval()
            loaded[arch] = AutoProcessor.from_pretrained(path), model
        processor, model = loaded[arch]
        inputs = processor(images=image, text=[labels], return_tensors="pt")
        with torch.inference_mode():
            outputs = model(**inputs)
        [result] = processor.post_process_grounded_object_detection(
            outputs,
            inputs.input_ids,
            threshold=threshold,
            text_threshold=text_threshold,
            target_sizes=[image.size[::-1]],
        )
        # What the worker promises on top: a phrase that is exactly one (lower-cased) label
        # comes back as the job spelled that label; any other phrase as found.
        spelled = {label.lower(): label for label in labels}
        return [
            {
                "label": spelled.get(phrase, phrase),
                "score": float(score),
                "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box.tolist(), strict=True)),
            }
            for phrase, score, box in zip(
                result["text_labels"], result["scores"], result["boxes"], strict=True
            )
        ]

    return detect


def _same_grounded(ours: list[dict], expected: list[dict], score_tol=1e-5, box_tol=0.01) -> None:
    """Each detection has its own twin in the recipe's: the same label, the score within
    `score_tol`, every corner within `box_tol` pixels (results keep two decimals)."""
    assert len(ours) == len(expected)
    unmatched = list(expected)
    for mine in ours:
        twin = next(
            (
                t
                for t in unmatched
                if t["label"] == mine["label"]
                and abs(t["score"] - mine["score"]) <= score_tol
                and all(
                    abs(a - b) <= box_tol
                    for a, b in zip(mine["box"].values(), t["box"].values(), strict=True)
                )
            ),
            None,
        )
        assert twin is not None, f"no recipe detection matches {mine}"
        unmatched.remove(twin)


@pytest.mark.parametrize("arch", GROUNDING_ARCHS)
def test_grounding_dino_equals_the_model_card_recipe_on_real_photos(
    make_worker, grounding_recipe, arch
):
    worker = make_worker(arch)
    assert worker.task.name == "zero_shot_detect"  # chosen from the checkpoint's architecture
    images = [photo(name, size=None).convert("RGB") for name in PHOTOS]  # their own sizes
    job = {"images": [b64(i) for i in images], "labels": PROMPT_LABELS, "max_detections": 1000}
    results = run_job(worker, job)["results"]
    for image, result in zip(images, results, strict=True):
        ours = result["detections"]
        assert ours, "the default threshold (0.25) keeps boxes of this tiny model"
        _same_grounded(ours, grounding_recipe(arch, image, PROMPT_LABELS))
        assert [d["score"] for d in ours] == sorted((d["score"] for d in ours), reverse=True)
        for d in ours:  # in the photo's pixels (DETR-style boxes may overhang it a little)
            assert -0.1 * image.width < d["box"]["xmin"] < d["box"]["xmax"] < 1.1 * image.width


@pytest.mark.parametrize("arch", GROUNDING_ARCHS)
def test_text_threshold_names_boxes_as_the_recipe_does(make_worker, grounding_recipe, arch):
    """A higher text threshold keeps fewer prompt words per box: the same boxes and scores, other
    names. A name that is exactly one label is the job's label as spelled ("Remote"), any other
    phrase is the recipe's own (part of a label, words of several, "" when none clears it)."""
    worker = make_worker(arch)
    images = [photo(name, size=None).convert("RGB") for name in ("chelsea", "rocket")]
    named: dict[float, list[list[str]]] = {}
    for text_threshold in (0.25, 0.75, 0.9):
        job = {
            "images": [b64(i) for i in images],
            "labels": PROMPT_LABELS,
            "threshold": 0.7,
            "text_threshold": text_threshold,
        }
        results = run_job(worker, job)["results"]
        for image, result in zip(images, results, strict=True):
            expected = grounding_recipe(arch, image, PROMPT_LABELS, 0.7, text_threshold)
            _same_grounded(result["detections"], expected)
        named[text_threshold] = [[d["label"] for d in r["detections"]] for r in results]
    low, high = named[0.25], named[0.9]
    assert [len(n) for n in low] == [len(n) for n in high]  # the threshold keeps the same boxes
    assert low != high
    found = {label for names in named.values() for image in names for label in image}
    assert found & set(PROMPT_LABELS), "some box is named by exactly one label"
    assert found - set(PROMPT_LABELS), "and some by another phrase of the prompt"
    assert not found & {label.lower() for label in PROMPT_LABELS} - set(PROMPT_LABELS)


def _opened(data: bytes):
    """The bytes as the model card opens a photo: EXIF rotation applied."""
    import io

    from PIL import Image, ImageOps

    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def test_grounding_dino_boxes_on_phone_jpegs_are_in_the_upright_photos_pixels(
    make_worker, grounding_recipe
):
    """A 12 MP JPEG and its EXIF-6 twin (stored portrait, shown landscape): boxes come back in
    the upright 4032x3024 photo's pixels, where the recipe on the rotated photo puts them.
    Decoded in full, as the default decodes 12 MP for the real checkpoints' 800 px input (next
    test); the tiny model's 64 px input would be drafted at 1/4, and its random two-stage query
    selection picks other boxes at any change of a pixel."""
    from conftest import PHONE, phone_jpeg, rotated_twin

    worker = make_worker("grounding-dino", JPEG_DRAFT="false")
    for data in (phone_jpeg("rocket"), rotated_twin("rocket")):
        job = {"image": b64(data), "labels": PROMPT_LABELS, "threshold": 0.7}
        ours = run_job(worker, job)["results"][0]["detections"]
        upright = _opened(data)
        assert upright.size == PHONE
        assert ours
        _same_grounded(ours, grounding_recipe("grounding-dino", upright, PROMPT_LABELS, 0.7))


def test_the_default_decode_keeps_12_mp_whole_for_grounding_dinos_800_px_input():
    from conftest import PHONE, phone_jpeg, rotated_twin
    from vision_worker.dev.tiny_models import processor_class
    from vision_worker.images import ImageLimits, draft_for, finish_decode, open_image

    task = ZeroShotDetectTask.__new__(ZeroShotDetectTask)
    task.image_processor = processor_class("GroundingDinoImageProcessor")()  # the real sizes
    assert task.decode_target(None) == {"shortest_edge": 800, "longest_edge": 1333}
    for data, stored in ((phone_jpeg("coffee"), PHONE), (rotated_twin("coffee"), PHONE[::-1])):
        image = open_image(data, ImageLimits(50_000_000, 50_000_000))
        draft_for(image, task.decode_target(None), "true")
        assert image.size == stored  # no draft: 3024 px is under 8 per model pixel
        assert finish_decode(image).size == PHONE


def test_grounding_dino_batches_jobs_with_the_same_labels_and_equals_each_alone(
    make_worker, monkeypatch
):
    worker = make_worker("grounding-dino", MAX_BATCH_SIZE=16, BATCH_WAIT_MS=2000)
    same_shape = [b64(photo(name, size=(120, 80))) for name in ("chelsea", "rocket", "coffee")]
    jobs = [
        {"image": same_shape[0], "labels": PROMPT_LABELS, "threshold": 0.6},
        {"image": same_shape[1], "labels": PROMPT_LABELS, "threshold": 0.7, "text_threshold": 0.6},
        {"images": [same_shape[2], same_shape[0]], "labels": PROMPT_LABELS},
        {"image": same_shape[0], "labels": ["a dog", "remote"]},  # other labels: own pass
        {"image": b64(photo("astronaut", size=(80, 80))), "labels": PROMPT_LABELS},  # other size
    ]
    passes: list[tuple[int, tuple[int, ...]]] = []
    forward = worker.task.model.forward

    def recording(**inputs):
        passes.append((len(inputs["pixel_values"]), tuple(inputs["input_ids"][0].tolist())))
        return forward(**inputs)

    monkeypatch.setattr(worker.task.model, "forward", recording)
    together = run_jobs(worker, jobs)
    shared = sorted(size for size, _ in passes)
    prompts = {ids for _, ids in passes}
    alone = [run_job(worker, job) for job in jobs]
    for a, b in zip(together, alone, strict=True):
        assert "error" not in a, a
        assert_close(a["results"], b["results"])
    # Four images of three jobs asked the same labels at one size: one pass; the others alone.
    assert shared == [1, 1, 4]
    assert len(prompts) == 2
    assert all(d["score"] > 0.7 for d in together[1]["results"][0]["detections"])
    assert {d["label"] for d in together[3]["results"][0]["detections"]} != {
        d["label"] for d in together[0]["results"][0]["detections"]
    }


def test_grounding_dino_post_processes_off_the_model_thread(make_worker, monkeypatch):
    import threading

    worker = make_worker("grounding-dino")
    original = worker.task.processor.post_process_grounded_object_detection
    threads: list[str] = []

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(worker.task.processor, "post_process_grounded_object_detection", recording)
    output = run_job(worker, {"image": b64(photo("chelsea")), "labels": ["a cat"]})
    assert "error" not in output["results"][0], output
    assert threads
    assert all(name.startswith("split") for name in threads), threads


def test_a_prompt_longer_than_the_text_tower_fails_the_job(make_worker):
    """Grounding DINO reads 256 prompt tokens and would silently cut the rest (whole labels at
    the end, never found): a longer prompt fails with one sentence instead."""
    worker = make_worker("grounding-dino")
    labels = [f"a cat sitting on a couch next to a remote {i}" for i in range(25)]  # ~13 tokens
    output = run_job(worker, {"image": b64(photo("chelsea")), "labels": labels})
    assert output["error"] == (
        "the labels make a prompt of 317 tokens and this model reads at most 256: send fewer "
        "or shorter labels"
    )
    assert output["error_code"] == "too_large"
    fits = run_job(worker, {"image": b64(photo("chelsea")), "labels": labels[:20]})  # 252
    assert "error" not in fits, fits


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"labels": ["a cat. a dog"]}, 'label 1 contains "." or "?", which end a phrase'),
        ({"labels": ["cat", "why?"]}, 'label 2 contains "." or "?"'),
        ({"labels": ["Cat", "a dog", "cat "]}, "labels 1 and 3 are the same words to this model"),
        ({"labels": ["cat", "\u200b"]}, "label 2 has no word this model's tokenizer reads"),
        ({"labels": ["cat"], "text_threshold": 2}, "text_threshold"),
        ({"labels": ["cat"], "text_threshold": "0.3"}, "text_threshold"),
        ({"labels": ["cat"], "threshold": -1}, "threshold"),
        ({"labels": ["cat", "cat"]}, "duplicates"),
    ],
)
def test_bad_grounding_options_fail_the_job_with_one_sentence(make_worker, job, message):
    output = run_job(make_worker("grounding-dino"), {"image": b64(photo("chelsea")), **job})
    assert message in output["error"]
