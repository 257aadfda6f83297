"""florence on a tiny Florence-2 built offline (BART tokenizer with the location tokens, DaViT
tower, random weights): each task's answer equals the model card's recipe run with transformers
on real photos and on 12 MP phone JPEGs (coordinates in the photo's pixels, EXIF rotation
applied, whatever scale the JPEG was decoded at), batched equals alone, and the options are
bounded with one sentence each."""

from __future__ import annotations

import io
import json
import re
import threading

import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoProcessor, Florence2ForConditionalGeneration

from conftest import (
    PHONE,
    PHOTOS,
    assert_close,
    b64,
    phone_jpeg,
    photo,
    rotated_twin,
    run_job,
    run_jobs,
)
from vision_worker.images import ImageLimits, draft_for, finish_decode, open_image, photo_size
from vision_worker.settings import load_settings
from vision_worker.tasks import Checkpoint, ModelLoadError, choose_task, load_task, tasks_serving
from vision_worker.tasks.florence import REGION_TASKS, FlorenceOptions, FlorenceTaskToken

ARCH = "florence2"
TOKENS = 24
# A box in each photo's pixels (inside the smallest: chelsea, 451 x 300).
REGION = {"xmin": 40.0, "ymin": 30.5, "xmax": 300.0, "ymax": 250.0}


@pytest.fixture(scope="module")
def card(model_dir):
    """The model card's objects, loaded as the card loads them."""
    path = model_dir(ARCH)
    model = Florence2ForConditionalGeneration.from_pretrained(path).eval()
    return model, AutoProcessor.from_pretrained(path)


def recipe(card, image: Image.Image, task: str, text: str = "", size=None, tokens: int = TOKENS):
    """Florence-2's model card: processor(text=task + input, images), generate with 3 beams,
    batch_decode keeping special tokens, post_process_generation at the image's size."""
    model, processor = card
    inputs = processor(text=task + text, images=image, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=tokens, num_beams=3, do_sample=False)
    generated = processor.batch_decode(ids, skip_special_tokens=False)[0]
    size = size or (image.width, image.height)
    return generated, processor.post_process_generation(generated, task=task, image_size=size)[task]


def loc_tokens(region: dict, size: tuple[int, int]) -> str:
    """A box in pixels as Florence-2's location tokens: 1/1000ths of the image, floored."""
    width, height = size
    bins = [
        region["xmin"] * 1000 / width,
        region["ymin"] * 1000 / height,
        region["xmax"] * 1000 / width,
        region["ymax"] * 1000 / height,
    ]
    return "".join(f"<loc_{min(999, int(b))}>" for b in bins)


def coordinates(parsed) -> list[float]:
    """Every coordinate in a parse: boxes, quad boxes, polygons."""
    if isinstance(parsed, dict):
        return [c for key, v in parsed.items() if "label" not in key for c in coordinates(v)]
    if isinstance(parsed, list):
        return [c for v in parsed for c in coordinates(v)]
    return [parsed] if isinstance(parsed, int | float) else []


def inside(parsed, size: tuple[int, int]) -> bool:
    """Every coordinate in the image: x (even places) within its width, y within its height."""
    found = coordinates(parsed)
    width, height = size
    return all(0 <= x < width for x in found[0::2]) and all(0 <= y < height for y in found[1::2])


def opened(data: bytes) -> Image.Image:
    """The bytes as a pipeline opens a file (`load_image`: EXIF rotation applied)."""
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


@pytest.mark.parametrize(
    ("task", "extra"),
    [
        ("<CAPTION>", {}),
        ("<OD>", {}),
        ("<REGION_PROPOSAL>", {}),
        ("<OCR_WITH_REGION>", {}),
        ("<CAPTION_TO_PHRASE_GROUNDING>", {"text": "a cat sitting on a couch"}),
        ("<REGION_TO_DESCRIPTION>", {"region": REGION}),
    ],
)
def test_answers_equal_the_model_card_recipe_on_real_photos(make_worker, card, task, extra):
    worker = make_worker(ARCH)
    assert worker.task.name == "florence"  # chosen from the checkpoint's architecture
    images = [photo(name, size=None).convert("RGB") for name in PHOTOS]
    job = {"images": [b64(i) for i in images], "task_prompt": task, "max_new_tokens": TOKENS}
    results = run_job(worker, {**job, **extra})["results"]
    for image, result in zip(images, results, strict=True):
        text = extra.get("text") or (loc_tokens(REGION, image.size) if "region" in extra else "")
        generated, parsed = recipe(card, image, task, text)
        assert result["generated_text"] == generated
        assert result["parsed"] == parsed
        assert result["finish_reason"] in ("stop", "length")
        assert inside(parsed, image.size)
    if task in ("<OD>", "<REGION_PROPOSAL>", "<OCR_WITH_REGION>"):
        # Random weights still answer in location tokens: the coordinates are checked, not absent.
        assert any(coordinates(r["parsed"]) for r in results), results
    assert len({r["generated_text"] for r in results}) > 1  # the answer depends on the image


@pytest.fixture(scope="module")
def phone() -> dict[str, bytes]:
    return {"chelsea": phone_jpeg("chelsea"), "chelsea (EXIF 6)": rotated_twin("chelsea")}


@pytest.mark.parametrize("task", ["<CAPTION>", "<OD>", "<REGION_PROPOSAL>"])
def test_phone_jpegs_answer_as_the_recipe_in_the_photos_pixels(make_worker, card, phone, task):
    """Decoded in full (the default for the real 768 px model: 12 MP keeps 4 pixels per model
    pixel); the tiny model sees 64 px, and a random model's beams flip at any change of a pixel."""
    worker = make_worker(ARCH, JPEG_DRAFT="false")
    found = []
    for data in phone.values():
        job = {"image": b64(data), "task_prompt": task, "max_new_tokens": TOKENS}
        result = run_job(worker, job)["results"][0]
        upright = opened(data)
        assert upright.size == PHONE  # the twin's pixels are stored turned; EXIF turns them back
        generated, parsed = recipe(card, upright, task)
        assert result["generated_text"] == generated
        assert result["parsed"] == parsed
        assert inside(result["parsed"], PHONE)
        found += coordinates(result["parsed"])
    if task != "<CAPTION>":
        assert found, "a box task must give coordinates to check"
        assert max(found) > 1000  # in the 4032 x 3024 photo, not in 1/1000ths or model pixels


@pytest.mark.parametrize("task", ["<OD>", "<REGION_PROPOSAL>"])
def test_a_scaled_jpeg_decode_still_gives_the_photos_pixels(make_worker, card, phone, task):
    """The default decodes 12 MP at a quarter for this 64 px model: the model sees the decoded
    pixels, and its location tokens are stretched to the photo's own size, not the decode's."""
    worker = make_worker(ARCH)
    limits = ImageLimits(50_000_000, 50_000_000)
    target = worker.task.decode_target(worker.task.check(FlorenceOptions()))
    found = []
    for data in phone.values():
        job = {"image": b64(data), "task_prompt": task, "max_new_tokens": TOKENS}
        result = run_job(worker, job)["results"][0]
        image = open_image(data, limits)
        draft_for(image, target, "true")
        decoded = finish_decode(image)
        assert decoded.size == (1008, 756)  # what the worker decoded: a quarter of each side
        assert photo_size(decoded) == PHONE
        generated, parsed = recipe(card, decoded, task, size=PHONE)
        assert result["generated_text"] == generated
        assert result["parsed"] == parsed
        # The same answer read at the decode's size: every coordinate a quarter of the photo's.
        _, at_decode = recipe(card, decoded, task, size=decoded.size)
        for ours, small in zip(coordinates(parsed), coordinates(at_decode), strict=True):
            assert abs(ours - 4 * small) <= 4
        found += coordinates(parsed)
    assert found, "a box task must give coordinates to check"
    assert max(found) > 1008


def test_batched_equals_alone_within_and_across_jobs(make_worker):
    worker = make_worker(ARCH, MAX_BATCH_SIZE=8, BATCH_WAIT_MS=200)
    images = [b64(photo(name, size=None).convert("RGB")) for name in PHOTOS[:4]]
    for task in ("<CAPTION>", "<OD>"):
        job = {"task_prompt": task, "max_new_tokens": TOKENS}
        together = run_job(worker, {"images": images, **job})["results"]
        assert worker.batcher.batch_sizes.get(4), "the four images must have shared one batch"
        alone = [run_job(worker, {"image": i, **job})["results"][0] for i in images]
        assert_close(together, alone, tolerance=1e-3)
        assert len({r["generated_text"] for r in alone}) > 1
        concurrent = run_jobs(worker, [{"image": i, **job} for i in images])
        assert_close([c["results"][0] for c in concurrent], alone, tolerance=1e-3)
    # A region is four location tokens whatever the box: images of different sizes (so
    # different tokens) share a batch, and each answers as alone.
    job = {"task_prompt": "<REGION_TO_CATEGORY>", "region": REGION, "max_new_tokens": 8}
    shared = worker.batcher.batch_sizes[4]
    together = run_job(worker, {"images": images, **job})["results"]
    assert worker.batcher.batch_sizes[4] == shared + 1
    alone = [run_job(worker, {"image": i, **job})["results"][0] for i in images]
    assert together == alone


def test_the_model_thread_only_generates(make_worker, monkeypatch):
    """Decoding runs on the split thread, parsing on the encode threads, while the model thread
    generates the next batch."""
    worker = make_worker(ARCH)
    processor = worker.task.processor
    threads: dict[str, list[str]] = {"batch_decode": [], "post_process_generation": []}
    for name, seen in threads.items():
        original = getattr(processor, name)

        def recording(*args, _original=original, _seen=seen, **kwargs):
            _seen.append(threading.current_thread().name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(processor, name, recording)
    images = [b64(photo(name)) for name in PHOTOS[:2]]
    output = run_job(worker, {"images": images, "task_prompt": "<OD>", "max_new_tokens": 8})
    assert all("parsed" in r for r in output["results"]), output
    assert threads["batch_decode"]
    assert all(name.startswith("split") for name in threads["batch_decode"]), threads
    assert len(threads["post_process_generation"]) == 2
    assert all(name.startswith("encode") for name in threads["post_process_generation"]), threads


def test_defaults_are_the_model_cards_and_a_cut_answer_says_so(make_worker):
    worker = make_worker(ARCH)
    options = worker.task.check(FlorenceOptions())
    assert options.task_prompt == "<CAPTION>"
    # 3 beams; up to the card's 1024 tokens, within the decoder's 1024 positions.
    assert (options.num_beams, options.max_new_tokens) == (3, 1023)
    image = b64(photo("coffee", size=None).convert("RGB"))
    # One new token: BART's forced end token takes it, so the answer was cut.
    cut = run_job(worker, {"image": image, "max_new_tokens": 1})["results"][0]
    assert cut == {"parsed": "", "generated_text": "</s></s>", "finish_reason": "length"}
    fewer_beams = make_worker(ARCH, MAX_NUM_BEAMS=2)
    assert fewer_beams.task.check(FlorenceOptions()).num_beams == 2


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"task_prompt": "<DETECT>"}, "invalid \"task_prompt\": Input should be '<CAPTION>'"),
        ({"task_prompt": "<CAPTION>", "text": "a cat"}, '"text" is for the tasks that take one'),
        ({"task_prompt": "<OD>", "region": REGION}, '"region" is for the region tasks'),
        ({"task_prompt": "<CAPTION_TO_PHRASE_GROUNDING>"}, 'needs "text"'),
        ({"task_prompt": "<REGION_TO_OCR>"}, 'needs "region"'),
        ({"task_prompt": "<OPEN_VOCABULARY_DETECTION>", "text": " "}, "and not blank"),
        (
            {"task_prompt": "<OPEN_VOCABULARY_DETECTION>", "text": "x" * 1001},
            '"text" must be 1 to 1000 characters',
        ),
        (
            {"task_prompt": "<OPEN_VOCABULARY_DETECTION>", "text": "ж" * 1000},
            '"text" is too long: the image and the prompt are',
        ),
        (
            {"task_prompt": "<CAPTION_TO_PHRASE_GROUNDING>", "text": "a cat <OD>"},
            '"text" must not hold a task prompt',
        ),
        (
            {"task_prompt": "<REGION_TO_OCR>", "region": {**REGION, "xmax": 10.0}},
            "a region needs xmax > xmin and ymax > ymin",
        ),
        ({"max_new_tokens": 1024}, '"max_new_tokens" must be between 1 and 1023 for this model'),
        ({"num_beams": 9}, '"num_beams" must be between 1 and 5, got 9'),
        ({"question": "what?"}, 'option "question" does not apply to task "florence"'),
    ],
)
def test_bad_options_fail_the_job_with_one_sentence(make_worker, job, message):
    output = run_job(make_worker(ARCH), {"image": b64(photo("chelsea")), **job})
    assert message in output["error"], output
    assert output["error_code"] == "invalid_input"
    assert "\n" not in output["error"]


def test_the_task_is_chosen_from_the_checkpoints_architecture(model_dir):
    """ask claims every image-text-to-text architecture; Florence-2 comes first."""
    config = AutoConfig.from_pretrained(model_dir(ARCH))
    assert config.architectures == ["Florence2ForConditionalGeneration"]
    checkpoint = Checkpoint.from_config(ARCH, config)
    assert choose_task(checkpoint).name == "florence"
    assert tasks_serving(checkpoint)[0] == "florence"
    llava = Checkpoint.from_config("llava", AutoConfig.from_pretrained(model_dir("llava")))
    assert "florence" not in tasks_serving(llava)


def test_the_task_prompts_are_the_processors(card):
    """The options list every task Florence2Processor prompts for and parses, no other."""
    _, processor = card
    listed = set(FlorenceTaskToken.__args__)
    assert listed == set(processor.tasks_answer_post_processing_type)
    assert listed == set(processor.task_prompts_without_inputs) | set(
        processor.task_prompts_with_input
    )
    assert {t for t in processor.task_prompts_with_input if "REGION_TO" in t} == REGION_TASKS


def test_the_tiny_processor_is_florence_2s(card, model_dir):
    """What the builder saved loads back as the production path loads it: a BART tokenizer with
    the 1,000 location tokens (each one token, kept by the recipe's decode), <image> tokens for
    the whole image, and the prompt the task token stands for."""
    _, processor = card
    tokenizer = processor.tokenizer
    assert type(tokenizer).__name__ in ("BartTokenizer", "RobertaTokenizer")
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert specials == ("<s>", "</s>", "<pad>")
    ids = tokenizer("car<loc_0><loc_999>", add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids[-2:]) == ["<loc_0>", "<loc_999>"]
    assert tokenizer.decode(ids) == "car<loc_0><loc_999>"
    inputs = processor(text="<OD>", images=photo("chelsea"), return_tensors="pt")
    image_tokens = (inputs.input_ids[0] == tokenizer.image_token_id).sum().item()
    assert image_tokens == processor.num_image_tokens == 65  # an 8 x 8 grid and its mean
    prompt = tokenizer.decode(inputs.input_ids[0][image_tokens:])
    assert prompt == "<s>Locate the objects with category name in the image.</s>"
    config = json.loads((model_dir(ARCH) / "config.json").read_text())
    assert config["image_token_id"] == tokenizer.image_token_id


def test_the_original_remote_code_layout_is_refused_with_the_native_one_named(model_dir, tmp_path):
    """microsoft/Florence-2-* hold weights for their own modeling code (trust_remote_code, never
    run here): loaded natively, every weight would be missing. The worker names the converted
    checkpoints instead of serving random weights."""
    original = tmp_path / "florence-2-original"
    original.mkdir()
    source = model_dir(ARCH)
    for path in source.iterdir():
        if path.name != "model.safetensors":
            (original / path.name).write_bytes(path.read_bytes())
    weights = load_file(source / "model.safetensors")
    # The original's names: language_model.model.encoder... for model.language_model.encoder...
    renamed = {
        re.sub(r"^model\.language_model\.", "language_model.model.", key): value
        for key, value in weights.items()
    }
    save_file(renamed, original / "model.safetensors")
    config = json.loads((original / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_florence2.Florence2Config"}
    (original / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="florence-community/Florence-2-base") as refused:
        load_task(load_settings(MODEL_NAME=str(original), WARMUP=False))
    assert "trust_remote_code" in str(refused.value)
