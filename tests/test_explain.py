"""Grad-CAM explanations: the heatmap finds the region that drives the label (a classifier built
so only one region can), ViT-family maps, batching, inline PNGs, uploads to a real S3-compatible
server (moto), and the payload limit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from transformers import ResNetForImageClassification

from conftest import assert_close, b64, free_port, noise_image, photo, png_of, run_job, run_jobs
from vision_worker.settings import load_settings
from vision_worker.worker import Worker


def _bright_square(size: int, corner: tuple[int, int], side: int) -> Image.Image:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    x, y = corner
    pixels[y : y + side, x : x + side] = 255
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def brightness_classifier(model_dir, tmp_path_factory):
    """A ResNet whose label-0 logit is the image's mean brightness and nothing else: the stem
    averages the colour channels, every residual branch is zero, shortcuts pass channels through
    and batch norms are identities. On a black image with one bright square, only the square can
    raise that logit, so Grad-CAM must point at it."""
    model = ResNetForImageClassification.from_pretrained(model_dir("resnet")).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.zero_(), module.running_var.fill_(1.0)
                module.weight.fill_(1.0), module.bias.zero_()
                module.eps = 0.0
            elif isinstance(module, torch.nn.Conv2d):
                module.weight.zero_()
                if name.endswith("embedder.embedder.convolution"):
                    module.weight.fill_(1.0 / module.weight[0].numel())
                elif "shortcut" in name:
                    for channel in range(min(module.in_channels, module.out_channels)):
                        module.weight[channel, channel] = 1.0
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.zero_()
        model.classifier[-1].weight[0] = 1.0
    out = tmp_path_factory.mktemp("brightness")
    model.save_pretrained(out)
    config = "preprocessor_config.json"
    (out / config).write_bytes((model_dir("resnet") / config).read_bytes())
    return Worker.start(load_settings(MODEL_NAME=str(out), WARMUP=False))


@pytest.mark.parametrize("corner", [(0, 0), (96, 0), (0, 96), (96, 96), (48, 48)])
def test_the_heatmap_peaks_where_the_label_comes_from(brightness_classifier, corner):
    image = _bright_square(128, corner, 32)
    result = run_job(brightness_classifier, {"image": b64(image), "explain": True})["results"][0]
    explanation = result["explanation"]
    assert explanation["label"] == result["labels"][0]["label"]
    heat = np.array(explanation["map"])
    peak_y, peak_x = np.unravel_index(heat.argmax(), heat.shape)
    # The peak cell, mapped back to image pixels, lies inside the bright square.
    cell_h, cell_w = 128 / heat.shape[0], 128 / heat.shape[1]
    centre = ((peak_x + 0.5) * cell_w, (peak_y + 0.5) * cell_h)
    assert corner[0] - cell_w <= centre[0] <= corner[0] + 32 + cell_w
    assert corner[1] - cell_h <= centre[1] <= corner[1] + 32 + cell_h
    assert heat.max() == 1.0


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_explanations_keep_the_labels_and_draw_over_the_original_image(make_worker, arch):
    worker = make_worker(arch)
    wide = b64(photo("astronaut", size=(2000, 1000)))
    plain = run_job(worker, {"image": wide, "top_k": 3})["results"][0]
    explained = run_job(worker, {"image": wide, "top_k": 3, "explain": True})["results"][0]
    assert_close(explained["labels"], plain["labels"])
    heatmap = png_of(explained["explanation"]["heatmap"])
    assert heatmap.size == (1024, 512)  # the original's shape, bounded at 1024 px
    grid = np.array(explained["explanation"]["map"])
    assert grid.shape == (4, 4)  # 32 px input: ViT patches of 8, ResNet's stride of 8
    assert grid.min() >= 0.0
    assert grid.max() <= 1.0


def test_explained_batches_equal_one_at_a_time_and_plain_jobs_batch_apart(make_worker):
    worker = make_worker("vit", MAX_BATCH_SIZE=16, BATCH_WAIT_MS=100)
    images = [b64(noise_image(seed, size=(64, 48))) for seed in range(3)]
    jobs = [{"image": i, "explain": True} for i in images] + [{"image": images[0]}]
    together = run_jobs(worker, jobs)
    alone = [run_job(worker, job) for job in jobs]
    for a, b in zip(together, alone, strict=True):
        assert_close(a["results"][0]["labels"], b["results"][0]["labels"])
        if "explanation" in b["results"][0]:
            assert np.allclose(
                a["results"][0]["explanation"]["map"],
                b["results"][0]["explanation"]["map"],
                atol=2e-3,
            )
    assert "explanation" not in together[3]["results"][0]


def test_an_output_over_the_payload_limit_fails_with_the_fix_named(make_worker):
    worker = make_worker("vit", MAX_OUTPUT_MB=0.05)
    images = [b64(photo("chelsea", size=(800, 600)))] * 4
    output = run_job(worker, {"images": images, "explain": True})
    assert "over the 0.05 MB a job may return" in output["error"]
    assert "BUCKET_ENDPOINT_URL" in output["error"]
    assert "results" not in output


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 in server mode, on 127.0.0.1: the real HTTP API boto3 speaks, not a mock."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_heatmaps_upload_to_the_bucket_and_come_back_as_urls(s3_server, monkeypatch, model_dir):
    import boto3

    credentials = {
        "BUCKET_ENDPOINT_URL": s3_server,
        "BUCKET_ACCESS_KEY_ID": "test-key",
        "BUCKET_SECRET_ACCESS_KEY": "test-secret",
    }
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)  # the SDK's upload reads these itself
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="heatmaps")
    worker = Worker.start(
        load_settings(
            MODEL_NAME=str(model_dir("vit")),
            WARMUP=False,
            BUCKET_NAME="heatmaps",
            MAX_OUTPUT_MB=0.05,
            **credentials,
        )
    )
    images = [b64(photo("chelsea", size=(800, 600)))] * 4
    output = run_job(worker, {"images": images, "explain": True})
    urls = [r["explanation"]["heatmap"] for r in output["results"]]
    assert all(url.startswith(s3_server + "/heatmaps/vision-worker/heatmap-") for url in urls)
    assert len(set(urls)) == 4
    fetched = Image.open(io.BytesIO(requests.get(urls[0], timeout=10).content))
    assert fetched.format == "PNG"
    assert fetched.size == (800, 600)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="heatmaps")["Contents"]]
    assert len(keys) == 4


def test_a_bucket_that_fails_fails_the_image_not_the_worker(monkeypatch, model_dir):
    credentials = {
        "BUCKET_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "BUCKET_ACCESS_KEY_ID": "k",
        "BUCKET_SECRET_ACCESS_KEY": "s",
    }
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    worker = Worker.start(
        load_settings(MODEL_NAME=str(model_dir("vit")), WARMUP=False, **credentials)
    )
    output = run_job(worker, {"images": [b64(photo("chelsea"))], "explain": True})
    error = output["results"][0]["error"]
    assert error["code"] == "inference_failed"
    assert "upload to the bucket failed" in error["message"]
    assert "labels" in run_job(worker, {"image": b64(photo("chelsea"))})["results"][0]
