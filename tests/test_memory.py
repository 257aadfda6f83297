"""Decoded-image memory is bounded for the whole process, whatever within-limit inputs arrive."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vision_worker.images import to_rgb
from vision_worker.memory import DecodeBudget, decoded_cost

TESTS = Path(__file__).resolve().parent


def test_many_large_16_bit_pngs_stay_within_the_decode_budget(model_dir):
    """Two jobs of six 6300x6300 16-bit PNGs (each within MAX_IMAGE_PIXELS): decoded all at once
    they peaked at ~6 GiB before the budget; with a 600 MiB budget the process stays near it."""
    budget_mib = 600
    done = subprocess.run(
        [
            sys.executable,
            str(TESTS / "rss_probe.py"),
            str(model_dir("vit")),
            "2",
            "6",
            "6300",
            f"DECODE_MEMORY_MB={budget_mib}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["failed"] == []  # under pressure jobs slow down; none fails
    assert measured["waits"] > 0
    # The budget, plus one image allowed past it, plus allocator slack.
    assert measured["peak_mib"] - measured["idle_mib"] < budget_mib + 500, measured


@pytest.mark.parametrize("arch", ["depth-anything", "segformer"])
def test_dense_outputs_at_40_mp_stay_within_the_budget(model_dir, arch):
    """Depth maps and masks are made at the photo's size (a 40 MP float map is 160 MB; the
    pipeline's 10-class upsampling alone 1.6 GB): each result reserves what it will hold from
    the same budget as decodes, so two jobs of 40 MP photos stay near it."""
    budget_mib = 600
    done = subprocess.run(
        [
            sys.executable,
            str(TESTS / "rss_probe.py"),
            str(model_dir(arch)),
            "2",
            "2",
            "6300",
            f"DECODE_MEMORY_MB={budget_mib}",
            "MAX_OUTPUT_MB=1000",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["failed"] == []
    assert measured["waits"] > 0
    assert measured["peak_mib"] - measured["idle_mib"] < budget_mib + 500, measured


def test_a_reservation_waits_for_room_and_an_oversized_one_runs_alone():
    budget = DecodeBudget(100)
    order: list[str] = []
    with budget.reserve(60):

        def second() -> None:
            with budget.reserve(60):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.1)
        assert order == []  # no room until the first is released
        assert budget.waits == 1
        order.append("first done")
    thread.join(timeout=5)
    assert order == ["first done", "second"]
    with budget.reserve(10_000):  # larger than the budget: takes all of it, does not deadlock
        assert budget.in_use == 100
    assert budget.in_use == 0


def test_decoded_cost_grows_with_pixels_and_bit_depth():
    assert decoded_cost(100, 100, "I;16") > decoded_cost(100, 100, "L")
    assert decoded_cost(6300, 6300, "RGB") > 500 * 1024 * 1024


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_conversion_matches_float_scaling_without_float64(mode):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (64, 48), dtype=np.uint16 if mode == "I;16" else np.int32)
    image = (
        Image.fromarray(values.astype(np.uint16)).convert(mode)
        if mode == "I"
        else (Image.fromarray(values))
    )
    expected = np.clip(values.astype(np.float64) / 65535 * 255, 0, 255).astype(np.uint8)
    converted = np.asarray(to_rgb(image))
    assert converted.shape == (64, 48, 3)
    assert np.array_equal(converted[..., 0], expected)


def test_model_inputs_waiting_for_the_model_hold_their_bytes_from_the_budget(model_dir):
    """A model slower than decoding: prepared inputs queue for it. Each holds its bytes from the
    budget until its forward pass is done, so under a slow model images wait to be decoded
    instead of piling up as tensors (a 13-tile GOT page is 160 MB of them, a job 64 pages)."""
    from conftest import b64, photo, run_jobs
    from vision_worker.settings import load_settings
    from vision_worker.worker import Worker

    worker = Worker.start(
        load_settings(MODEL_NAME=str(model_dir("vit")), WARMUP=False, MAX_BATCH_SIZE=4)
    )
    image = b64(photo("chelsea"))
    item = worker.prepare_now(image, worker.task.check(worker.task.Options()))
    item_bytes = sum(t.nbytes for t in item.inputs.values())
    opened = decoded_cost(96, 64, "RGB")
    # Room for one decode and about 20 waiting inputs: 256 images must queue a few at a time.
    worker.decode_budget.total_bytes = opened + 20 * item_bytes
    queued, forward = [], worker.batcher._run_batch

    def slow_forward(items, options):
        queued.append(worker.batcher.queue_depth + len(items))
        time.sleep(0.02)
        return forward(items, options)

    worker.batcher._run_batch = slow_forward
    outputs = run_jobs(worker, [{"images": [image] * 64}] * 4)
    assert all("labels" in r for output in outputs for r in output["results"]), outputs[0]
    assert max(queued) * item_bytes <= worker.decode_budget.total_bytes, (max(queued), item_bytes)
    assert worker.decode_budget.in_use == 0  # every reservation went back


def test_a_job_cancelled_while_its_images_are_prepared_gives_their_bytes_back(model_dir):
    """Images being prepared when their job is cancelled finish on their threads: the bytes
    their inputs hold go back, or every cancel would shrink the budget until nothing ran."""
    import asyncio

    from conftest import _LOOP, b64, photo
    from vision_worker.settings import load_settings
    from vision_worker.worker import Worker

    worker = Worker.start(load_settings(MODEL_NAME=str(model_dir("vit")), WARMUP=False))
    prepare = worker.task.prepare

    def slow_prepare(image, options):
        time.sleep(0.2)
        return prepare(image, options)

    worker.task.prepare = slow_prepare

    async def cancelled_mid_prepare() -> None:
        job = asyncio.ensure_future(worker.run({"images": [b64(photo("coffee"))] * 16}))
        await asyncio.sleep(0.1)  # every image thread is inside prepare now
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await asyncio.sleep(1.0)  # the threads finish the images they had

    _LOOP.run_until_complete(cancelled_mid_prepare())
    assert worker.decode_budget.in_use == 0
