"""What users send: 12 MP phone JPEGs (and their EXIF-rotated twins) through every task, against
transformers' own pipelines (or the model card's recipe) on the same bytes.

The classifier here has real ImageNet weights (EfficientNet-Lite0): the decode accuracy budget
(top-5 probabilities within 0.01 of the pipeline, the same top-1) is only meaningful with them.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    pipeline,
)

from conftest import PHONE, b64, encode, phone_jpeg, png_of, rotated_twin, run_job
from vision_worker.images import ImageLimits, draft_for, finish_decode, open_image, photo_size

NAMES = ("chelsea", "astronaut", "coffee", "rocket", "camera", "motorcycle")
LIMITS = ImageLimits(50_000_000, 50_000_000)


@pytest.fixture(scope="module")
def phone() -> dict[str, bytes]:
    """Each sample as a 12 MP JPEG, and the cat and the rocket as EXIF-rotated twins."""
    jpegs = {name: phone_jpeg(name) for name in NAMES}
    jpegs |= {f"{name} (EXIF 6)": rotated_twin(name) for name in ("chelsea", "rocket")}
    return jpegs


def opened(data: bytes) -> Image.Image:
    """The bytes as a pipeline opens a file or URL (`load_image`: EXIF rotation applied)."""
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


# --- geometry: the photo's size survives scaled decoding ------------------------------------
def test_a_drafted_decode_keeps_the_photos_size_after_exif_rotation(phone):
    image = open_image(phone["chelsea (EXIF 6)"], LIMITS)
    assert image.size == (3024, 4032)  # stored as the sensor saw it
    draft_for(image, {"shortest_edge": 224}, "fast")
    decoded = finish_decode(image)
    assert decoded.size == (504, 378)  # 1/8 scale, turned upright
    assert photo_size(decoded) == PHONE  # the photo itself, upright


@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 7, 8])
def test_a_nearly_square_photo_keeps_its_sides_when_its_draft_comes_out_square(orientation):
    """4000x3993 at 1/8 decodes to 500x500: the quarter turn is read from the EXIF tag, not
    guessed from the decoded sides."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.new("RGB", (4000, 3993), (90, 120, 150)), "JPEG", quality=80, exif=exif)
    image = open_image(data, LIMITS)
    draft_for(image, {"shortest_edge": 224}, "fast")
    decoded = finish_decode(image)
    assert decoded.size == (500, 500)
    assert photo_size(decoded) == ((3993, 4000) if orientation >= 5 else (4000, 3993))


@pytest.mark.parametrize(
    ("mode", "target", "decoded"),
    [
        # The default keeps 8 decoded pixels per model pixel: a 12 MP photo decodes in full for
        # a 256 px model (libjpeg's 1/2 would keep 5.9), at half size for a 128 px one.
        ("true", {"shortest_edge": 256}, PHONE),
        ("true", {"shortest_edge": 128}, (2016, 1512)),
        ("fast", {"shortest_edge": 224}, (504, 378)),
        ("fast", {"height": 384, "width": 384}, (1008, 756)),
        ("fast", {"max_num_patches": 256}, PHONE),  # no fixed size: full decode
        ("false", {"shortest_edge": 16}, PHONE),
    ],
)
def test_draft_modes_decode_what_they_promise(phone, mode, target, decoded):
    image = open_image(phone["coffee"], LIMITS)
    draft_for(image, target, mode)
    assert image.size == decoded


# --- classify, with real weights: the decode accuracy budget --------------------------------
@pytest.fixture(scope="module")
def classifier_pipeline(real_classifier):
    return pipeline("image-classification", model=str(real_classifier))


def _worst_top5_difference(results: list[dict], expected: list[list[dict]]) -> float:
    worst = 0.0
    for ours, theirs in zip(results, expected, strict=True):
        scores = {e["label"]: e["score"] for e in ours["labels"]}
        worst = max(worst, *(abs(scores[e["label"]] - e["score"]) for e in theirs))
    return worst


def test_real_weights_name_the_photos(make_worker, classifier_pipeline):
    """The labels the model card's pipeline gives on the small originals, through the worker."""
    from conftest import photo

    worker = make_worker("efficientnet-lite0")
    originals = [photo(name, size=None).convert("RGB") for name in NAMES]
    results = run_job(worker, {"images": [b64(p) for p in originals]})["results"]
    top = {name: r["labels"][0]["label"] for name, r in zip(NAMES, results, strict=True)}
    assert top["coffee"] == "espresso"
    assert top["chelsea"] == "tiger cat"
    assert top["rocket"] == "missile"
    assert top["motorcycle"] == "moped"
    expected = [classifier_pipeline(p, top_k=5) for p in originals]
    assert _worst_top5_difference(results, expected) <= 1e-5


def test_default_decoding_keeps_the_pipelines_answers_on_phone_photos(
    make_worker, classifier_pipeline, phone
):
    worker = make_worker("efficientnet-lite0")
    # The torchvision ("fast") processor, as in the Docker image and the pipeline here.
    assert type(worker.task.image_processor).__name__ == "BitImageProcessor"
    assert type(classifier_pipeline.image_processor).__name__ == "BitImageProcessor"
    results = run_job(worker, {"images": [b64(d) for d in phone.values()]})["results"]
    expected = [classifier_pipeline(opened(d), top_k=5) for d in phone.values()]
    assert _worst_top5_difference(results, expected) <= 0.01
    for ours, theirs in zip(results, expected, strict=True):
        assert ours["labels"][0]["label"] == theirs[0]["label"]


def test_the_pil_backend_keeps_the_budget_against_the_pil_pipeline(
    real_classifier, phone, monkeypatch
):
    """Without torchvision the worker takes the PIL processors: compared with the pipeline on
    the same backend, the same budget holds."""
    from vision_worker.settings import load_settings
    from vision_worker.tasks import base
    from vision_worker.worker import Worker

    monkeypatch.setattr(base, "image_processor_backend", lambda: "pil")
    worker = Worker.start(load_settings(MODEL_NAME=str(real_classifier), WARMUP=False))
    assert type(worker.task.image_processor).__name__ == "BitImageProcessorPil"
    processor = AutoImageProcessor.from_pretrained(real_classifier, backend="pil")
    reference = pipeline(
        "image-classification", model=str(real_classifier), image_processor=processor
    )
    images = [phone[name] for name in ("chelsea", "rocket (EXIF 6)", "motorcycle")]
    results = run_job(worker, {"images": [b64(d) for d in images]})["results"]
    expected = [reference(opened(d), top_k=5) for d in images]
    assert _worst_top5_difference(results, expected) <= 0.01
    assert [r["labels"][0]["label"] for r in results] == [e[0]["label"] for e in expected]


def test_fast_decoding_trades_a_bounded_deviation_for_speed(
    make_worker, classifier_pipeline, phone
):
    """JPEG_DRAFT=fast decodes 12 MP at 1/8 for this 256 px model: scores move (the README
    gives the figure), within a bound."""
    worker = make_worker("efficientnet-lite0", JPEG_DRAFT="fast")
    job = {"images": [b64(d) for d in phone.values()], "top_k": 1000}
    results = run_job(worker, job)["results"]
    expected = [classifier_pipeline(opened(d), top_k=5) for d in phone.values()]
    assert 0.005 < _worst_top5_difference(results, expected) <= 0.08


def test_batched_equals_alone_with_real_weights(make_worker, phone):
    worker = make_worker("efficientnet-lite0", MAX_BATCH_SIZE=8, BATCH_WAIT_MS=2000)
    images = [b64(phone[name]) for name in ("chelsea", "coffee", "rocket (EXIF 6)")]
    together = run_job(worker, {"images": images})["results"]
    for image, batched in zip(images, together, strict=True):
        alone = run_job(worker, {"image": image})["results"][0]
        assert [e["label"] for e in alone["labels"]] == [e["label"] for e in batched["labels"]]
        for a, b in zip(alone["labels"], batched["labels"], strict=True):
            assert abs(a["score"] - b["score"]) <= 1e-5


def test_the_explained_cat_is_where_the_cat_is(make_worker, classifier_pipeline, phone):
    """Grad-CAM with real weights on chelsea: her face fills the photo but for a strip of
    background at the right edge, so the cat label's 7x7 map peaks left of that strip and is
    weaker on it."""
    worker = make_worker("efficientnet-lite0")
    output = run_job(worker, {"image": b64(phone["chelsea"]), "explain": True})
    explanation = output["results"][0]["explanation"]
    top = classifier_pipeline(opened(phone["chelsea"]), top_k=1)[0]["label"]
    assert explanation["label"] == top
    assert top.endswith("cat")
    cam = np.asarray(explanation["map"])
    assert cam.shape == (7, 7)
    _, peak_column = np.unravel_index(cam.argmax(), cam.shape)
    assert peak_column < 6
    assert cam[:, -1].mean() < 0.8 * cam[:, :-1].mean()
    heatmap = png_of(explanation["heatmap"])
    assert heatmap.size == (1024, 768)  # the photo's own shape, at most 1024 px
    # Shortest edge to 256, centre crop 224: the model saw the middle 65.6% x 87.5% of the
    # photo, and the map is drawn there, not stretched over the whole photo.
    assert explanation["map_box"] == {"xmin": 693.0, "ymin": 189.0, "xmax": 3339.0, "ymax": 2835.0}
    outside = np.asarray(heatmap)[:, :150].astype(int)  # left of the crop: the photo as it is
    shown = np.asarray(Image.open(io.BytesIO(phone["chelsea"])).resize((1024, 768)))[:, :150]
    assert np.abs(outside - shown).mean() < 8  # JPEG noise, no heat blended in


# --- detection: boxes in the photo's own pixels ---------------------------------------------
def _same_boxes(ours: list[dict], expected: list[dict], photo_side: int, score_tol: float) -> None:
    """Each detection has its twin in the pipeline's: the same label, the score within
    `score_tol`, every corner within 1% of the photo's longer side."""
    assert len(ours) == len(expected)
    for mine in ours:
        corners = np.array(list(mine["box"].values()))
        twins = [
            t
            for t in expected
            if t["label"] == mine["label"]
            and abs(t["score"] - mine["score"]) <= score_tol
            and np.abs(corners - np.array(list(t["box"].values()))).max() <= 0.01 * photo_side
        ]
        assert twins, f"no pipeline detection matches {mine}"


def _clear_of(detections: list[dict], threshold: float, margin: float) -> list[dict]:
    """Detections far enough above the threshold that a tolerated score change cannot drop
    them on one side of it only."""
    return [d for d in detections if d["score"] > threshold + margin]


@pytest.mark.parametrize(("mode", "score_tol"), [("true", 1e-3), ("false", 1e-5)])
def test_detections_on_phone_jpegs_are_in_the_photos_pixels(
    make_worker, model_dir, phone, mode, score_tol
):
    """The tiny DETR's input is 64 px, so even the default decodes the 12 MP JPEG at 1/4 (8
    decoded pixels per model pixel): boxes still come back in the photo's pixels, where the
    pipeline puts them from the full decode; JPEG_DRAFT=false gives its scores exactly."""
    worker = make_worker("detr", JPEG_DRAFT=mode)
    reference = pipeline("object-detection", model=str(model_dir("detr")))
    for name in ("chelsea", "chelsea (EXIF 6)"):
        job = {"image": b64(phone[name]), "threshold": 0.1, "max_detections": 1000}
        ours = run_job(worker, job)["results"][0]["detections"]
        expected = reference(opened(phone[name]), threshold=0.1)
        assert ours, "the threshold is set to find something in a random model"
        _same_boxes(
            _clear_of(ours, 0.1, score_tol),
            _clear_of(expected, 0.1, score_tol),
            max(PHONE),
            score_tol,
        )


@pytest.mark.parametrize(("mode", "score_tol"), [("true", 5e-3), ("false", 1e-5)])
def test_zero_shot_detections_on_phone_jpegs_equal_the_pipeline(
    make_worker, model_dir, phone, mode, score_tol
):
    """The tiny OWL-ViT sees 32 px, so the default decodes at 1/8 and its random weights move
    scores by up to 3.5e-3 (boxes by under a pixel); a full decode gives the pipeline's."""
    worker = make_worker("owlvit", JPEG_DRAFT=mode)
    reference = pipeline("zero-shot-object-detection", model=str(model_dir("owlvit")))
    labels = ["a cat", "a red rocket"]
    for name in ("rocket", "rocket (EXIF 6)"):
        job = {
            "image": b64(phone[name]),
            "labels": labels,
            "threshold": 0.6,
            "max_detections": 1000,
        }
        ours = run_job(worker, job)["results"][0]["detections"]
        expected = reference(opened(phone[name]), candidate_labels=labels, threshold=0.6)
        assert ours
        _same_boxes(
            _clear_of(ours, 0.6, score_tol),
            _clear_of(expected, 0.6, score_tol),
            max(PHONE),
            score_tol,
        )


# --- the other tasks on phone photos --------------------------------------------------------
def test_zero_shot_on_phone_jpegs_equals_the_pipeline(make_worker, model_dir, phone):
    worker = make_worker("clip")
    reference = pipeline("zero-shot-image-classification", model=str(model_dir("clip")))
    labels = ["a cat", "a rocket", "a cup of coffee"]
    for name in ("chelsea", "chelsea (EXIF 6)", "coffee"):
        ours = run_job(worker, {"image": b64(phone[name]), "labels": labels})["results"][0]
        expected = reference(opened(phone[name]), candidate_labels=labels)
        scores = {e["label"]: e["score"] for e in ours["labels"]}
        assert ours["labels"][0]["label"] == expected[0]["label"]
        for entry in expected:
            assert abs(scores[entry["label"]] - entry["score"]) <= 0.01


@pytest.mark.parametrize("arch", ["clip", "dinov2"])
def test_embeddings_of_phone_jpegs_equal_the_recipe(make_worker, model_dir, phone, arch):
    worker = make_worker(arch, TASK="embed")
    model = AutoModel.from_pretrained(model_dir(arch)).eval()
    processor = AutoProcessor.from_pretrained(model_dir(arch))
    for name in ("astronaut", "rocket (EXIF 6)"):
        ours = np.asarray(run_job(worker, {"image": b64(phone[name])})["results"][0]["embedding"])
        expected = _recipe_embedding(model, processor, opened(phone[name]), arch)
        assert float(ours @ expected) >= 0.999  # both unit length


def _recipe_embedding(model, processor, image: Image.Image, arch: str) -> np.ndarray:
    inputs = processor(images=[image], return_tensors="pt")
    with torch.inference_mode():
        if arch == "clip":
            features = model.get_image_features(pixel_values=inputs.pixel_values)
            features = features if isinstance(features, torch.Tensor) else features.pooler_output
        else:
            features = model(pixel_values=inputs.pixel_values).pooler_output
    vector = features[0].numpy()
    return vector / np.linalg.norm(vector)


def test_captions_of_phone_jpegs_equal_the_model_card_recipe(make_worker, model_dir, phone):
    """Decoded in full, as the default decodes 12 MP for real captioners (224-384 px); the tiny
    one sees 32 px, and a random model's greedy tokens flip at any change of a pixel."""
    worker = make_worker("vit-gpt2", JPEG_DRAFT="false")
    path = model_dir("vit-gpt2")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor, tokenizer = (
        AutoImageProcessor.from_pretrained(path),
        AutoTokenizer.from_pretrained(path),
    )
    for name in ("coffee", "chelsea (EXIF 6)"):
        ours = run_job(worker, {"image": b64(phone[name]), "max_new_tokens": 8})["results"][0]
        pixels = processor(opened(phone[name]), return_tensors="pt").pixel_values
        with torch.inference_mode():
            ids = model.generate(pixel_values=pixels, max_new_tokens=8)
        expected = " ".join(tokenizer.decode(ids[0], skip_special_tokens=True).split())
        assert ours["caption"] == expected


@pytest.mark.parametrize("arch", ["llava-next", "qwen2-vl", "qwen2.5-vl", "smolvlm", "paligemma"])
def test_answers_on_phone_jpegs_equal_the_pipeline(make_worker, model_dir, phone, arch):
    """LLaVA-NeXT lays out its tiles, Qwen2-VL its patch grid, SmolVLM its tile rows and columns,
    from the image's own size: the decode must not change it."""
    worker = make_worker(arch)
    reference = pipeline("image-text-to-text", model=str(model_dir(arch)))
    question = "what is in the photo?"
    for name in ("rocket", "rocket (EXIF 6)"):
        job = {"image": b64(phone[name]), "question": question, "max_new_tokens": 6}
        ours = run_job(worker, job)["results"][0]
        turn = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": opened(phone[name])},
                    {"type": "text", "text": question},
                ],
            }
        ]
        expected = reference(text=turn, max_new_tokens=6, return_full_text=False)
        assert ours["answer"] == expected[0]["generated_text"].strip()
        assert ours["finish_reason"] in ("stop", "length")
        assert 1 <= ours["usage"]["completion_tokens"] <= 6


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("1", "true"),
        ("y", "true"),
        ("TRUE", "true"),
        ("fast", "fast"),
        ("off", "false"),
        ("f", "false"),
        (False, "false"),
    ],
)
def test_jpeg_draft_takes_every_boolean_spelling_and_fast(value, mode):
    from vision_worker.settings import load_settings

    assert mode == load_settings(JPEG_DRAFT=value).JPEG_DRAFT
