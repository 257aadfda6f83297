"""mask on a tiny SAM built offline, against its model card's recipe (processor with the
prompts, the model, post_process_masks): the same masks and IoU scores, in the photo's pixels,
one image embedding for all of a job's prompts, prompts checked; automatic masks against the
mask-generation pipeline."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from transformers import AutoModelForMaskGeneration, AutoProcessor, pipeline

from conftest import b64, phone_jpeg, photo, rotated_twin, run_job
from test_segment import decoded
from vision_worker.tasks import mask
from vision_worker.tasks.mask import MaskTask


def card_recipe(model_dir, image: Image.Image, **prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks (prompts, 3, H, W), IoU scores (prompts, 3)) as the model cards compute them: SAM
    and SAM-HQ's post-processing takes the resized size (to remove the padding), SAM 2's
    processor post-processes with the original size alone."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForMaskGeneration.from_pretrained(model_dir).eval()
    inputs = processor(images=image, return_tensors="pt", **prompts)
    with torch.no_grad():
        outputs = model(**inputs)
    if "reshaped_input_sizes" in inputs:
        masks = processor.image_processor.post_process_masks(
            outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
    else:
        masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])
    return masks[0], outputs.iou_scores[0]


def assert_same_masks(result: dict, masks: torch.Tensor, scores: torch.Tensor) -> None:
    assert len(result["prompts"]) == masks.shape[0]
    for prompt, expected_masks, expected_scores in zip(
        result["prompts"], masks, scores, strict=True
    ):
        assert [m["score"] for m in prompt["masks"]] == pytest.approx(
            expected_scores.tolist(), abs=1e-5
        )
        for mine, theirs in zip(prompt["masks"], expected_masks, strict=True):
            np.testing.assert_array_equal(decoded(mine["mask"]), theirs.numpy())


# SAM, SAM-HQ (SAM's decoder with a high-quality token that reads the ViT's early layers) and
# SAM 2 (a Hiera encoder's feature pyramid; the photo resized to a square, not padded).
ARCHS = ["sam", "sam-hq", "sam2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_point_prompts_equal_the_model_cards_recipe(make_worker, model_dir, arch):
    worker = make_worker(arch)
    assert worker.task.name == "mask"
    image = photo("chelsea", size=None).convert("RGB")
    points = [[[200.0, 150.0]], [[300.0, 100.0]], [[50.0, 250.0]]]
    result = run_job(worker, {"image": b64(image), "prompts": [{"points": p} for p in points]})
    masks, scores = card_recipe(
        model_dir(arch), image, input_points=[points], input_labels=[[[1], [1], [1]]]
    )
    assert_same_masks(result["results"][0], masks, scores)
    assert decoded(result["results"][0]["prompts"][0]["masks"][0]["mask"]).shape == (300, 451)


@pytest.mark.parametrize("arch", ARCHS)
def test_boxes_with_points_and_background_points_equal_the_recipe(make_worker, model_dir, arch):
    worker = make_worker(arch)
    image = photo("astronaut", size=None).convert("RGB")
    prompts = [
        {"box": [40, 30, 300, 400], "points": [[150, 200], [60, 60]], "labels": [1, 0]},
        {"box": [250, 100, 500, 500], "points": [[380, 300], [260, 120]], "labels": [1, 0]},
    ]
    result = run_job(worker, {"image": b64(image), "prompts": prompts})
    masks, scores = card_recipe(
        model_dir(arch),
        image,
        input_boxes=[[p["box"] for p in prompts]],
        input_points=[[p["points"] for p in prompts]],
        input_labels=[[p["labels"] for p in prompts]],
    )
    assert_same_masks(result["results"][0], masks, scores)


def test_one_best_mask_per_prompt_and_batched_images_equal_alone(make_worker):
    worker = make_worker("sam", MAX_BATCH_SIZE=4, BATCH_WAIT_MS=200)
    images = [b64(photo(n, size=(120, 90))) for n in ("chelsea", "coffee", "rocket")]
    job = {"prompts": [{"points": [[60, 45]]}, {"points": [[10, 10], [100, 80]]}]}
    together = run_job(worker, {"images": images, **job, "multimask_output": False})["results"]
    for image, batched in zip(images, together, strict=True):
        assert [len(p["masks"]) for p in batched["prompts"]] == [1, 1]
        alone = run_job(worker, {"image": image, **job, "multimask_output": False})["results"][0]
        for a, b in zip(batched["prompts"], alone["prompts"], strict=True):
            assert a["masks"][0]["score"] == pytest.approx(b["masks"][0]["score"], abs=1e-5)
            agree = decoded(a["masks"][0]["mask"]) == decoded(b["masks"][0]["mask"])
            assert agree.mean() > 0.999


def test_bad_prompts_fail_with_what_is_wrong(make_worker):
    worker = make_worker("sam", MAX_PROMPTS=2)
    image = b64(photo("chelsea", size=(120, 90)))
    cases = [
        ({"prompts": [{}]}, 'a prompt needs "points", a "box" or both'),
        ({"prompts": [{"points": [[1, 1]], "labels": [2]}]}, "each label is 1 (foreground) or 0"),
        ({"prompts": [{"points": [[1, 1]]}] * 3}, "too many prompts: 3, at most 2"),
        ({"prompts": [{"box": [0, 0, 5, 5]}, {"points": [[1, 1]]}]}, 'give every prompt a "box"'),
    ]
    for job, message in cases:
        output = run_job(worker, {"image": image, **job})
        assert message in output["error"], output
    outside = run_job(worker, {"image": image, "prompts": [{"points": [[500, 10]]}]})
    error = outside["results"][0]["error"]
    assert "prompt 0 has (500.0, 10.0) outside the 120x90 photo" in error["message"]


@pytest.mark.parametrize("twin", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_phone_jpegs_take_prompts_and_give_masks_in_the_upright_photos_pixels(
    make_worker, model_dir, arch, twin
):
    data = rotated_twin("chelsea") if twin else phone_jpeg("chelsea")
    opened = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    points = [[[2000.0, 1500.0]], [[600.0, 2500.0]]]
    result = run_job(
        make_worker(arch), {"image": b64(data), "prompts": [{"points": p} for p in points]}
    )
    masks, scores = card_recipe(
        model_dir(arch), opened, input_points=[points], input_labels=[[[1], [1]]]
    )
    assert_same_masks(result["results"][0], masks, scores)
    assert masks.shape[-2:] == (3024, 4032)


def test_a_prompts_masks_do_not_depend_on_the_jobs_other_prompts(make_worker):
    worker = make_worker("sam")
    image = b64(photo("chelsea", size=(120, 90)))
    alone = run_job(worker, {"image": image, "prompts": [{"points": [[60, 45]]}]})
    mixed = {"points": [[10, 10], [100, 80], [30, 70]], "labels": [1, 0, 1]}
    together = run_job(worker, {"image": image, "prompts": [{"points": [[60, 45]]}, mixed]})
    first, again = alone["results"][0]["prompts"][0], together["results"][0]["prompts"][0]
    assert [m["score"] for m in again["masks"]] == pytest.approx(
        [m["score"] for m in first["masks"]], abs=1e-6
    )
    for a, b in zip(first["masks"], again["masks"], strict=True):
        np.testing.assert_array_equal(decoded(a["mask"]), decoded(b["mask"]))


# --- automatic masks: the mask-generation pipeline's point grid --------------------------------
# The tiny SAM's random masks are neither confident nor stable: filters low enough to keep some.
EVERY_MASK = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "crops_nms_thresh": 1.0}
AUTOMATIC = [
    EVERY_MASK,  # every grid mask not touching a crop edge, in score order
    {"pred_iou_thresh": 0.0001, "stability_score_thresh": 0.0},  # IoU filter, default NMS
    # The stability filter: stable at a lower logit cutoff.
    {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.5, "mask_threshold": -1.0},
]


def assert_same_automatic_masks(ours: list[dict], theirs: dict) -> None:
    assert len(ours) == len(theirs["masks"])
    assert [m["score"] for m in ours] == pytest.approx(theirs["scores"].tolist(), abs=1e-6)
    for mine, expected in zip(ours, theirs["masks"], strict=True):
        np.testing.assert_array_equal(decoded(mine["mask"]), np.asarray(expected))


@pytest.mark.parametrize("thresholds", AUTOMATIC)
def test_automatic_masks_equal_the_mask_generation_pipeline(make_worker, model_dir, thresholds):
    worker = make_worker("sam")
    reference = pipeline("mask-generation", model=str(model_dir("sam")))
    found = 0
    for name in ("chelsea", "astronaut"):
        image = photo(name, size=None).convert("RGB")
        job = {"image": b64(image), "points_per_side": 4, "points_per_batch": 5, **thresholds}
        ours = run_job(worker, job)["results"][0]["masks"]
        theirs = reference(image, points_per_crop=4, points_per_batch=5, **thresholds)
        assert_same_automatic_masks(ours, theirs)
        found += len(ours)
    assert found >= 2


def test_automatic_masks_of_a_phone_jpeg_are_in_the_upright_photos_pixels(make_worker, model_dir):
    data = rotated_twin("chelsea")
    opened = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    job = {"image": b64(data), "points_per_side": 2, **EVERY_MASK}
    ours = run_job(make_worker("sam"), job)["results"][0]["masks"]
    reference = pipeline("mask-generation", model=str(model_dir("sam")))
    assert_same_automatic_masks(ours, reference(opened, points_per_crop=2, **EVERY_MASK))
    assert decoded(ours[0]["mask"]).shape == (3024, 4032)


def test_automatic_masks_batched_equal_alone_and_come_as_png(make_worker):
    worker = make_worker("sam", MAX_BATCH_SIZE=4, BATCH_WAIT_MS=200)
    images = [b64(photo(n, size=(120, 90))) for n in ("chelsea", "coffee", "rocket")]
    job = {"points_per_side": 3, **EVERY_MASK}
    together = run_job(worker, {"images": images, **job})["results"]
    for image, batched in zip(images, together, strict=True):
        alone = run_job(worker, {"image": image, **job, "mask_format": "png"})["results"][0]
        assert len(batched["masks"]) == len(alone["masks"]) > 0
        for a, b in zip(batched["masks"], alone["masks"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            assert a["box"] == b["box"]
            assert (decoded(a["mask"]) == decoded(b["mask"])).mean() > 0.999


def test_automatic_masks_are_bounded_and_exclusive_of_prompts(make_worker):
    worker = make_worker("sam")
    image = b64(photo("chelsea", size=(120, 90)))
    too_many = run_job(worker, {"image": image, "points_per_side": 33})
    assert too_many["error_code"] == "invalid_input"
    assert "points_per_side" in too_many["error"]
    assert "less than or equal to 32" in too_many["error"]
    both = {"image": image, "points_per_side": 2, "prompts": [{"points": [[1, 1]]}]}
    for job in (both, {"image": image}):
        output = run_job(worker, job)
        assert output["error_code"] == "invalid_input"
        assert 'give "prompts", or "points_per_side" for automatic masks' in output["error"]


def test_sam_hq_automatic_masks_equal_the_mask_generation_pipeline(make_worker, model_dir):
    image = photo("coffee", size=None).convert("RGB")
    job = {"image": b64(image), "points_per_side": 4, **EVERY_MASK}
    ours = run_job(make_worker("sam-hq"), job)["results"][0]["masks"]
    reference = pipeline("mask-generation", model=str(model_dir("sam-hq")))
    assert_same_automatic_masks(ours, reference(image, points_per_crop=4, **EVERY_MASK))
    assert ours


def test_sam2_refuses_automatic_masks_and_batches_equal_alone(make_worker):
    worker = make_worker("sam2", MAX_BATCH_SIZE=4, BATCH_WAIT_MS=200)
    image = b64(photo("chelsea", size=(120, 90)))
    refused = run_job(worker, {"image": image, "points_per_side": 4})
    assert refused["error_code"] == "invalid_input"
    assert "needs SAM or SAM-HQ" in refused["error"]
    images = [image, b64(photo("rocket", size=(90, 120)))]
    job = {"prompts": [{"points": [[60, 45]]}, {"points": [[10, 20], [70, 80]], "labels": [1, 0]}]}
    together = run_job(worker, {"images": images, **job})["results"]
    for one, batched in zip(images, together, strict=True):
        alone = run_job(worker, {"image": one, **job})["results"][0]
        for a, b in zip(batched["prompts"], alone["prompts"], strict=True):
            for x, y in zip(a["masks"], b["masks"], strict=True):
                assert x["score"] == pytest.approx(y["score"], abs=1e-5)
                assert (decoded(x["mask"]) == decoded(y["mask"])).mean() > 0.999


# The worst legal automatic job: every mask of the largest grid passes every filter and NMS.
WORST_AUTOMATIC = {"points_per_side": 32, **EVERY_MASK}


def held_bytes(value) -> int:
    """Bytes a stage's output keeps alive: its tensors' and arrays' whole buffers (a view holds
    all of what it views)."""
    if isinstance(value, dict):
        return sum(held_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(held_bytes(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if isinstance(value, np.ndarray):
        return value.nbytes if value.base is None else held_bytes(value.base)
    return 0


def test_the_worst_automatic_job_holds_one_images_masks_per_batch_and_64_mb_after_split(
    make_worker, model_dir, monkeypatch
):
    """Low-resolution masks (3 per grid point; SAM's are 256 x 256 float32, 805 MB for a 32 x 32
    grid) wait for split one image at a time, whatever MAX_BATCH_SIZE; what waits for encode is
    the chosen masks' runs, at most 64 MiB an image, all of it reserved before encode."""
    batches, held, reserved = [], [], []
    split, result_memory = MaskTask.split, MaskTask.result_memory

    def measured_split(self, raw, items, options):
        batches.append((len(items), held_bytes(raw), raw[0]["automatic"].shape))
        outputs = split(self, raw, items, options)
        held.extend(held_bytes(output) for output in outputs)
        return outputs

    def measured_memory(self, output, meta, options):
        reserved.append((held_bytes(output), result_memory(self, output, meta, options)))
        return reserved[-1][1]

    monkeypatch.setattr(MaskTask, "split", measured_split)
    monkeypatch.setattr(MaskTask, "result_memory", measured_memory)
    worker = make_worker("sam", MAX_BATCH_SIZE=4, BATCH_WAIT_MS=200, MAX_OUTPUT_MB=100)
    images = [photo(n, size=(120, 90)) for n in ("chelsea", "coffee", "rocket")]
    results = run_job(worker, {"images": [b64(i) for i in images], **WORST_AUTOMATIC})["results"]

    assert [len(r["masks"]) for r in results] == [3 * 32**2] * 3  # none filtered, none edged
    for count, raw_bytes, (masks, height, width) in batches:
        assert count == 1  # one image a batch
        assert masks == 3 * 32**2  # its masks, every one
        assert raw_bytes <= masks * height * width * 4 + 64 * 1024  # and their scores
    assert len(batches) == 3
    assert max(held) <= mask._AUTOMATIC_HELD_BYTES == 64 * 1024 * 1024
    assert max(held) < 20 * 1024 * 1024  # these photos': ~16 MB of runs each
    assert len(reserved) == 3
    assert all(kept <= memory for kept, memory in reserved)  # encode reserves what it holds
    reference = pipeline("mask-generation", model=str(model_dir("sam")))
    theirs = reference(images[0], points_per_crop=32, **EVERY_MASK)
    assert_same_automatic_masks(results[0]["masks"], theirs)


def test_automatic_masks_over_what_an_image_may_hold_fail_alone_as_too_large(
    make_worker, monkeypatch
):
    worker = make_worker("sam")
    monkeypatch.setattr(mask, "_AUTOMATIC_HELD_BYTES", 4096)
    images = [b64(photo("chelsea", size=(120, 90)))] * 2
    results = run_job(worker, {"images": images, "points_per_side": 4, **EVERY_MASK})["results"]
    for result in results:
        assert result["error"]["code"] == "too_large"
        assert 'raise "pred_iou_thresh" or "stability_score_thresh"' in result["error"]["message"]
