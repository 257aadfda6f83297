"""ask on a tiny LLaVA built offline (tokenizer trained here, chat template in its processor):
answers equal transformers' image-text-to-text pipeline on real photos, batched with different
questions equal one at a time, and the options are bounded."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from transformers import pipeline

from conftest import _LOOP, PHOTOS, b64, encode, phone_jpeg, photo, run_job, run_jobs
from vision_worker.client import merge_stream

QUESTIONS = ["what is in the photo?", "is there a cat on the couch?", "what colour is the sky?"]


@pytest.mark.parametrize(
    "arch", ["llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "smolvlm", "paligemma"]
)
def test_answers_equal_the_transformers_pipeline_on_real_photos(make_worker, model_dir, arch):
    worker = make_worker(arch)
    assert worker.task.name == "ask"  # chosen from the checkpoint's architecture
    reference = pipeline("image-text-to-text", model=str(model_dir(arch)))
    images = [photo(name, size=None).convert("RGB") for name in PHOTOS[:3]]
    output = run_job(
        worker, {"images": [b64(i) for i in images], "questions": QUESTIONS, "max_new_tokens": 8}
    )
    for image, question, result in zip(images, QUESTIONS, output["results"], strict=True):
        turn = [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": question}],
            }
        ]
        expected = reference(text=turn, max_new_tokens=8, return_full_text=False)
        assert result["answer"] == expected[0]["generated_text"].strip()
        assert result["finish_reason"] in ("stop", "length")
        assert 1 <= result["usage"]["completion_tokens"] <= 8


@pytest.mark.parametrize("arch", ["llava", "qwen2-vl", "qwen2.5-vl", "smolvlm", "paligemma"])
def test_different_questions_batched_equal_one_at_a_time(make_worker, arch):
    """Qwen2-VL's processor also returns a per-token mm_token_type_ids: it is left-padded with
    input_ids (padded on the right it shifted which tokens are image tokens: 2 of 3 answers
    changed in a batch)."""
    worker = make_worker(arch, MAX_BATCH_SIZE=8, BATCH_WAIT_MS=100)
    images = [b64(photo(name)) for name in PHOTOS[:3]]
    # Prompts of different lengths in one batch: left padding must not change any answer.
    together = run_job(worker, {"images": images, "questions": QUESTIONS, "max_new_tokens": 6})
    alone = [
        run_job(worker, {"image": i, "question": q, "max_new_tokens": 6})["results"][0]
        for i, q in zip(images, QUESTIONS, strict=True)
    ]
    assert together["results"] == alone
    assert len({r["answer"] for r in alone}) > 1  # random weights still see image and question
    concurrent = run_jobs(
        worker, [{"image": i, "question": QUESTIONS[0], "max_new_tokens": 6} for i in images]
    )
    assert [c["results"][0] for c in concurrent] == [
        run_job(worker, {"image": i, "question": QUESTIONS[0], "max_new_tokens": 6})["results"][0]
        for i in images
    ]


@pytest.mark.parametrize("arch", ["llava-next", "qwen2-vl", "qwen2.5-vl", "smolvlm"])
def test_images_of_different_token_counts_batched_equal_one_at_a_time(make_worker, arch):
    """LLaVA-NeXT tiles each image on the grid that fits its shape: a square, a wide and a tall
    photo become 97, 43 and 49 prompt tokens and 5, 3 and 3 tiles, in one batch. Qwen2-VL cuts
    each into as many patches as its size gives (its patch lists are joined). SmolVLM splits
    each into tiles of its tower's size plus a global view (zero-padded to the batch's most)."""
    worker = make_worker(arch, MAX_BATCH_SIZE=8, BATCH_WAIT_MS=100)
    images = [
        b64(photo(name, size=size))
        for name, size in [("chelsea", (64, 64)), ("rocket", (120, 40)), ("coffee", (40, 120))]
    ]
    job = {"question": QUESTIONS[0], "max_new_tokens": 6}
    together = run_job(worker, {"images": images, **job})
    assert worker.batcher.batch_sizes.get(3), "the three images must have shared one batch"
    alone = [run_job(worker, {"image": i, **job})["results"][0] for i in images]
    assert together["results"] == alone


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({}, 'give either "question"'),
        ({"question": "a?", "questions": ["b?"]}, 'give either "question"'),
        ({"questions": ["a?", "b?"]}, '"questions" has 2 questions for 1 images'),
        ({"question": " "}, "each question must be 1 to 1000 characters"),
        ({"question": "x" * 1001}, "each question must be 1 to 1000 characters"),
        ({"question": "a?", "max_new_tokens": 999}, '"max_new_tokens" must be between 1 and 128'),
        ({"question": "a?", "num_beams": 9}, '"num_beams" must be between 1 and 5'),
        ({"question": "a?", "top_k": 1}, 'does not apply to task "ask"'),
    ],
)
def test_bad_options_fail_the_job_with_one_sentence(make_worker, job, message):
    output = run_job(make_worker("llava"), {"image": b64(photo("chelsea")), **job})
    assert message in output["error"]


def test_a_prompt_past_the_models_positions_fails_that_image_not_the_batch(make_worker):
    worker = make_worker("llava-next", MAX_TEXT_CHARS=5000, BATCH_WAIT_MS=100)
    long_question = "what is in the photo " * 150  # ~600 tokens; the tiny decoder has 512
    jobs = [
        {"image": b64(photo("chelsea", size=(64, 64))), "question": long_question},
        {"image": b64(photo("rocket", size=(64, 64))), "question": QUESTIONS[0]},
    ]
    too_long, fine = run_jobs(worker, [{**job, "max_new_tokens": 4} for job in jobs])
    error = too_long["results"][0]["error"]
    assert error["code"] == "too_large"
    assert "needs more than the model's 512" in error["message"]
    assert fine["results"][0]["answer"]


def test_a_captioner_cannot_be_asked(model_dir):
    from vision_worker.settings import load_settings
    from vision_worker.tasks import ModelLoadError, load_task

    with pytest.raises(ModelLoadError, match=r"TASK=ask does not fit .*it serves caption"):
        load_task(load_settings(MODEL_NAME=str(model_dir("blip")), TASK="ask", WARMUP=False))


def test_answers_count_their_tokens_and_say_why_they_ended(make_worker, model_dir):
    """usage and finish_reason, as OpenAI clients read them: the prompt's tokens (image tokens
    included), the new tokens up to and with the end token, "length" when max_new_tokens cut."""
    from transformers import AutoProcessor

    worker = make_worker("llava")
    image = photo("chelsea")
    result = run_job(worker, {"image": b64(image), "question": "what?", "max_new_tokens": 3})
    answer = result["results"][0]
    processor = AutoProcessor.from_pretrained(model_dir("llava"))
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}]
    prompt = processor.apply_chat_template(turn, add_generation_prompt=True)
    length = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"].shape[1]
    assert answer["usage"]["prompt_tokens"] == length
    assert answer["usage"]["completion_tokens"] <= 3
    if answer["usage"]["completion_tokens"] == 3:
        assert answer["finish_reason"] == "length"


def test_stop_texts_cut_the_answer_and_seeds_repeat_sampled_answers(make_worker):
    worker = make_worker("llava")
    image = b64(photo("coffee"))
    job = {"image": image, "question": "what is it?", "max_new_tokens": 12}
    greedy = run_job(worker, job)["results"][0]
    words = greedy["answer"].split()
    assert len(words) >= 3, greedy
    stopped = run_job(worker, {**job, "stop": [words[2]]})["results"][0]
    assert stopped["finish_reason"] == "stop"
    assert words[2] not in stopped["answer"].split()[2:]
    assert greedy["answer"].startswith(stopped["answer"])
    sampled = {**job, "temperature": 1.5, "top_p": 0.9, "seed": 7}
    first, again = (run_job(worker, sampled)["results"][0] for _ in range(2))
    assert first["answer"] == again["answer"]
    others = {run_job(worker, {**sampled, "seed": s})["results"][0]["answer"] for s in range(6)}
    assert len(others) > 1  # sampling does sample


def _streamed(worker, job: dict) -> list[dict]:
    async def chunks() -> list[dict]:
        return [chunk async for chunk in worker.stream(job)]

    return _LOOP.run_until_complete(chunks())


@pytest.mark.parametrize(
    "arch", ["llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "smolvlm", "paligemma"]
)
def test_answers_stream_as_they_are_generated_and_join_into_the_answer(make_worker, arch):
    """Token streaming: each image's text pieces arrive before its result and join into its
    answer; a batch of three streams side by side; the merged output is the plain one."""
    worker = make_worker(arch, MAX_BATCH_SIZE=8, BATCH_WAIT_MS=100)
    job = {
        "images": [b64(photo(name)) for name in PHOTOS[:3]],
        "questions": QUESTIONS,
        "max_new_tokens": 8,
    }
    chunks = _streamed(worker, job)
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    finished: set[int] = set()
    for chunk in chunks:
        for entry in chunk.get("text", []):
            assert entry["index"] not in finished  # text only before the image's result
            pieces[entry["index"]].append(entry["text"])
        finished |= {r["index"] for r in chunk.get("results", [])}
    plain = run_job(worker, job)
    for index, result in enumerate(plain["results"]):
        assert "".join(pieces[index]) == result["answer"]
    # Random weights still write several words: at least one answer came in several pieces.
    assert max(len(p) for p in pieces.values()) > 1
    merged = merge_stream(chunks)
    assert merged["results"] == plain["results"]


def test_a_streamed_answer_never_shows_its_stop_text(make_worker):
    worker = make_worker("llava")
    job = {"image": b64(photo("chelsea")), "question": QUESTIONS[0], "max_new_tokens": 12}
    answer = run_job(worker, job)["results"][0]["answer"]
    words = answer.split()
    assert len(words) >= 2, answer
    stop = words[1]  # cut at the second word: the streamed text must never have shown it
    chunks = _streamed(worker, {**job, "stop": [stop]})
    streamed = "".join(e["text"] for c in chunks for e in c.get("text", []))
    (result,) = merge_stream(chunks)["results"]
    assert result["answer"] == answer[: answer.find(stop)].rstrip()
    assert result["finish_reason"] == "stop"
    assert stop not in streamed
    assert result["answer"].startswith(streamed)


def test_a_failing_text_listener_never_fails_the_batch(make_worker):
    """The model thread calls the listener: its faults end streaming, not the answer."""
    worker = make_worker("llava")
    task = worker.task
    options = task.check(task.Options(question=QUESTIONS[0], max_new_tokens=6))
    image = photo("chelsea").convert("RGB")
    quiet, loud = task.prepare(image, options), task.prepare(image, options)

    def broken(_text: str) -> None:
        raise RuntimeError("listener fault")

    loud.on_text = broken
    expected = task.predict([quiet], [options])  # collate, forward and split, here
    assert task.predict([loud], [options]) == expected


def test_usage_counts_every_generated_token_up_to_the_end_token(make_worker):
    """A pad token the model chose mid-answer is generated (and decoded away): it counts, and
    does not end the answer; the pads after a row that stopped early do not count."""
    task = make_worker("qwen2-vl").task
    eos, pad = task.model.generation_config.eos_token_id, task.tokenizer.pad_token_id
    eos = eos if isinstance(eos, int) else eos[0]
    options = task.check(task.Options(question="q", max_new_tokens=4))

    def ending(tokens: list[int]) -> tuple[int, str]:
        result = task._ending("text", torch.tensor(tokens), options)
        return result["completion_tokens"], result["finish_reason"]

    assert ending([5, pad, 7, 8]) == (4, "length")
    assert ending([5, eos, pad, pad]) == (2, "stop")
    assert ending([5, 6, pad, pad]) == (2, "stop")


def _one_turn(images: list, question: str) -> list[dict]:
    parts = [{"type": "image", "image": image} for image in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]


@pytest.mark.parametrize(
    "arch", ["llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "smolvlm", "paligemma"]
)
def test_one_question_about_several_images_equals_the_pipeline(make_worker, model_dir, arch):
    """`together`: one answer about all the job's images in order, as the image-text-to-text
    pipeline answers a turn holding them all; the 12 MP phone JPEG among them."""
    worker = make_worker(arch)
    reference = pipeline("image-text-to-text", model=str(model_dir(arch)))
    question = "what changed between these photos?"
    sets = [
        [encode(photo(name, size=None).convert("RGB")) for name in PHOTOS[:3]],
        [phone_jpeg("rocket"), encode(photo("chelsea", size=None).convert("RGB"))],
    ]
    for encoded in sets:
        job = {"question": question, "together": True, "max_new_tokens": 8}
        output = run_job(worker, {"images": [b64(data) for data in encoded], **job})
        (result,) = output["results"]  # one answer for the whole set
        upright = [Image.open(io.BytesIO(data)).convert("RGB") for data in encoded]
        expected = reference(
            text=_one_turn(upright, question), max_new_tokens=8, return_full_text=False
        )
        assert result["answer"] == expected[0]["generated_text"].strip()
        assert result["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("arch", ["llava", "qwen2-vl", "qwen2.5-vl", "smolvlm"])
def test_a_question_about_several_images_batches_with_single_image_jobs(make_worker, arch):
    worker = make_worker(arch, MAX_BATCH_SIZE=8, BATCH_WAIT_MS=100)
    images = [b64(photo(name)) for name in PHOTOS[:3]]
    jobs = [
        {"images": images[:2], "question": QUESTIONS[0], "together": True, "max_new_tokens": 6},
        {"image": images[2], "question": QUESTIONS[1], "max_new_tokens": 6},
        {"images": images[::-1], "question": QUESTIONS[2], "together": True, "max_new_tokens": 6},
    ]
    together = run_jobs(worker, jobs)
    alone = [run_job(worker, job) for job in jobs]
    assert [t["results"] for t in together] == [a["results"] for a in alone]
    assert [len(t["results"]) for t in together] == [1, 1, 1]
    # The order of the images is part of the question.
    swapped = run_job(worker, {**jobs[0], "images": images[1::-1]})
    assert together[0]["results"] != swapped["results"]


def test_a_question_about_several_images_is_bounded_and_fails_with_the_image_that_failed_it(
    make_worker,
):
    worker = make_worker("llava", MAX_IMAGES_PER_QUESTION=3)
    images = [b64(photo(name)) for name in PHOTOS[:4]]
    too_many = run_job(worker, {"images": images, "question": "a?", "together": True})
    assert too_many["error_code"] == "invalid_input"
    assert "at most 3 images in one question (MAX_IMAGES_PER_QUESTION), got 4" in too_many["error"]
    several = run_job(worker, {"images": images[:2], "questions": ["a?", "b?"], "together": True})
    assert '"together" asks one "question"' in several["error"]
    broken = run_job(
        worker, {"images": [images[0], "bm90IGFuIGltYWdl"], "question": "a?", "together": True}
    )
    (result,) = broken["results"]
    assert result["error"]["code"] == "invalid_image"
    assert result["error"]["message"].startswith("image 1: ")


# --- PaliGemma's location tokens as boxes -----------------------------------------------------
def test_paligemma_location_groups_parse_into_boxes_in_the_photos_pixels():
    from vision_worker.tasks.paligemma_outputs import paligemma_detections

    size = (2048, 1024)  # width, height: x and y scale separately (the square input stretched)
    answer = (
        "<loc0256><loc0512><loc0768><loc1023> cat ; "
        "<loc0000><loc0100><loc0500><loc0300> traffic light ; <loc0010><loc0020>"
    )
    assert paligemma_detections(answer, size) == [
        {"label": "cat", "box": {"xmin": 1024.0, "ymin": 256.0, "xmax": 2046.0, "ymax": 768.0}},
        {
            "label": "traffic light",  # a label with a space; the cut group after it makes none
            "box": {"xmin": 200.0, "ymin": 0.0, "xmax": 600.0, "ymax": 500.0},
        },
    ]
    # Spaces between the tokens (some tokenizers decode added tokens so); a run of eight is two
    # boxes, the first without a label; a segmentation's 16 <seg> codes are skipped (no mask).
    spaced = "<loc0512> <loc0512> <loc1000> <loc1000> dog"
    assert paligemma_detections(spaced, (1024, 1024)) == [
        {"label": "dog", "box": {"xmin": 512.0, "ymin": 512.0, "xmax": 1000.0, "ymax": 1000.0}}
    ]
    eight = "<loc0001><loc0002><loc0003><loc0004><loc0005><loc0006><loc0007><loc0008> a b"
    assert [d["label"] for d in paligemma_detections(eight, (1024, 1024))] == ["", "a b"]
    segment = "<loc0100><loc0200><loc0300><loc0400>" + "<seg042>" * 16 + " cat"
    (found,) = paligemma_detections(segment, (1024, 1024))
    assert found == {
        "label": "cat",
        "box": {"xmin": 200.0, "ymin": 100.0, "xmax": 400.0, "ymax": 300.0},
    }
    # Only partial groups: location tokens, no box. No location token: no detections at all.
    assert paligemma_detections("<loc0001><loc0002><loc0003> cat", size) == []
    assert paligemma_detections("a cat on a couch", size) is None
    assert paligemma_detections("<loc9999><loc0000><loc0001><loc0002> x", size) == []


def _paligemma_answer_of(task, item, options, new_tokens: list[int]) -> dict:
    """The ask task's result for an image whose generated tokens are `new_tokens` (after its
    prompt), through split and encode as the worker runs them."""
    prompt = item.inputs["input_ids"]
    generated = torch.cat([prompt, torch.tensor([new_tokens])], dim=1)
    (output,) = task.split((generated, prompt.shape[1]), [item], [options])
    return task.encode(output, item.meta, options)


def test_paligemma_boxes_land_in_the_upright_phone_photos_pixels(make_worker):
    """Location tokens in a PaliGemma answer become boxes in the 12 MP photo's pixels (4032 x
    3024 upright), for the JPEG, its EXIF-6 twin (stored 3024 x 4032) and a 1/8-scale decode."""
    from conftest import rotated_twin
    from vision_worker.images import ImageLimits, draft_for, finish_decode, open_image

    worker = make_worker("paligemma")
    task = worker.task
    options = task.check(task.Options(question="detect cat ; dog", max_new_tokens=16))
    tokenizer = task.tokenizer
    locations = tokenizer.convert_tokens_to_ids(
        [f"<loc{b:04d}>" for b in (256, 512, 768, 1023, 0, 100, 500, 300)]
    )
    words = [tokenizer(f" {w}", add_special_tokens=False).input_ids for w in ("cat", "big dog")]
    new_tokens = [*locations[:4], *words[0], *locations[4:], *words[1], tokenizer.eos_token_id]
    # By hand: x = bin / 1024 * 4032, y = bin / 1024 * 3024.
    expected = [
        {"label": "cat", "box": {"xmin": 2016.0, "ymin": 756.0, "xmax": 4028.06, "ymax": 2268.0}},
        {
            "label": "big dog",
            "box": {"xmin": 393.75, "ymin": 0.0, "xmax": 1181.25, "ymax": 1476.56},
        },
    ]
    drafted = open_image(rotated_twin("chelsea"), ImageLimits(50_000_000, 50_000_000))
    draft_for(drafted, {"shortest_edge": 224}, "fast")
    drafted = finish_decode(drafted)
    assert drafted.size == (504, 378)
    items = [
        worker.prepare_now(b64(phone_jpeg("chelsea")), options),
        worker.prepare_now(b64(rotated_twin("chelsea")), options),
        task.prepare(drafted, options),
    ]
    for item in items:
        result = _paligemma_answer_of(task, item, options, new_tokens)
        assert "<loc0256>" in result["answer"]  # the answer stays the model's text
        assert result["detections"] == expected
        assert result["finish_reason"] == "stop"
    # An answer without location tokens has no detections.
    plain = _paligemma_answer_of(task, items[0], options, [*words[0], tokenizer.eos_token_id])
    assert plain["answer"] == "cat"
    assert "detections" not in plain


def test_paligemma_jobs_give_the_boxes_of_their_answers(make_worker):
    """A whole job on the tiny PaliGemma: its random weights write location tokens, and each
    result's detections are its answer's groups in the phone photo's pixels (twin included);
    other architectures never get the key."""
    from conftest import PHONE, rotated_twin
    from vision_worker.tasks.paligemma_outputs import paligemma_detections

    worker = make_worker("paligemma")
    job = {"question": "detect cat ; dog", "max_new_tokens": 24}
    images = [b64(phone_jpeg("chelsea")), b64(rotated_twin("chelsea")), b64(photo("coffee"))]
    results = run_job(worker, {"images": images, **job})["results"]
    sizes = [PHONE, PHONE, (96, 64)]
    for result, size in zip(results, sizes, strict=True):
        # The key only where the answer holds location tokens (None: no key).
        assert result.get("detections") == paligemma_detections(result["answer"], size)
    assert any(result.get("detections") for result in results)  # some answer has a whole box
    other = run_job(make_worker("llava"), {"image": images[0], **job})["results"][0]
    assert "detections" not in other


# Per-job resolution: the processor's `size` for this call, as the pipeline's processor_kwargs.
_RESOLUTIONS = {
    # tiny Qwen2-VL/Qwen2.5-VL: own 56*56 to 112*112 px (4 to 16 image tokens)
    "qwen2-vl": ({"max_pixels": 56 * 84}, {"shortest_edge": 56 * 56, "longest_edge": 56 * 84}),
    "qwen2.5-vl": ({"max_pixels": 56 * 84}, {"shortest_edge": 56 * 56, "longest_edge": 56 * 84}),
    # tiny SmolVLM: own longest edge 64 px, tiles of 32 px
    "smolvlm": ({"longest_edge": 96}, {"longest_edge": 96}),
}


@pytest.mark.parametrize("arch", ["qwen2-vl", "qwen2.5-vl", "smolvlm"])
def test_a_resolution_set_per_job_equals_the_pipeline_with_those_processor_kwargs(
    make_worker, model_dir, arch
):
    """min_pixels/max_pixels (Qwen2-VL's pixel budget) and longest_edge (SmolVLM's tiling) are
    the processor's `size` for this call: a real photo, the 12 MP phone JPEG, and both in one
    question, each as the pipeline answers with the same processor kwargs."""
    worker = make_worker(arch)
    reference = pipeline("image-text-to-text", model=str(model_dir(arch)))
    options, size = _RESOLUTIONS[arch]
    question = QUESTIONS[0]
    encoded = [encode(photo("chelsea", size=None).convert("RGB")), phone_jpeg("rocket")]
    upright = [Image.open(io.BytesIO(data)).convert("RGB") for data in encoded]
    job = {"question": question, "max_new_tokens": 8, **options}
    default = run_job(worker, {"images": [b64(d) for d in encoded], **job} | dict.fromkeys(options))
    alone = run_job(worker, {"images": [b64(d) for d in encoded], **job})
    together = run_job(worker, {"images": [b64(d) for d in encoded], "together": True, **job})
    for image, result in zip(upright, alone["results"], strict=True):
        expected = reference(
            text=_one_turn([image], question),
            max_new_tokens=8,
            return_full_text=False,
            processor_kwargs={"size": size},
        )
        assert result["answer"] == expected[0]["generated_text"].strip()
    expected = reference(
        text=_one_turn(upright, question),
        max_new_tokens=8,
        return_full_text=False,
        processor_kwargs={"size": size},
    )
    assert together["results"][0]["answer"] == expected[0]["generated_text"].strip()
    for ours, own in zip(alone["results"], default["results"], strict=True):
        assert ours["usage"]["prompt_tokens"] != own["usage"]["prompt_tokens"]


@pytest.mark.parametrize("arch", ["qwen2-vl", "qwen2.5-vl"])
def test_the_pixel_budget_sets_the_number_of_image_tokens(make_worker, arch):
    """28x28 px an image token: the tiny processors' own budget is 56*56 to 112*112 px."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    worker = make_worker(arch)
    image = b64(photo("chelsea", size=None).convert("RGB"))  # 451x300: the own max applies

    def prompt_tokens(**options) -> int:
        job = {"image": image, "question": "q", "max_new_tokens": 1, **options}
        return run_job(worker, job)["results"][0]["usage"]["prompt_tokens"]

    def image_tokens(budget: int) -> int:  # the processor's own rounding, 28 px a token
        height, width = smart_resize(300, 451, factor=28, min_pixels=784, max_pixels=budget)
        return height // 28 * (width // 28)

    own = prompt_tokens()
    budgets = [28 * 28, 56 * 56, 224 * 224]
    counts = [prompt_tokens(min_pixels=28 * 28, max_pixels=budget) for budget in budgets]
    assert counts[0] < counts[1] < own < prompt_tokens(min_pixels=224 * 224, max_pixels=224 * 224)
    for budget, count in zip(budgets, counts, strict=True):
        assert count - own == image_tokens(budget) - image_tokens(112 * 112)
    assert image_tokens(28 * 28) == 1  # the least: one image token
    assert prompt_tokens(max_pixels=112 * 112) == own  # the processor's own, given


@pytest.mark.parametrize(
    ("arch", "job", "message"),
    [
        ("qwen2-vl", {"max_pixels": 20_000}, '"max_pixels" must be between 1 and 12544 '),
        ("qwen2.5-vl", {"min_pixels": 12545}, "(MAX_VLM_PIXELS), got 12545"),
        ("qwen2-vl", {"min_pixels": 9000, "max_pixels": 5000}, '"min_pixels" (9000) must not'),
        ("qwen2-vl", {"max_pixels": 1000}, '"min_pixels" (3136) must not exceed "max_pixels"'),
        ("qwen2-vl", {"longest_edge": 64}, '"longest_edge" does not apply to this model'),
        ("smolvlm", {"longest_edge": 257}, "between 1 and 256 (MAX_VLM_LONGEST_EDGE), got 257"),
        ("smolvlm", {"max_pixels": 5000}, 'SmolVLMImageProcessor, which takes "longest_edge"'),
        ("llava", {"max_pixels": 5000}, "which takes none of them"),
        ("paligemma", {"longest_edge": 64}, '"longest_edge" does not apply'),
    ],
)
def test_resolutions_are_bounded_and_refused_where_the_processor_takes_none(
    make_worker, arch, job, message
):
    worker = make_worker(arch, MAX_VLM_PIXELS=112 * 112, MAX_VLM_LONGEST_EDGE=256)
    output = run_job(worker, {"image": b64(photo("chelsea")), "question": "q", **job})
    assert output["error_code"] == "invalid_input"
    assert message in output["error"]
    assert output["error"].count(". ") == 0  # one sentence


@pytest.mark.parametrize("arch", ["qwen2.5-vl", "smolvlm"])
def test_jobs_of_different_resolutions_batched_equal_alone(make_worker, arch):
    """The resolution changes the pixel and prompt shapes of an image, not the batch's: jobs
    with different ones share a batch and answer as they do alone."""
    worker = make_worker(arch, MAX_BATCH_SIZE=8, BATCH_WAIT_MS=200)
    if arch == "smolvlm":
        resolutions = [{"longest_edge": edge} for edge in (32, 64, 160)]
    else:
        resolutions = [{"min_pixels": 784, "max_pixels": 784}, {"max_pixels": 56 * 56}, {}]
    image = b64(photo("chelsea", size=None).convert("RGB"))
    jobs = [
        {"image": image, "question": QUESTIONS[0], "max_new_tokens": 6, **resolution}
        for resolution in resolutions
    ]
    together = run_jobs(worker, jobs)
    assert worker.batcher.batch_sizes.get(3), "the three jobs must have shared one batch"
    alone = [run_job(worker, job) for job in jobs]
    assert [t["results"] for t in together] == [a["results"] for a in alone]
    assert len({a["results"][0]["usage"]["prompt_tokens"] for a in alone}) == 3
