"""embed and zero_shot on tiny CLIP / SigLIP / DINOv2 / ViT checkpoints, against transformers'
own pipelines (or the model card's recipe) on real photos, batched and one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, AutoProcessor, pipeline

from conftest import PHOTOS, b64, photo, run_job, run_jobs
from vision_worker.tasks.embed import decode_base64_embedding

LABELS = ["a cat", "an astronaut", "a cup of coffee", "a rocket", "a camera"]


def real_photos() -> list:
    """The scikit-image samples at their own sizes (300x451 to 640x427), not thumbnails."""
    return [photo(name, size=None).convert("RGB") for name in PHOTOS]


@pytest.fixture(scope="module")
def photos_full_b64() -> list[str]:
    return [b64(image) for image in real_photos()]


def scores_of(result: dict) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in result["labels"]}


# --- zero_shot ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["clip", "siglip", "siglip2"])
def test_zero_shot_equals_the_transformers_pipeline_on_real_photos(
    arch, make_worker, model_dir, photos_full_b64
):
    worker = make_worker(arch)
    reference = pipeline("zero-shot-image-classification", model=str(model_dir(arch)))
    output = run_job(worker, {"images": photos_full_b64, "labels": LABELS})
    assert output["task"] == "zero_shot"
    for image, result in zip(real_photos(), output["results"], strict=True):
        expected = reference(image, candidate_labels=LABELS)
        assert [e["label"] for e in result["labels"]] == [e["label"] for e in expected]
        for ours, theirs in zip(result["labels"], expected, strict=True):
            assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)


def test_clip_scores_are_a_softmax_and_siglip_scores_independent_sigmoids(make_worker, photos_b64):
    clip = run_job(make_worker("clip"), {"image": photos_b64[0], "labels": LABELS})
    assert sum(scores_of(clip["results"][0]).values()) == pytest.approx(1.0, abs=1e-4)
    siglip = run_job(make_worker("siglip"), {"image": photos_b64[0], "labels": LABELS})
    one = run_job(make_worker("siglip"), {"image": photos_b64[0], "labels": LABELS[:1]})
    # A sigmoid per label: a label's score does not depend on the other labels.
    assert scores_of(one["results"][0])["a cat"] == pytest.approx(
        scores_of(siglip["results"][0])["a cat"], abs=1e-6
    )


def test_zero_shot_batched_equals_one_at_a_time(make_worker, photos_full_b64):
    worker = make_worker("clip")
    batched = run_job(worker, {"images": photos_full_b64, "labels": LABELS})["results"]
    alone = [
        run_job(worker, {"image": image, "labels": LABELS})["results"][0]
        for image in photos_full_b64
    ]
    for together, single in zip(batched, alone, strict=True):
        assert [e["label"] for e in together["labels"]] == [e["label"] for e in single["labels"]]
        for a, b in zip(together["labels"], single["labels"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_label_embeddings_are_computed_once_per_label_set(make_worker, photos_b64):
    worker = make_worker("clip", MAX_BATCH_SIZE=64, BATCH_WAIT_MS=50)
    labels = ["tabby", "tiger", "lion"]
    before = worker.task.label_sets_encoded
    outputs = run_jobs(worker, [{"image": photos_b64[i % 5], "labels": labels} for i in range(32)])
    assert all("error" not in o for o in outputs)
    run_job(worker, {"images": photos_b64, "labels": labels})
    assert worker.task.label_sets_encoded == before + 1
    run_job(worker, {"image": photos_b64[0], "labels": [*labels, "puma"]})
    assert worker.task.label_sets_encoded == before + 2


def test_jobs_with_different_label_sets_share_the_image_forward_pass(make_worker, photos_b64):
    worker = make_worker("clip", MAX_BATCH_SIZE=64, BATCH_WAIT_MS=200)
    batches_before = sum(worker.batcher.batch_sizes.values())
    jobs = [
        {"images": photos_b64[:2], "labels": ["cat", "dog"]},
        {"images": photos_b64[2:4], "labels": ["coffee", "tea", "water"]},
    ]
    first, second = run_jobs(worker, jobs)
    assert sum(worker.batcher.batch_sizes.values()) == batches_before + 1
    assert [len(r["labels"]) for r in first["results"]] == [2, 2]
    assert {e["label"] for e in second["results"][0]["labels"]} == {"coffee", "tea", "water"}
    # Still exactly what each job gets alone.
    alone = run_job(worker, jobs[1])
    assert scores_of(alone["results"][1]) == pytest.approx(
        scores_of(second["results"][1]), abs=1e-5
    )


def test_hypothesis_template_and_top_k(make_worker, model_dir, photos_full_b64):
    worker = make_worker("clip")
    template = "a blurry photo of {}"
    output = run_job(
        worker,
        {
            "image": photos_full_b64[0],
            "labels": LABELS,
            "hypothesis_template": template,
            "top_k": 2,
        },
    )
    reference = pipeline("zero-shot-image-classification", model=str(model_dir("clip")))
    expected = reference(real_photos()[0], candidate_labels=LABELS, hypothesis_template=template)
    assert [e["label"] for e in output["results"][0]["labels"]] == [
        e["label"] for e in expected[:2]
    ]


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({}, '"labels" is required'),
        ({"labels": []}, "labels"),
        ({"labels": ["cat", "cat"]}, "duplicates"),
        ({"labels": ["cat", " "]}, "not blank"),
        ({"labels": ["cat"] + [f"l{i}" for i in range(64)]}, "too many labels: 65, at most 64"),
        ({"labels": ["cat"], "hypothesis_template": "no placeholder"}, '"{}"'),
        ({"labels": ["cat"], "hypothesis_template": "{} and {}"}, '"{}"'),
        ({"labels": "cat"}, "labels"),
        ({"labels": ["cat"], "max_new_tokens": 3}, 'does not apply to task "zero_shot"'),
        ({"labels": ["cat"], "colour": 3}, 'unknown input key "colour"'),
    ],
)
def test_zero_shot_option_errors_are_one_sentence(make_worker, photos_b64, job, message):
    output = run_job(make_worker("clip"), {"image": photos_b64[0], **job})
    assert set(output) == {"error", "error_code"}
    assert output["error_code"] == ("too_large" if "too many" in message else "invalid_input")
    assert message in output["error"]


# --- embed ----------------------------------------------------------------------------------------
def _cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("arch", ["clip", "siglip", "siglip2"])
def test_dual_encoder_embeddings_equal_get_image_features(
    arch, make_worker, model_dir, photos_full_b64
):
    """The model card's recipe: processor + get_image_features, L2-normalised."""
    worker = make_worker(arch, TASK="embed")
    output = run_job(worker, {"images": photos_full_b64})
    model = AutoModel.from_pretrained(model_dir(arch)).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir(arch))
    with torch.inference_mode():
        features = model.get_image_features(**processor(images=real_photos(), return_tensors="pt"))
    features = getattr(features, "pooler_output", features)
    expected = torch.nn.functional.normalize(features, dim=-1)
    for result, row in zip(output["results"], expected, strict=True):
        assert result["dim"] == row.numel()
        assert np.linalg.norm(result["embedding"]) == pytest.approx(1.0, abs=1e-5)
        assert np.allclose(result["embedding"], row.numpy(), atol=1e-4)
        assert _cosine(result["embedding"], row) >= 0.9999


def test_text_embeddings_share_the_image_space(make_worker, model_dir, photos_b64):
    worker = make_worker("clip", TASK="embed")
    texts = ["a photo of a cat", "a rocket on the launch pad", "coffee"]
    output = run_job(worker, {"image": photos_b64[0], "texts": texts})
    model = AutoModel.from_pretrained(model_dir("clip")).eval()
    processor = AutoProcessor.from_pretrained(model_dir("clip"))
    with torch.inference_mode():
        features = model.get_text_features(
            **processor(text=texts, padding=True, return_tensors="pt")
        )
    expected = torch.nn.functional.normalize(getattr(features, "pooler_output", features), dim=-1)
    assert len(output["texts"]) == 3
    for result, row in zip(output["texts"], expected, strict=True):
        assert _cosine(result["embedding"], row) >= 0.9999
    # Texts alone in a job give the same vectors as texts batched with other jobs' texts.
    many = run_jobs(worker, [{"image": photos_b64[1], "texts": [t]} for t in texts])
    for single, together in zip(many, output["texts"], strict=True):
        assert np.allclose(single["texts"][0]["embedding"], together["embedding"], atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "pool"),
    [
        ("dinov2", True),  # pooler_output: the layer-normed CLS token
        ("vit-backbone", True),  # ViTModel saved with its pooler
        ("resnet", True),  # a classifier's backbone: global average pooling
        ("vit", False),  # a classifier's backbone without a trained pooler: the CLS token
    ],
)
def test_backbone_embeddings_equal_the_feature_extraction_pipeline(
    arch, pool, make_worker, model_dir, photos_full_b64
):
    worker = make_worker(arch, TASK="embed")
    output = run_job(worker, {"images": photos_full_b64, "normalize": False})
    reference = pipeline("image-feature-extraction", model=str(model_dir(arch)))
    for image, result in zip(real_photos(), output["results"], strict=True):
        expected = np.asarray(reference(image, pool=pool, return_tensors=True))
        expected = expected.reshape(-1) if pool else expected[0, 0]
        assert result["dim"] == expected.size
        assert np.allclose(result["embedding"], expected, atol=1e-4)


@pytest.mark.parametrize("arch", ["dinov2", "clip"])
def test_embeddings_batched_equal_one_at_a_time(arch, make_worker, photos_full_b64):
    worker = make_worker(arch, TASK="embed")
    batched = run_job(worker, {"images": photos_full_b64})["results"]
    for image, together in zip(photos_full_b64, batched, strict=True):
        alone = run_job(worker, {"image": image})["results"][0]
        assert _cosine(alone["embedding"], together["embedding"]) >= 0.99999


def test_base64_encoding_is_little_endian_float32(make_worker, photos_b64):
    worker = make_worker("dinov2")
    floats = run_job(worker, {"image": photos_b64[0]})["results"][0]
    packed = run_job(worker, {"image": photos_b64[0], "encoding": "base64"})["results"][0]
    assert packed["encoding"] == "base64"
    assert packed["dim"] == floats["dim"]
    vector = decode_base64_embedding(packed["embedding"])
    assert vector.dtype == np.dtype("<f4")
    assert np.array_equal(vector, np.asarray(floats["embedding"], dtype="<f4"))


@pytest.mark.parametrize(
    ("arch", "job", "message"),
    [
        ("dinov2", {"texts": ["a cat"]}, "needs a model with a text tower"),
        ("clip", {"texts": []}, '"texts" must hold 1 to 64 texts'),
        ("clip", {"texts": ["x" * 1001]}, "at most 1000 characters"),
        ("clip", {"encoding": "hex"}, "encoding"),
        ("clip", {"normalize": "yes"}, "normalize"),
        ("dinov2", {"labels": ["cat"]}, 'does not apply to task "embed"'),
    ],
)
def test_embed_option_errors(arch, job, message, make_worker, photos_b64):
    output = run_job(make_worker(arch, TASK="embed"), {"image": photos_b64[0], **job})
    assert set(output) == {"error", "error_code"}
    assert output["error_code"] == ("too_large" if "too many" in message else "invalid_input")
    assert message in output["error"]


def test_a_bad_image_fails_alone_in_an_embedding_job(make_worker, photos_b64):
    output = run_job(make_worker("dinov2"), {"images": [photos_b64[0], "bm90IGFuIGltYWdl"]})
    assert output["results"][0]["dim"] > 0
    assert output["results"][1]["error"]["code"] == "invalid_image"
