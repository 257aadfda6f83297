"""OCR against the model cards' recipes, run directly with transformers on the same images:
GOT-OCR2 (plain and formatted text, a box in the photo's pixels, a color, a page as tiles) and
Donut (task prompts, the cleaned sequence and token2json's fields), on real photos at their own
size and on a 12 MP phone JPEG and its EXIF-rotated twin; batched equals alone; bad options fail
the job with one sentence; the task is chosen from the checkpoint's architecture."""

from __future__ import annotations

import io
import re
import shutil
import threading
from functools import lru_cache

import pytest
import torch
from PIL import Image, ImageOps
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from conftest import PHOTOS, b64, phone_jpeg, photo, rotated_twin, run_job, run_jobs
from vision_worker.config import ConfigError
from vision_worker.settings import load_settings
from vision_worker.tasks import (
    CaptionTask,
    Checkpoint,
    OcrTask,
    choose_task,
    limits_of,
    tasks_serving,
)
from vision_worker.worker import Worker

DONUT_TASK = "<s_cord-v2>"
# A DocVQA-shaped prompt (question, then the answer to write) and one that opens with a field
# already closed, so token2json has a nested field whatever the random decoder writes.
QUESTION = "<s_cord-v2><s_question>what is the total?</s_question><s_answer>"
FIELDS = "<s_cord-v2><s_total><s_total_price>12.00</s_total_price></s_total><s_menu><s_nm>"


@lru_cache(maxsize=4)
def _loaded(path: str):
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return model, AutoProcessor.from_pretrained(path)


def got_recipe(
    model_dir, image: Image.Image, max_new_tokens: int, num_beams: int = 1, **options
) -> str:
    """GOT-OCR-2.0-hf's model card: the processor (format, box, color, crop_to_patches as
    given), greedy generate stopped at <|im_end|>, the new tokens decoded."""
    model, processor = _loaded(str(model_dir("got-ocr2")))
    inputs = processor(image, return_tensors="pt", **options)
    with torch.inference_mode():
        generate_ids = model.generate(
            **inputs,
            do_sample=False,
            tokenizer=processor.tokenizer,
            stop_strings="<|im_end|>",
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
        )
    return processor.decode(
        generate_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )


def donut_recipe(model_dir, image: Image.Image, prompt: str, max_new_tokens: int) -> dict:
    """donut-base-finetuned-cord-v2's model card, to the prompt's length plus max_new_tokens
    (the card's max_length is the decoder's positions)."""
    model, processor = _loaded(str(model_dir("donut")))
    tokenizer = processor.tokenizer
    decoder_input_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    pixel_values = processor(image, return_tensors="pt").pixel_values
    with torch.inference_mode():
        outputs = model.generate(
            pixel_values,
            decoder_input_ids=decoder_input_ids,
            max_length=decoder_input_ids.shape[1] + max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
            bad_words_ids=[[tokenizer.unk_token_id]],
            return_dict_in_generate=True,
        )
    sequence = processor.batch_decode(outputs.sequences)[0]
    sequence = sequence.replace(tokenizer.eos_token, "").replace(tokenizer.pad_token, "")
    sequence = re.sub(r"<.*?>", "", sequence, count=1).strip()  # remove first task start token
    return {"sequence": sequence, "fields": processor.token2json(sequence)}


def opened(data: bytes) -> Image.Image:
    """The bytes as the model card opens a file: EXIF rotation applied."""
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def _texts(output: dict) -> list[str]:
    assert "error" not in output, output
    return [result["text"] for result in output["results"]]


# --- GOT-OCR2 -------------------------------------------------------------------------------
@pytest.mark.parametrize("formatted", [False, True])
def test_got_text_equals_the_model_card_recipe_on_real_photos(make_worker, model_dir, formatted):
    photos = [photo(name, size=None) for name in PHOTOS[:3]]
    job = {"images": [b64(p) for p in photos], "max_new_tokens": 12, "format": formatted}
    output = run_job(make_worker("got-ocr2"), job)
    assert _texts(output) == [got_recipe(model_dir, p, 12, format=formatted) for p in photos]
    assert all(r["finish_reason"] in ("stop", "length") for r in output["results"])
    assert len(set(_texts(output))) == 3, "random weights still read each photo differently"


def test_a_box_a_color_and_beam_search_equal_the_recipe(make_worker, model_dir):
    worker = make_worker("got-ocr2")
    image = photo("astronaut", size=None)  # 512x512
    box = [40, 60, 300, 420]
    plain = _texts(run_job(worker, {"image": b64(image), "max_new_tokens": 10}))[0]
    boxed = _texts(run_job(worker, {"image": b64(image), "max_new_tokens": 10, "box": box}))[0]
    colored = run_job(worker, {"image": b64(image), "max_new_tokens": 10, "color": "red"})
    assert boxed == got_recipe(model_dir, image, 10, box=list(box))
    assert _texts(colored)[0] == got_recipe(model_dir, image, 10, color="red")
    assert boxed != plain
    beams = run_job(worker, {"image": b64(image), "max_new_tokens": 6, "num_beams": 3})
    assert _texts(beams)[0] == got_recipe(model_dir, image, 6, num_beams=3)


def test_large_pages_are_read_as_bounded_tiles(make_worker, model_dir):
    """The motorcycle (741x500) as 3x2 tiles of the tiny model's 512 px and a thumbnail: 7
    vision passes, 1792 image tokens; MAX_PATCHES bounds a job's max_patches."""
    worker = make_worker("got-ocr2")
    image = photo("motorcycle", size=None)
    job = {"image": b64(image), "max_new_tokens": 8, "crop_to_patches": True, "max_patches": 6}
    ours = _texts(run_job(worker, job))[0]
    _, processor = _loaded(str(model_dir("got-ocr2")))
    tiles = processor(image, return_tensors="pt", crop_to_patches=True, max_patches=6)
    assert tiles.pixel_values.shape[0] == 7
    assert ours == got_recipe(model_dir, image, 8, crop_to_patches=True, max_patches=6)
    too_many = run_job(worker, {**job, "max_patches": 13})
    assert too_many["error"] == '"max_patches" must be between 1 and 12 (MAX_PATCHES), got 13'
    bounded = make_worker("got-ocr2", MAX_PATCHES=2)
    assert "between 1 and 2 (MAX_PATCHES)" in run_job(bounded, job)["error"]


def test_got_on_a_phone_jpeg_and_its_exif_twin_equals_the_recipe(make_worker, model_dir):
    """12 MP decoded in full (its 512 px input keeps 8 decoded pixels per model pixel), turned
    upright; a box is in the upright photo's pixels on the twin as on the original."""
    worker = make_worker("got-ocr2")
    box = [1000, 500, 3000, 2500]  # the upright 4032x3024 photo's pixels
    for data in (phone_jpeg("coffee"), rotated_twin("coffee")):
        upright = opened(data)
        assert upright.size == (4032, 3024)
        plain = _texts(run_job(worker, {"image": b64(data), "max_new_tokens": 8}))[0]
        boxed = run_job(worker, {"image": b64(data), "max_new_tokens": 8, "box": box})
        assert plain == got_recipe(model_dir, upright, 8)
        assert _texts(boxed)[0] == got_recipe(model_dir, upright, 8, box=list(box))


def test_a_box_on_a_scaled_decode_is_mapped_to_the_pixels_the_processor_sees(make_worker):
    """A box is in the photo's pixels; an image decoded at half size (a JPEG draft) gets it at
    half, so the processor's 0-1000 query is the photo's."""
    from vision_worker.images import PHOTO_SIZE

    task = make_worker("got-ocr2").task
    image = photo("chelsea", size=None)  # 451x300, as decoded from a 902x600 photo
    image.info[PHOTO_SIZE] = (902, 600)
    options = task.check(task.Options(box=[100, 80, 400, 400], max_new_tokens=4))
    prepared = task.prepare(image, options)
    expected = task.processor(image, return_tensors="pt", box=[50, 40, 200, 200])
    assert prepared.inputs["input_ids"].tolist() == expected.input_ids.tolist()
    query = task.tokenizer.decode(prepared.inputs["input_ids"][0, -24:])
    assert "[ 110, 133, 443, 666 ] OCR :" in query


def test_got_batched_equals_alone_within_and_across_jobs(make_worker):
    worker = make_worker("got-ocr2", MAX_BATCH_SIZE=8, BATCH_WAIT_MS=2000)
    images = [b64(photo(name, size=None)) for name in PHOTOS]
    alone = [_texts(run_job(worker, {"image": i, "max_new_tokens": 8}))[0] for i in images]
    before = sum(n * c for n, c in worker.batcher.batch_sizes.items() if n > 1)
    jobs = [
        {"images": images[:3], "max_new_tokens": 8},
        {"images": images[3:], "max_new_tokens": 8},
    ]
    together = [text for output in run_jobs(worker, jobs) for text in _texts(output)]
    assert together == alone
    after = sum(n * c for n, c in worker.batcher.batch_sizes.items() if n > 1)
    assert after - before == len(images), "the two jobs' pages did not share a generate call"


def test_boxes_of_the_same_length_share_a_batch_and_keep_their_own_regions(make_worker):
    """Different boxes, the same number of prompt tokens: one generate call, no padding, each
    page read in its own region as it is alone."""
    worker = make_worker("got-ocr2", MAX_BATCH_SIZE=8, BATCH_WAIT_MS=2000)
    image = photo("chelsea", size=None)  # 451x300
    boxes = ([50, 40, 200, 200], [250, 60, 440, 290])  # 0-1000: [110, 133, 443, 666], ...
    _, processor = _loaded(str(worker.task.source.name))
    assert len({len(processor(image, box=list(box)).input_ids[0]) for box in boxes}) == 1
    jobs = [{"image": b64(image), "max_new_tokens": 8, "box": box} for box in boxes]
    alone = [_texts(run_job(worker, job))[0] for job in jobs]
    before = worker.batcher.batch_sizes[2]
    assert [_texts(output)[0] for output in run_jobs(worker, jobs)] == alone
    assert worker.batcher.batch_sizes[2] == before + 1


# --- Donut ----------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", [None, QUESTION, FIELDS])
def test_donut_equals_the_model_card_recipe_on_real_photos(make_worker, model_dir, prompt):
    """No prompt is the checkpoint's own task token (<s_cord-v2>, its one unclosed one)."""
    photos = [photo(name, size=None) for name in PHOTOS[:3]]
    job = {"images": [b64(p) for p in photos], "max_new_tokens": 12}
    output = run_job(make_worker("donut"), job | ({"prompt": prompt} if prompt else {}))
    assert "error" not in output, output
    expected = [donut_recipe(model_dir, p, prompt or DONUT_TASK, 12) for p in photos]
    assert [{k: r[k] for k in ("sequence", "fields")} for r in output["results"]] == expected
    assert len({r["sequence"] for r in output["results"]}) >= 2, "the output ignores the image"
    if prompt == FIELDS:  # token2json nests the closed field the prompt carries
        assert all(r["fields"]["total"] == {"total_price": "12. 00"} for r in output["results"])
    # MBart forces its end token in the last place: a cut sequence still says "length".
    assert {r["finish_reason"] for r in output["results"]} <= {"stop", "length"}


def test_donut_on_a_phone_jpeg_and_its_exif_twin_equals_the_recipe(make_worker, model_dir):
    """Decoded in full (JPEG_DRAFT=false): the tiny Donut sees 128x96, and a random model's
    greedy tokens flip at any change of a pixel, as in the captioning test."""
    worker = make_worker("donut", JPEG_DRAFT="false")
    for data in (phone_jpeg("rocket"), rotated_twin("rocket")):
        output = run_job(worker, {"image": b64(data), "max_new_tokens": 10})["results"][0]
        expected = donut_recipe(model_dir, opened(data), DONUT_TASK, 10)
        assert {k: output[k] for k in ("sequence", "fields")} == expected


def test_donut_batches_one_prompt_at_a_time_and_equals_alone(make_worker):
    worker = make_worker("donut", MAX_BATCH_SIZE=8, BATCH_WAIT_MS=2000)
    images = [b64(photo(name, size=None)) for name in PHOTOS]
    jobs = [
        {"images": images[:3], "max_new_tokens": 10},
        {"images": images[3:], "max_new_tokens": 10},
        {"images": images[:2], "max_new_tokens": 10, "prompt": QUESTION},
    ]
    alone = [
        run_job(worker, {**job, "images": [image]})["results"][0]
        for job in jobs
        for image in job["images"]
    ]
    before = dict(worker.batcher.batch_sizes)
    together = [result for output in run_jobs(worker, jobs) for result in output["results"]]
    assert together == alone
    new = {n: c - before.get(n, 0) for n, c in worker.batcher.batch_sizes.items()}
    assert new.get(5) == 1, new  # the default prompt's five pages in one call
    assert new.get(2) == 1, new  # the question's two in another


@pytest.mark.parametrize(
    ("arch", "owner", "post_processing"),
    [("got-ocr2", "tokenizer", "batch_decode"), ("donut", "processor", "token2json")],
)
def test_decoding_runs_off_the_model_thread(make_worker, monkeypatch, arch, owner, post_processing):
    worker = make_worker(arch)
    target = getattr(worker.task, owner)
    original = getattr(target, post_processing)
    threads: list[str] = []

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, post_processing, recording)
    output = run_job(worker, {"images": [b64(photo("chelsea"))] * 2, "max_new_tokens": 4})
    assert "error" not in output["results"][0], output
    assert threads, f"{post_processing} did not run"
    assert all(name.startswith("split") for name in threads), threads


def test_donuts_default_prompt_is_its_own_task_token(model_dir, tmp_path):
    """The decoder's start token where it is a task token; else the one task token no field
    closes; with several (donut-base has <s_synthdog> and <s_iitcdip>), the start token."""
    from transformers import GenerationConfig

    from vision_worker.settings import load_settings
    from vision_worker.tasks import load_task

    several = tmp_path / "several-tasks"
    shutil.copytree(model_dir("donut"), several)
    processor = AutoProcessor.from_pretrained(several)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["<s_docvqa>"]})
    processor.save_pretrained(several)
    task = load_task(load_settings(MODEL_NAME=str(several)))
    assert task.default_prompt is None
    worker = Worker(load_settings(MODEL_NAME=str(several), WARMUP=False), task)
    output = run_job(worker, {"image": b64(photo("rocket")), "max_new_tokens": 6})
    expected = donut_recipe(lambda _: several, photo("rocket"), "<s>", 6)
    assert {k: output["results"][0][k] for k in ("sequence", "fields")} == expected

    config = GenerationConfig.from_pretrained(several)
    config.decoder_start_token_id = processor.tokenizer.convert_tokens_to_ids(DONUT_TASK)
    config.save_pretrained(several)
    assert load_task(load_settings(MODEL_NAME=str(several))).default_prompt == DONUT_TASK


# --- options --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "job", "message"),
    [
        ("got-ocr2", {"prompt": "<s_cord-v2>"}, '"prompt" is a Donut option'),
        ("got-ocr2", {"box": [10, 10, 5, 40]}, '"box" must be [x1, y1, x2, y2] in pixels'),
        ("got-ocr2", {"box": [1, 2, 3]}, "box"),
        ("got-ocr2", {"color": "purple"}, "color"),
        ("got-ocr2", {"max_patches": 4}, '"max_patches" bounds "crop_to_patches"'),
        ("got-ocr2", {"crop_to_patches": True, "box": [0, 0, 9, 9]}, "do not combine"),
        ("got-ocr2", {"max_new_tokens": 2049}, '"max_new_tokens" must be between 1 and 2048'),
        ("got-ocr2", {"format": "yes"}, "format"),
        ("donut", {"format": True}, '"format" is a GOT-OCR2 option'),
        ("donut", {"prompt": "what is the total?"}, "must start with a task token"),
        ("donut", {"prompt": "<s_cord-v2>" * 600}, "over 1000 characters"),
        ("donut", {"prompt": "<s_cord-v2>" + "<s_nm>" * 100}, "too long: with max_new_tokens=127"),
    ],
)
def test_bad_options_fail_the_job_with_one_sentence(make_worker, arch, job, message):
    output = run_job(make_worker(arch), {"image": b64(photo("coffee")), **job})
    assert message in output["error"], output
    assert "\n" not in output["error"]


def test_a_box_outside_the_photo_fails_that_image_alone(make_worker):
    worker = make_worker("got-ocr2")
    small, large = b64(photo("coffee", size=(96, 64))), b64(photo("coffee", size=None))
    job = {"images": [small, large], "max_new_tokens": 4, "box": [10, 10, 300, 200]}
    first, second = run_job(worker, job)["results"]
    assert first["error"]["code"] == "invalid_image"
    assert "outside the 96x64 photo" in first["error"]["message"]
    assert "text" in second


# --- which task a checkpoint serves --------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "default", "serves"),
    [
        ("got-ocr2", "ocr", ["ocr", "ask"]),
        ("donut", "ocr", ["ocr"]),  # a caption without a task prompt is noise
        ("trocr", "caption", ["caption"]),  # a VisionEncoderDecoderModel too, with a ViT encoder
    ],
)
def test_the_task_comes_from_the_checkpoints_architecture(model_dir, arch, default, serves):
    checkpoint = Checkpoint.from_config(arch, AutoConfig.from_pretrained(model_dir(arch)))
    assert choose_task(checkpoint).name == default
    assert tasks_serving(checkpoint) == serves


def test_workers_serve_ocr_through_the_production_path(make_worker):
    got, donut = make_worker("got-ocr2"), make_worker("donut")
    assert (got.task.name, got.task.family) == ("ocr", "got")
    assert (donut.task.name, donut.task.family) == ("ocr", "donut")
    assert donut.task.default_prompt == DONUT_TASK
    assert make_worker("trocr").task.name == "caption"
    assert got.self_test()["finish_reason"] in ("stop", "length")  # the warm-up's path
    assert "fields" in donut.self_test()


def test_finish_reason_tells_an_ended_text_from_a_cut_one(make_worker):
    got, donut = make_worker("got-ocr2").task, make_worker("donut").task
    im_end, pad = got.tokenizer.convert_tokens_to_ids("<|im_end|>"), got.tokenizer.pad_token_id
    assert got._finish_reason([7, 8, im_end, pad], 4) == "stop"
    assert got._finish_reason([7, 8, 9, 10], 4) == "length"
    eos, pad = donut.tokenizer.eos_token_id, donut.tokenizer.pad_token_id
    assert donut._finish_reason([7, eos, pad, pad], 4) == "stop"
    # MBart forces </s> into the last place when max_new_tokens cuts the sequence.
    assert donut._finish_reason([7, 8, 9, eos], 4) == "length"


def test_a_page_of_text_streams_as_it_is_read(make_worker):
    """GOT-OCR2 on RunPod streaming: each image's text arrives in pieces before its result and
    joins into the result's text; the chunks merge back into the plain output."""
    from conftest import _LOOP
    from vision_worker.client import merge_stream

    worker = make_worker("got-ocr2", MAX_BATCH_SIZE=4, BATCH_WAIT_MS=100)
    job = {"images": [b64(photo(name)) for name in PHOTOS[:2]], "max_new_tokens": 12}

    async def chunks() -> list[dict]:
        return [chunk async for chunk in worker.stream(job)]

    streamed = _LOOP.run_until_complete(chunks())
    pieces: dict[int, list[str]] = {0: [], 1: []}
    for chunk in streamed:
        for entry in chunk.get("text", []):
            pieces[entry["index"]].append(entry["text"])
    plain = run_job(worker, job)
    for index, result in enumerate(plain["results"]):
        assert "".join(pieces[index]) == result["text"]
    assert max(len(p) for p in pieces.values()) > 1
    assert merge_stream(streamed)["results"] == plain["results"]


def test_pages_get_their_own_token_defaults_and_the_environment_still_wins(model_dir):
    """A page is longer than a caption: ocr defaults to 1024 new tokens (at most 2048), where
    captions keep 30 (at most 128); a value from the environment is every task's."""
    settings = load_settings(MODEL_NAME=str(model_dir("got-ocr2")))
    pages, captions = limits_of(OcrTask, settings), limits_of(CaptionTask, settings)
    assert (pages.DEFAULT_MAX_NEW_TOKENS, pages.MAX_NEW_TOKENS_LIMIT) == (1024, 2048)
    assert (captions.DEFAULT_MAX_NEW_TOKENS, captions.MAX_NEW_TOKENS_LIMIT) == (30, 128)

    chosen = load_settings(DEFAULT_MAX_NEW_TOKENS=200, MAX_NEW_TOKENS_LIMIT=300)
    assert limits_of(OcrTask, chosen).DEFAULT_MAX_NEW_TOKENS == 200
    assert limits_of(OcrTask, chosen).MAX_NEW_TOKENS_LIMIT == 300

    # A limit below ocr's own default, with no default of its own: refused at start, by name.
    with pytest.raises(ConfigError, match=r"ocr's own defaults \(DEFAULT_MAX_NEW_TOKENS=1024\)"):
        limits_of(OcrTask, load_settings(MAX_NEW_TOKENS_LIMIT=100))
