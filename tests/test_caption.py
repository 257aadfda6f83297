"""Captions against the model cards' recipes on real photos, plain and prompted (conditional
captioning), batched and one at a time, with tiny BLIP / GIT / ViT-GPT2 built offline."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from conftest import CAPTION_ARCHS, PHOTOS, b64, photo, run_job, run_jobs

PROMPT = "a photo of"


def _recipe(model_dir, arch: str, image, prompt: str | None, max_new_tokens: int) -> str:
    """The model card's recipe: processor, generate, decode (the prompt stays in the caption)."""
    path = model_dir(arch)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    pixels = AutoImageProcessor.from_pretrained(path)(image, return_tensors="pt").pixel_values
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs = {}
    if prompt and arch == "blip":  # BlipProcessor(image, text): "[CLS] prompt [SEP]"
        kwargs["input_ids"] = tokenizer(prompt, return_tensors="pt").input_ids
    elif prompt and arch == "git":  # GIT's card: [CLS] + the prompt's tokens
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        kwargs["input_ids"] = torch.tensor([[tokenizer.cls_token_id, *ids]])
    with torch.inference_mode():
        out = model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens, **kwargs)
    return " ".join(tokenizer.decode(out[0], skip_special_tokens=True).split())


@pytest.mark.parametrize("arch", CAPTION_ARCHS)
def test_captions_equal_the_model_card_recipe_on_real_photos(make_worker, model_dir, arch):
    photos = [photo(name, size=None) for name in PHOTOS[:3]]
    output = run_job(make_worker(arch), {"images": [b64(p) for p in photos], "max_new_tokens": 8})
    expected = [_recipe(model_dir, arch, p, None, 8) for p in photos]
    assert [r["caption"] for r in output["results"]] == expected


@pytest.mark.parametrize("arch", ["blip", "git"])
def test_prompted_captions_equal_the_recipe_and_start_with_the_prompt(make_worker, model_dir, arch):
    photos = [photo(name, size=None) for name in PHOTOS[:3]]
    job = {"images": [b64(p) for p in photos], "max_new_tokens": 6, "prompt": PROMPT}
    captions = [r["caption"] for r in run_job(make_worker(arch), job)["results"]]
    assert captions == [_recipe(model_dir, arch, p, PROMPT, 6) for p in photos]
    assert all(c.startswith(PROMPT) for c in captions)


def test_jobs_with_different_prompts_batch_apart_and_get_their_own_captions(make_worker):
    worker = make_worker("blip", BATCH_WAIT_MS=50)
    image = b64(photo("chelsea"))
    jobs = [{"image": image, "max_new_tokens": 4, "prompt": p} for p in ("a photo of", "a cat")]
    jobs.append({"image": image, "max_new_tokens": 4})
    together = run_jobs(worker, jobs)
    alone = [run_job(worker, job) for job in jobs]
    assert [o["results"] for o in together] == [o["results"] for o in alone]
    assert together[1]["results"][0]["caption"].startswith("a cat")


@pytest.mark.parametrize(
    ("arch", "job", "message"),
    [
        ("vit-gpt2", {"prompt": "a photo of"}, "not supported by vision-encoder-decoder models"),
        ("git", {"prompt": "a " * 70}, "too long: with max_new_tokens=30 this model has room"),
        ("git", {"prompt": "x" * 1001}, "over 1000 characters"),
        ("blip", {"prompt": ""}, "prompt"),
    ],
)
def test_prompts_are_bounded_and_refused_where_the_model_takes_none(
    make_worker, arch, job, message
):
    output = run_job(make_worker(arch), {"image": b64(photo("coffee")), **job})
    assert message in output["error"]
