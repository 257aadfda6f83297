"""depth on tiny Depth Anything and DPT models built offline, against transformers'
depth-estimation pipeline on real photos and 12 MP phone JPEGs: the map at the photo's size, as
a 16-bit PNG whose (min, max) give the model's values back."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoModelForDepthEstimation, pipeline

from conftest import PHOTOS, b64, phone_jpeg, photo, png_of, rotated_twin, run_job


def depth_of(result: dict) -> np.ndarray:
    """The map a result carries, back in the model's units."""
    depth = result["depth"]
    levels = np.asarray(png_of(depth["png"]), dtype=np.float64)
    assert levels.shape == (depth["height"], depth["width"])
    return depth["min"] + levels / 65535 * (depth["max"] - depth["min"])


def assert_same_depth(ours: np.ndarray, expected: np.ndarray) -> None:
    """Equal to the pipeline's map within the PNG's 16-bit step (plus float noise)."""
    assert ours.shape == expected.shape
    span = float(expected.max() - expected.min())
    assert span > 0
    assert np.abs(ours - expected).max() <= span / 65535 + 1e-4 * span


@pytest.mark.parametrize("arch", ["depth-anything", "dpt"])
def test_depth_maps_equal_the_pipeline_on_real_photos(make_worker, model_dir, arch):
    worker = make_worker(arch)
    assert worker.task.name == "depth"  # chosen from the checkpoint's architecture
    reference = pipeline("depth-estimation", model=str(model_dir(arch)))
    for name in PHOTOS:
        image = photo(name, size=None).convert("RGB")
        result = run_job(worker, {"image": b64(image)})["results"][0]
        expected = reference(image)["predicted_depth"].numpy()
        assert result["depth"]["min"] == pytest.approx(float(expected.min()), rel=1e-5)
        assert result["depth"]["max"] == pytest.approx(float(expected.max()), rel=1e-5)
        assert_same_depth(depth_of(result), expected)


def test_raw_is_the_models_own_output_as_float32(make_worker, model_dir):
    worker = make_worker("depth-anything")
    image = photo("rocket", size=None).convert("RGB")
    raw = run_job(worker, {"image": b64(image), "raw": True})["results"][0]["depth"]["raw"]
    values = np.frombuffer(base64.b64decode(raw["float32"]), dtype="<f4")
    model_map = values.reshape(raw["height"], raw["width"])
    processor = AutoImageProcessor.from_pretrained(model_dir("depth-anything"))
    model = AutoModelForDepthEstimation.from_pretrained(model_dir("depth-anything")).eval()
    with torch.inference_mode():
        expected = model(**processor(images=[image], return_tensors="pt")).predicted_depth[0]
    np.testing.assert_allclose(model_map, expected.numpy(), rtol=1e-5, atol=1e-12)


def test_photos_of_different_shapes_batched_equal_alone(make_worker):
    """Depth Anything keeps each photo's aspect ratio: equal shapes share a batch, others batch
    apart, and every map equals the one made alone."""
    worker = make_worker("depth-anything", MAX_BATCH_SIZE=8, BATCH_WAIT_MS=200)
    images = [
        b64(photo(name, size=size))
        for name, size in [("chelsea", (120, 80)), ("coffee", (120, 80)), ("rocket", (80, 120))]
    ]
    together = run_job(worker, {"images": images})["results"]
    for image, batched in zip(images, together, strict=True):
        alone = run_job(worker, {"image": image})["results"][0]
        np.testing.assert_allclose(
            depth_of(batched),
            depth_of(alone),
            rtol=1e-4,
            atol=1e-4 * (alone["depth"]["max"] - alone["depth"]["min"]),
        )


@pytest.mark.parametrize("twin", [False, True])
def test_phone_jpegs_get_maps_at_the_photos_upright_size(make_worker, model_dir, twin):
    """The 12 MP JPEG (and its EXIF-6 twin, stored turned) comes back at 4032x3024 upright;
    decoded in full (JPEG_DRAFT=false) the map is the pipeline's."""
    data = rotated_twin("chelsea") if twin else phone_jpeg("chelsea")
    # A 12 MP map can be 32 MB inline: a limit it fits (see test_output_size.py).
    worker = make_worker("depth-anything", JPEG_DRAFT="false", MAX_OUTPUT_MB=40)
    result = run_job(worker, {"image": b64(data)})["results"][0]
    assert (result["depth"]["width"], result["depth"]["height"]) == (4032, 3024)
    opened = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    expected = pipeline("depth-estimation", model=str(model_dir("depth-anything")))(opened)
    assert_same_depth(depth_of(result), expected["predicted_depth"].numpy())
    drafted = run_job(make_worker("depth-anything", MAX_OUTPUT_MB=40), {"image": b64(data)})
    drafted = drafted["results"][0]
    assert (drafted["depth"]["width"], drafted["depth"]["height"]) == (4032, 3024)


def test_a_job_over_the_payload_limit_fails_and_stops_keeping_maps(make_worker):
    """Past MAX_OUTPUT_MB the job will fail: later maps are measured and dropped, not held.
    (Each 150x110 map fits alone, so none is refused before the model runs.)"""
    from vision_worker.errors import JobError
    from vision_worker.outputs import OutputMeter

    worker = make_worker("depth-anything", MAX_OUTPUT_MB=0.05)
    images = [b64(photo("chelsea", size=(150, 110)))] * 8
    output = run_job(worker, {"images": images})
    assert output["error_code"] == "too_large"
    assert "depth maps" in output["error"]
    assert "BUCKET_ENDPOINT_URL" in output["error"]
    meter = OutputMeter(worker.settings)
    big = {"depth": {"png": "x" * 40_000}}
    assert meter.admit(big) is big
    assert meter.admit(big) == {}  # 80 KB > 50 KB: not kept
    with pytest.raises(JobError, match=r"over the 0\.05 MB"):
        meter.check({"results": [big, {}]})
