"""Bad images fail alone with a structured error; invalid jobs fail whole with one sentence."""

from __future__ import annotations

import base64

import pytest

from conftest import b64, encode, noise_image, photo, run_job


@pytest.fixture(scope="module")
def worker(make_worker):
    return make_worker(
        "vit-gpt2", MAX_IMAGE_BYTES=50_000, MAX_IMAGE_PIXELS=250_000, MAX_IMAGES_PER_JOB=8
    )


def _errors(output: dict) -> list:
    return [r.get("error") for r in output["results"]]


PNG = b64(noise_image(1))


@pytest.mark.parametrize(
    ("image", "code", "phrase"),
    [
        ("!!!not base64!!!", "invalid_image", "not valid base64"),
        (base64.b64encode(b"hello, I am text").decode(), "invalid_image", "not a decodable image"),
        (b64(encode(noise_image(2))[:200]), "invalid_image", "not a decodable image"),
        (b64(b"<html><body>404</body></html>"), "invalid_image", "HTML page"),
        (
            b64(b'<svg xmlns="http://www.w3.org/2000/svg"/>'),
            "invalid_image",
            "SVG is not supported",
        ),
        ("", "invalid_image", "empty"),
        ("data:text/plain;base64,aGVsbG8=", "invalid_image", "not an image"),
        ("data:image/png,rawbytes", "invalid_image", "only base64 data URIs"),
        (b64(photo("astronaut", (600, 600)), "BMP"), "too_large", "over the 50000-byte limit"),
        (b64(photo("coffee", (600, 500)), "JPEG"), "too_large", "pixels, limit 250000"),
        ("file:///etc/passwd", "forbidden_url", "only http and https"),
        ("ftp://example.com/cat.jpg", "forbidden_url", "only http and https"),
    ],
)
def test_a_bad_image_fails_alone_with_its_code(worker, image, code, phrase):
    output = run_job(worker, {"images": [PNG, image, PNG], "max_new_tokens": 4})
    first, bad, last = output["results"]
    assert "caption" in first
    assert "caption" in last
    assert bad["error"]["code"] == code
    assert bad["error"]["message"].startswith("image 1: ")
    assert phrase in bad["error"]["message"]


def test_truncated_jpeg_is_invalid_not_a_crash(worker):
    jpeg = encode(photo("chelsea", (200, 150)), "JPEG")
    output = run_job(worker, {"image": b64(jpeg[: len(jpeg) // 2])})
    assert _errors(output)[0]["code"] == "invalid_image"


def test_base64_far_over_the_limit_is_refused_before_decoding(worker):
    huge = "A" * 5_000_000
    output = run_job(worker, {"image": huge})
    assert _errors(output)[0]["code"] == "too_large"


@pytest.mark.parametrize(
    ("job_input", "sentence"),
    [
        ({}, 'give either "images" (a list) or "image"'),
        ({"images": []}, '"images" is empty'),
        ({"images": PNG}, 'invalid "images": Input should be a valid list'),
        ({"image": PNG, "images": [PNG]}, "not both"),
        ({"images": [PNG] * 9}, "too many images: 9 given, at most 8 per job"),
        ({"images": [PNG, 7]}, 'invalid "images.1": Input should be a valid string'),
        ({"image": PNG, "task": "classify"}, 'task "classify" is not served here'),
        ({"image": PNG, "max_new_tokens": "5"}, 'invalid "max_new_tokens"'),
        ({"image": PNG, "max_new_tokens": 0}, 'invalid "max_new_tokens"'),
        (
            {"image": PNG, "max_new_tokens": 100_000},
            '"max_new_tokens" must be between 1 and 63 for this model',
        ),
        ({"image": PNG, "num_beams": 6}, '"num_beams" must be between 1 and 5'),
        ({"image": PNG, "num_beams": True}, 'invalid "num_beams"'),
        ({"image": PNG, "top_k": 3}, 'option "top_k" does not apply to task "caption"'),
        ({"image": PNG, "prompt": "hi"}, '"prompt" is not supported by vision-encoder-decoder'),
        ({"image": PNG, "colour": "red"}, 'unknown input key "colour"'),
        ("just a string", '"input" must be a JSON object, got string'),
        (None, '"input" must be a JSON object, got null'),
    ],
)
def test_an_invalid_job_fails_whole_with_one_sentence(worker, job_input, sentence):
    output = run_job(worker, job_input)
    assert set(output) == {"error", "error_code"}
    assert output["error_code"] == ("too_large" if "too many" in sentence else "invalid_input")
    assert sentence in output["error"]
    assert "\n" not in output["error"]


def test_classify_top_k_is_bounded_by_the_label_count(make_worker):
    output = run_job(make_worker("vit"), {"image": PNG, "top_k": 11})
    assert output == {
        "error": '"top_k" must be between 1 and 10, got 11',
        "error_code": "invalid_input",
    }


def test_the_worker_keeps_serving_after_bad_jobs(worker):
    for bad in (None, {"images": [1]}, {"image": "x" * 10}, {"image": "file:///"}):
        run_job(worker, bad)
    assert "caption" in run_job(worker, {"image": PNG})["results"][0]


def test_a_model_error_fails_the_images_of_its_batch_not_the_worker(make_worker, monkeypatch):
    worker = make_worker("resnet", MAX_BATCH_SIZE=4)

    def broken(images, options):
        # A model error, not a device fault (those replace the worker: test_device_fault.py).
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x7 and 8x10)")

    monkeypatch.setattr(worker.batcher, "_run_batch", broken)
    output = run_job(worker, {"images": [PNG, PNG]})
    assert [e["code"] for e in _errors(output)] == ["inference_failed"] * 2
    assert "shapes cannot be multiplied" in output["results"][0]["error"]["message"]
    assert worker.broken is None
    monkeypatch.undo()
    assert "labels" in run_job(worker, {"image": PNG})["results"][0]


def test_a_bug_fails_the_job_as_internal_and_the_worker_keeps_serving(worker, monkeypatch):
    def broken_check(options):
        raise KeyError("a bug")

    monkeypatch.setattr(worker.task, "check", broken_check)
    output = run_job(worker, {"image": PNG})
    assert output == {"error": "internal error: KeyError: 'a bug'", "error_code": "internal"}
    monkeypatch.undo()
    assert "caption" in run_job(worker, {"image": PNG})["results"][0]
