"""Every supported architecture through the handler; batched output equals per-image output."""

from __future__ import annotations

import time

import pytest

from conftest import CAPTION_ARCHS, CLASSIFY_ARCHS, assert_close, run_job, run_jobs
from vision_worker.dev.tiny_models import LABELS
from vision_worker.settings import load_settings
from vision_worker.tasks import ModelLoadError, load_task


@pytest.mark.parametrize("arch", CAPTION_ARCHS)
def test_caption_models_return_one_caption_per_image(make_worker, photos_b64, arch):
    output = run_job(make_worker(arch), {"images": photos_b64, "max_new_tokens": 8})
    assert output["task"] == "caption"
    assert len(output["results"]) == len(photos_b64)
    for result in output["results"]:
        assert set(result) == {"caption"}
        assert isinstance(result["caption"], str)
    assert set(output["timings_ms"]) == {"load_images", "inference", "total"}
    # Random weights still see the pixels: not every photo gets the same caption.
    assert len({r["caption"] for r in output["results"]}) > 1


@pytest.mark.parametrize("arch", CLASSIFY_ARCHS)
def test_classify_models_return_top_k_labels_with_softmax_scores(make_worker, photos_b64, arch):
    output = run_job(make_worker(arch), {"images": photos_b64, "top_k": 3})
    assert output["task"] == "classify"
    for result in output["results"]:
        labels = result["labels"]
        assert len(labels) == 3
        assert all(entry["label"] in LABELS for entry in labels)
        scores = [entry["score"] for entry in labels]
        assert scores == sorted(scores, reverse=True)
        assert 0 < sum(scores) <= 1.0 + 1e-6


def test_classify_all_labels_scores_sum_to_one(make_worker, photos_b64):
    output = run_job(make_worker("resnet"), {"image": photos_b64[0], "top_k": len(LABELS)})
    labels = output["results"][0]["labels"]
    assert sorted(entry["label"] for entry in labels) == sorted(LABELS)
    assert sum(entry["score"] for entry in labels) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("arch", CAPTION_ARCHS + CLASSIFY_ARCHS)
def test_batched_results_equal_per_image_results(make_worker, photos_b64, arch):
    options = {"max_new_tokens": 10} if arch in CAPTION_ARCHS else {"top_k": 5}
    # A long wait costs nothing: the batcher runs as soon as no image of the job is still being
    # decoded, so the batch does not depend on decodes landing inside a few milliseconds.
    batched_worker = make_worker(arch, MAX_BATCH_SIZE=8, BATCH_WAIT_MS=2000)
    single_worker = make_worker(arch, MAX_BATCH_SIZE=1)

    batched = run_job(batched_worker, {"images": photos_b64, **options})["results"]
    one_by_one = [run_job(single_worker, {"image": i, **options})["results"][0] for i in photos_b64]

    assert batched_worker.batcher.batch_sizes[len(photos_b64)] >= 1, "images were not batched"
    assert_close(batched, one_by_one)


def test_jobs_arriving_together_share_batches_and_get_their_own_results(make_worker, photos_b64):
    worker = make_worker("vit-gpt2", MAX_BATCH_SIZE=16, BATCH_WAIT_MS=50)
    alone = [run_job(worker, {"image": i, "max_new_tokens": 6})["results"][0] for i in photos_b64]
    before = sum(n * c for n, c in worker.batcher.batch_sizes.items() if n > 1)

    jobs = [{"images": photos_b64[i : i + 2], "max_new_tokens": 6} for i in range(0, 5, 2)]
    outputs = run_jobs(worker, jobs)

    assert [r for out in outputs for r in out["results"]] == alone
    after = sum(n * c for n, c in worker.batcher.batch_sizes.items() if n > 1)
    assert after - before == len(photos_b64), "the three jobs were not batched together"


def test_beam_search_and_token_bounds_change_the_caption_length(make_worker, photos_b64):
    worker = make_worker("git")
    short = run_job(worker, {"image": photos_b64[0], "max_new_tokens": 2})["results"][0]
    longer = run_job(worker, {"image": photos_b64[0], "max_new_tokens": 12, "num_beams": 3})
    assert len(short["caption"].split()) <= 2
    assert len(longer["results"][0]["caption"]) > len(short["caption"])


def test_task_is_inferred_and_reported(make_worker, photos_b64):
    assert make_worker("blip").task.name == "caption"
    assert make_worker("vit").task.name == "classify"
    description = make_worker("vit").describe()
    assert description["device"] == "cpu"
    assert description["dtype"] == "float32"


def test_task_override_that_does_not_fit_the_model_fails_at_cold_start(model_dir):
    with pytest.raises(
        ModelLoadError, match=r"TASK=classify does not fit .*GitForCausalLM.*; it serves caption"
    ):
        load_task(load_settings(MODEL_NAME=str(model_dir("git")), TASK="classify"))


def test_model_of_no_supported_task_fails_at_cold_start_naming_it(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            intermediate_size=8,
            vocab_size=20,
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"\(BertModel\) fits no supported task"):
        load_task(load_settings(MODEL_NAME=str(tmp_path)))


def test_unreachable_hub_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="set MODEL_NAME to a local directory"):
        load_task(load_settings(MODEL_NAME="nlpconnect/vit-gpt2-image-captioning"))
    assert time.monotonic() - started < 10


def test_bfloat16_dtype_is_configuration_not_a_code_path(model_dir, photos_b64):
    from vision_worker.worker import Worker

    worker = Worker.start(load_settings(MODEL_NAME=str(model_dir("resnet")), DTYPE="bfloat16"))
    assert worker.describe()["dtype"] == "bfloat16"
    labels = run_job(worker, {"image": photos_b64[0]})["results"][0]["labels"]
    assert len(labels) == 5


def test_unreachable_hub_is_detected_without_offline_mode(monkeypatch, tmp_path):
    from vision_worker.tasks import base

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1")  # nothing listens on its port 443
    base._hub_reachable.cache_clear()
    started = time.monotonic()
    try:
        with pytest.raises(ModelLoadError, match="the Hugging Face Hub is unreachable"):
            load_task(load_settings(MODEL_NAME="microsoft/resnet-50"))
    finally:
        base._hub_reachable.cache_clear()
    assert time.monotonic() - started < 10


def test_torch_compile_setting_gives_the_same_results(make_worker, photos_b64):
    eager = run_job(make_worker("resnet"), {"images": photos_b64[:2]})["results"]
    worker = make_worker("resnet", TORCH_COMPILE=True)
    compiled = run_job(worker, {"images": photos_b64[:2]})
    assert worker.task.model._compiled_call_impl is not None  # really compiled
    assert_close(compiled["results"], eager, tolerance=1e-4)
