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


def _vit_worker(model_dir, room_for_items: int | None = None, **settings):
    """A tiny ViT worker; with `room_for_items`, an image memory budget of one decode of the
    test photo plus that many prepared items' inputs. Returns the worker, the photo (base64)
    and one item's input bytes."""
    from conftest import b64, photo
    from vision_worker.settings import load_settings
    from vision_worker.worker import Worker

    worker = Worker.start(load_settings(MODEL_NAME=str(model_dir("vit")), WARMUP=False, **settings))
    image = b64(photo("coffee"))
    item = worker.prepare_now(image, worker.task.check(worker.task.Options()))
    item_bytes = sum(t.nbytes for t in item.inputs.values())
    if room_for_items is not None:
        worker.decode_budget.total_bytes = decoded_cost(96, 64, "RGB") + room_for_items * item_bytes
    return worker, image, item_bytes


def _slow_model(worker, seconds: float, before=lambda items: None) -> None:
    """The worker's forward passes take `seconds` longer; `before(items)` sees each batch."""
    forward = worker.batcher._run_batch

    def slow_forward(items, options):
        before(items)
        time.sleep(seconds)
        return forward(items, options)

    worker.batcher._run_batch = slow_forward


def test_model_inputs_waiting_for_the_model_hold_their_bytes_from_the_budget(model_dir):
    """A model slower than decoding: prepared inputs queue for it. Each holds its bytes from the
    budget until its forward pass is done, so under a slow model images wait to be decoded
    instead of piling up as tensors (a 13-tile GOT page is 160 MB of them, a job 64 pages)."""
    from conftest import run_jobs

    # Room for one decode and 20 waiting inputs: 256 images must queue a few at a time.
    worker, image, item_bytes = _vit_worker(model_dir, room_for_items=20, MAX_BATCH_SIZE=4)
    queued: list[int] = []
    _slow_model(worker, 0.02, lambda items: queued.append(worker.batcher.queue_depth + len(items)))
    outputs = run_jobs(worker, [{"images": [image] * 64}] * 4)
    assert all("labels" in r for output in outputs for r in output["results"]), outputs[0]
    assert max(queued) * item_bytes <= worker.decode_budget.total_bytes, (max(queued), item_bytes)
    assert worker.decode_budget.in_use == 0  # every reservation went back


def test_a_job_cancelled_while_its_images_are_prepared_gives_their_bytes_back(model_dir):
    """Images being prepared when their job is cancelled finish on their threads: the bytes
    their inputs hold go back, or every cancel would shrink the budget until nothing ran."""
    import asyncio

    from conftest import _LOOP

    worker, image, _ = _vit_worker(model_dir)
    prepare = worker.task.prepare

    def slow_prepare(image, options):
        time.sleep(0.2)
        return prepare(image, options)

    worker.task.prepare = slow_prepare

    async def cancelled_mid_prepare() -> None:
        job = asyncio.ensure_future(worker.run({"images": [image] * 16}))
        await asyncio.sleep(0.1)  # every image thread is inside prepare now
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await asyncio.sleep(1.0)  # the threads finish the images they had

    _LOOP.run_until_complete(cancelled_mid_prepare())
    assert worker.decode_budget.in_use == 0


def test_cancelling_a_job_mid_batch_leaves_the_other_jobs_images_alone(model_dir):
    """Two jobs share a batch whose first try runs out of GPU memory; one is cancelled while it
    runs. The halves run again on their inputs: the other job still gets its labels."""
    import asyncio

    from conftest import _LOOP

    worker, image, _ = _vit_worker(model_dir, MAX_BATCH_SIZE=4, BATCH_WAIT_MS=300)
    forward, calls = worker.batcher._run_batch, []

    def out_of_memory_first(items, options):
        calls.append(len(items))
        if len(calls) == 1:
            time.sleep(0.5)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(items, options)

    worker.batcher._run_batch = out_of_memory_first

    async def one_cancelled() -> dict:
        cancelled = asyncio.ensure_future(worker.run({"image": image}))
        kept = asyncio.ensure_future(worker.run({"image": image}))
        while not calls:
            await asyncio.sleep(0.01)
        cancelled.cancel()
        return await kept

    kept = _LOOP.run_until_complete(one_cancelled())
    assert calls[0] == 2, calls
    assert "labels" in kept["results"][0], kept
    assert worker.decode_budget.in_use == 0


def test_downloads_do_not_time_out_queued_behind_decodes_waiting_for_a_slow_model(
    model_dir, httpserver
):
    """Under a model slower than decoding, decodes wait for memory on the image threads; a URL
    image of another job downloads on its own threads, within its deadline."""
    import asyncio

    from conftest import _LOOP, encode, photo

    png = encode(photo("coffee"), "PNG")
    httpserver.expect_request("/coffee.png").respond_with_data(png, content_type="image/png")
    worker, image, _ = _vit_worker(
        model_dir,
        room_for_items=3,
        MAX_BATCH_SIZE=2,
        IMAGE_THREADS=2,
        URL_TIMEOUT_S=1,
        ALLOW_PRIVATE_URLS=True,
    )
    _slow_model(worker, 0.4)

    async def url_job_behind_a_big_one() -> tuple[dict, dict]:
        big = asyncio.ensure_future(worker.run({"images": [image] * 24}))
        await asyncio.sleep(0.3)
        return await worker.run({"image": httpserver.url_for("/coffee.png")}), await big

    from_url, big = _LOOP.run_until_complete(url_job_behind_a_big_one())
    assert "labels" in from_url["results"][0], from_url
    assert all("labels" in r for r in big["results"])


def test_a_batch_does_not_wait_for_images_that_wait_for_its_own_memory(model_dir):
    """Room for three images' inputs, batches of eight: the images still to come wait for room
    that only this batch's forward pass gives back, so the batch runs without waiting for
    them (with BATCH_WAIT_MS=10 s, each batch waited its full ten seconds)."""
    from conftest import run_job

    worker, image, _ = _vit_worker(
        model_dir, room_for_items=3, MAX_BATCH_SIZE=8, BATCH_WAIT_MS=10_000, IMAGE_THREADS=4
    )
    waits, on_batch = [], worker.batcher._on_batch

    def recorded(size, waited, model_s):
        waits.extend(waited)
        on_batch(size, waited, model_s)

    worker.batcher._on_batch = recorded
    output = run_job(worker, {"images": [image] * 12})
    assert all("labels" in r for r in output["results"]), output
    assert max(waits) < 5.0, max(waits)  # far under the 10 s window a partial batch may wait
