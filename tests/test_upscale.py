"""upscale on a tiny Swin2SR built offline, against its model card's recipe (transformers has
no image-to-image pipeline any more): the reconstruction, clamped, times 255, rounded, cut to
the photo's size times the scale; the output size is bounded before the model runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageToImage

from conftest import PHOTOS, b64, photo, png_of, run_job


def card_recipe(model_dir, image) -> np.ndarray:
    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForImageToImage.from_pretrained(model_dir).eval()
    with torch.no_grad():  # the card's own context
        output = model(**processor(image, return_tensors="pt")).reconstruction
    pixels = output.data.squeeze().float().cpu().clamp_(0, 1).numpy()
    return (np.moveaxis(pixels, source=0, destination=-1) * 255.0).round().astype(np.uint8)


def test_upscaled_photos_equal_the_model_cards_recipe(make_worker, model_dir):
    worker = make_worker("swin2sr")
    assert worker.task.name == "upscale"
    for name in PHOTOS[:3]:
        image = photo(name, size=(60, 45)).convert("RGB")
        result = run_job(worker, {"image": b64(image)})["results"][0]
        upscaled = np.asarray(png_of(result["image"]).convert("RGB"))
        assert (result["width"], result["height"]) == (120, 90)
        expected = card_recipe(model_dir("swin2sr"), image)
        # The card keeps the reconstruction of the processor's padding; the photo is its top left.
        assert expected.shape[0] > 90
        np.testing.assert_array_equal(upscaled, expected[:90, :120])


def test_photos_of_a_size_batch_together_and_equal_alone(make_worker):
    worker = make_worker("swin2sr", MAX_BATCH_SIZE=4, BATCH_WAIT_MS=200)
    images = [b64(photo(n, size=(48, 32))) for n in PHOTOS[:3]] + [b64(photo("rocket", (32, 48)))]
    together = run_job(worker, {"images": images})["results"]
    for image, batched in zip(images, together, strict=True):
        alone = run_job(worker, {"image": image})["results"][0]
        a = np.asarray(png_of(batched["image"])).astype(int)
        b = np.asarray(png_of(alone["image"])).astype(int)
        assert np.abs(a - b).max() <= 1  # one 8-bit step where batching moves a rounding


def test_an_output_over_the_limit_fails_that_image_before_the_model_runs(make_worker):
    worker = make_worker("swin2sr", MAX_UPSCALED_PIXELS=40_000)
    small, large = b64(photo("chelsea", size=(60, 45))), b64(photo("chelsea", size=(120, 90)))
    results = run_job(worker, {"images": [small, large]})["results"]
    assert "image" in results[0]
    assert results[1]["error"]["code"] == "too_large"
    assert (
        "120x90 upscaled 2x is 43,200 pixels, over MAX_UPSCALED_PIXELS=40,000"
        in (results[1]["error"]["message"])
    )


@pytest.mark.parametrize("value", ["0", "lots"])
def test_the_limit_is_validated_at_start(value):
    from vision_worker.config import ConfigError
    from vision_worker.settings import load_settings

    with pytest.raises(ConfigError, match="MAX_UPSCALED_PIXELS"):
        load_settings(MAX_UPSCALED_PIXELS=value)


def test_a_phone_photo_is_refused_by_its_upright_size_not_decoded_into_the_model(make_worker):
    from conftest import rotated_twin

    output = run_job(make_worker("swin2sr"), {"image": b64(rotated_twin("chelsea"))})
    (result,) = output["results"]
    assert result["error"]["code"] == "too_large"
    assert "4032x3024 upscaled 2x is 48,771,072 pixels" in result["error"]["message"]
