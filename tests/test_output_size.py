"""Dense outputs sized before compute: a depth map, an upscale or a cut-out that, returned
inline, cannot fit MAX_OUTPUT_MB fails that image alone with `too_large` and the fix, before
the model runs; the bound it is judged by holds for the worst pixels there are."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForDepthEstimation

from conftest import b64, phone_jpeg, photo, png_of, run_job
from test_depth import depth_of
from vision_worker.errors import ImageError
from vision_worker.outputs import png_bytes
from vision_worker.tasks.dense import (
    OutputLimits,
    check_inline_size,
    depth_png,
    largest_fitting_side,
    png_bound,
)


def batches_run(worker) -> int:
    return sum(worker.batcher.batch_sizes.values())


@pytest.mark.parametrize(
    ("height", "width", "channels"), [(97, 131, 0), (600, 700, 0), (1000, 1000, 3), (1, 1, 3)]
)
def test_the_png_bound_holds_for_noise_which_deflate_cannot_shrink(height, width, channels):
    rng = np.random.default_rng(height)
    if channels:
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        encoded = len(png_bytes(Image.fromarray(pixels)))
        bound = png_bound(height, width, channels)
    else:  # a 16-bit depth map
        png, _, _ = depth_png(rng.random((height, width), dtype=np.float32))
        encoded = len(png_bytes(png.image))
        bound = png_bound(height, width, 2)
    assert encoded <= bound
    assert bound < 1.02 * encoded + 1100  # a bound, not a guess several times too large


def test_a_12_mp_depth_map_fails_before_the_model_naming_the_max_side_that_fits(make_worker):
    """Default MAX_OUTPUT_MB=10, no bucket: the 4032x3024 map could be 32 MB inline."""
    worker = make_worker("depth-anything")
    small = b64(photo("chelsea", size=(120, 90)))
    before = batches_run(worker)
    results = run_job(worker, {"images": [b64(phone_jpeg("chelsea")), small]})["results"]
    error = results[0]["error"]
    assert error["code"] == "too_large"
    assert error["message"] == (
        "image 0: a 4032x3024 depth map (16-bit PNG) can be 32.6 MB inline, over "
        'MAX_OUTPUT_MB=10 (RunPod\'s payload limit): set "max_side" to 2234 or less, set '
        "BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY so output "
        "images upload and come back as URLs, or raise MAX_OUTPUT_MB"
    )
    assert (results[1]["depth"]["width"], results[1]["depth"]["height"]) == (120, 90)
    assert batches_run(worker) - before == 1  # the small photo's: the large one never ran


def test_max_side_makes_the_post_processings_smaller_map_and_fits(make_worker, model_dir):
    """The named max_side fits; the map is post_process_depth_estimation's at that size."""
    worker = make_worker("depth-anything", JPEG_DRAFT="false")
    data = phone_jpeg("chelsea")
    output = run_job(worker, {"image": b64(data), "max_side": 2234})
    depth = output["results"][0]["depth"]
    assert (depth["width"], depth["height"]) == (2234, 1676)
    assert len(json.dumps(output)) <= 10_000_000
    processor = AutoImageProcessor.from_pretrained(model_dir("depth-anything"))
    model = AutoModelForDepthEstimation.from_pretrained(model_dir("depth-anything")).eval()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    with torch.inference_mode():
        outputs = model(**processor(images=[image], return_tensors="pt"))
    (expected,) = processor.post_process_depth_estimation(outputs, [(1676, 2234)])
    expected = expected["predicted_depth"].numpy()
    span = float(expected.max() - expected.min())
    assert np.abs(depth_of(output["results"][0]) - expected).max() <= span / 65535 + 1e-4 * span


def test_raw_counts_towards_the_size_and_a_bucket_lifts_the_check(make_worker):
    worker = make_worker("depth-anything", MAX_OUTPUT_MB=0.06)
    image = b64(photo("chelsea", size=(160, 120)))  # 38 KB as a PNG at most, so it fits
    assert "depth" in run_job(worker, {"image": image})["results"][0]
    refused = run_job(worker, {"image": image, "raw": True})["results"][0]["error"]
    assert refused["code"] == "too_large"
    assert '"max_side" to' in refused["message"]
    uploads = OutputLimits(
        MAX_OUTPUT_MB=0.001,
        BUCKET_ENDPOINT_URL="https://bucket.example",
        BUCKET_ACCESS_KEY_ID="key",
        BUCKET_SECRET_ACCESS_KEY="secret",
    )
    check_inline_size(uploads, "a map", 10**9)  # uploaded images are not inline: no refusal


def test_the_limits_are_the_workers_own_settings(make_worker):
    worker = make_worker("depth-anything", MAX_OUTPUT_MB=0.06)
    assert worker.task.limits.MAX_OUTPUT_MB == worker.settings.MAX_OUTPUT_MB == 0.06
    assert worker.task.limits.BUCKET_ENDPOINT_URL is None
    fits = largest_fitting_side((3024, 4032), lambda size: size[0] * size[1] <= 12)
    assert fits == 4  # 3x4


def test_an_upscale_that_cannot_fit_inline_fails_before_the_model(make_worker):
    """1200x900 at 2x is within MAX_UPSCALED_PIXELS (16 MP) but its PNG can be 17 MB inline."""
    worker = make_worker("swin2sr")
    before = batches_run(worker)
    large = b64(photo("coffee", size=(1200, 900)))
    results = run_job(worker, {"images": [large, b64(photo("coffee", size=(40, 30)))]})["results"]
    error = results[0]["error"]
    assert error["code"] == "too_large"
    assert error["message"].startswith(
        "image 0: 1200x900 upscaled 2x (an RGB PNG) can be 17.3 MB inline, over MAX_OUTPUT_MB=10"
        " (RunPod's payload limit): send a photo of at most 912 px on its longest side, set "
        "BUCKET_ENDPOINT_URL"
    )
    assert png_of(results[1]["image"]).size == (80, 60)
    assert batches_run(worker) - before == 1


def test_the_photo_size_an_upscale_refusal_names_fits(make_worker):
    worker = make_worker("swin2sr", MAX_OUTPUT_MB=0.1)
    error = run_job(worker, {"image": b64(photo("coffee", size=(120, 90)))})["results"][0]["error"]
    side = int(re.search(r"send a photo of at most (\d+) px", error["message"]).group(1))
    assert 60 < side < 120
    fitting = photo("coffee", size=(side, side * 3 // 4))
    output = run_job(worker, {"image": b64(fitting)})
    assert png_of(output["results"][0]["image"]).size == (2 * side, 2 * (side * 3 // 4))
    assert len(json.dumps(output)) <= 100_000
    over = run_job(worker, {"image": b64(photo("coffee", size=(side + 1, (side + 1) * 3 // 4)))})
    assert over["results"][0]["error"]["code"] == "too_large"


def test_a_cutout_larger_than_the_limit_fails_before_the_model_and_masks_still_come(make_worker):
    worker = make_worker("segformer", MAX_OUTPUT_MB=0.05)
    image = b64(photo("astronaut", size=(300, 300)))  # its PNG alone is ~200 KB
    before = batches_run(worker)
    error = run_job(worker, {"image": image, "cutout": True})["results"][0]["error"]
    assert error["code"] == "too_large"
    assert "the 300x300 cut-out (RGBA PNG) is at least" in error["message"]
    assert 'send a smaller photo, or leave out "cutout"' in error["message"]
    assert batches_run(worker) == before
    assert run_job(worker, {"image": image})["results"][0]["segments"]


def test_check_inline_size_says_at_most_or_at_least():
    limits = OutputLimits(MAX_OUTPUT_MB=1)
    check_inline_size(limits, "x", 1_000_000)
    with pytest.raises(ImageError, match=r"x can be 1\.0 MB inline"):
        check_inline_size(limits, "x", 1_000_001)
    with pytest.raises(ImageError, match=r"x is at least 2\.0 MB inline"):
        check_inline_size(limits, "x", 2_000_000, certain=True)
