"""Hostile input: the corpus image by image, then job JSON of every wrong shape, generated."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_job
from corpus import GOOD, IMAGES


@pytest.fixture(scope="module")
def worker(make_worker):
    # Limits small enough that the corpus's large entries cross them.
    return make_worker(
        "resnet",
        MAX_IMAGE_BYTES=1_000_000,
        MAX_IMAGE_PIXELS=20_000_000,
        MAX_IMAGES_PER_JOB=16,
        URL_RETRIES=0,
    )


@pytest.mark.parametrize(("name", "image", "expected"), IMAGES, ids=[i[0] for i in IMAGES])
def test_corpus_image_fails_alone_with_its_code_or_succeeds(worker, name, image, expected):
    output = run_job(worker, {"images": [GOOD, image, GOOD]})
    first, result, last = output["results"]
    assert "labels" in first
    assert "labels" in last
    if expected is None:
        assert "labels" in result, result
    else:
        assert result["error"]["code"] == expected, result
        assert result["error"]["message"].startswith("image 1: ")
        assert len(result["error"]["message"]) < 400  # a message, not a dump of the input


def test_the_corpus_is_large_enough_to_mean_something():
    codes = {expected for _, _, expected in IMAGES}
    assert len(IMAGES) >= 35
    assert codes == {None, "invalid_image", "too_large", "forbidden_url"}


def test_a_whole_job_of_hostile_images_still_answers_every_one(worker):
    images = [image for _, image, _ in IMAGES if len(image) < 2_000_000][:16]
    output = run_job(worker, {"images": images})
    assert len(output["results"]) == len(images)


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["images", "image", "task", "top_k", "max_new_tokens", "num_beams"]
JOB_INPUTS = st.one_of(
    JSON_VALUES,
    st.dictionaries(st.sampled_from([*FIELDS, "extra", "prompt"]), JSON_VALUES, max_size=4),
    st.fixed_dictionaries(
        {
            "images": st.lists(
                st.sampled_from([GOOD, "", "x", "data:image/png;base64,AAAA"]), max_size=20
            )
        },
        optional={
            "top_k": st.integers(-(2**70), 2**70) | JSON_SCALARS,
            "task": st.sampled_from(["classify", "caption", "", "CLASSIFY"]),
        },
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(job_input=JOB_INPUTS)
def test_any_job_input_gets_results_or_one_clear_error_never_an_exception(worker, job_input):
    output = run_job(worker, job_input)
    json.dumps(output)  # always serialisable: RunPod must be able to send it back
    if "error" in output:
        assert set(output) == {"error", "error_code"}
        assert output["error_code"] in {"invalid_input", "too_large"}
        assert isinstance(output["error"], str)
        assert output["error"]
        assert "Traceback" not in output["error"]
        assert not output["error"].startswith("internal error"), output["error"]
    else:
        assert len(output["results"]) == len(job_input.get("images") or [job_input.get("image")])


@pytest.mark.parametrize(
    ("job_input", "phrase"),
    [
        ({"images": [[[[[[[[[[[GOOD]]]]]]]]]]]}, 'invalid "images.0"'),
        ({"images": [GOOD] * 100_000}, "too many images: 100000 given, at most 16"),
        ({"image": GOOD, "x" * 10_000: 1}, "unknown input key"),
        ({"image": GOOD, "top_k": 2**200}, 'invalid "top_k"'),
        ({"image": GOOD, "top_k": -1}, 'invalid "top_k"'),
        ({"image": GOOD, "top_k": 1.5}, 'invalid "top_k"'),
        ({"image": GOOD, "top_k": float("nan")}, 'invalid "top_k"'),
        ({"image": {"url": "https://example.com/a.png"}}, 'invalid "image"'),
        ({"images": None, "image": None}, "give either"),
        ({"image": GOOD, "task": ["classify"]}, 'invalid "task"'),
    ],
)
def test_deep_huge_and_mistyped_inputs_get_one_sentence(worker, job_input, phrase):
    output = run_job(worker, job_input)
    assert set(output) == {"error", "error_code"}
    assert output["error_code"] in {"invalid_input", "too_large"}
    assert phrase in output["error"]
    assert len(output["error"]) < 500


def _nested(depth: int):
    value: object = GOOD
    for _ in range(depth):
        value = [value]
    return value


def test_pathologically_deep_nesting_is_an_error_not_a_recursion_crash(worker):
    output = run_job(worker, {"images": _nested(5000)})
    assert set(output) == {"error", "error_code"}
    assert output["error_code"] in {"invalid_input", "too_large"}
