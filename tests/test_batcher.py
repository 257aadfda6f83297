"""The dynamic batcher alone: fill or wait, options never mixed, OOM splits, failures contained."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import weakref

import pytest
import torch

from vision_worker.batcher import DynamicBatcher
from vision_worker.device import is_out_of_memory
from vision_worker.errors import ImageError


class RecordingModel:
    """Doubles each item; records every batch it saw and can run out of memory above a size."""

    def __init__(self, oom_above: int | None = None, fail_on: object = None) -> None:
        self.batches: list[tuple[list, object]] = []
        self.oom_above = oom_above
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, items, options):
        self.threads.add(threading.current_thread().name)
        if self.oom_above is not None and len(items) > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.fail_on in items:
            raise ValueError("model blew up")
        # The batcher hands one options value per item; equal batch keys mean equal options here.
        assert len(options) == len(items)
        assert len(set(options)) == 1, f"options mixed in one batch: {options}"
        self.batches.append((list(items), options[0]))
        return [(item * 2, option) for item, option in zip(items, options, strict=True)]


def _batcher(model, **kwargs) -> DynamicBatcher:
    options = {"max_batch_size": 8, "max_wait_s": 0.02, "is_out_of_memory": is_out_of_memory}
    return DynamicBatcher(model, **{**options, **kwargs})


async def _job(batcher, items, options) -> list:
    return await asyncio.gather(
        *(batcher.submit(i, options) for i in items), return_exceptions=True
    )


def _model_held_on_its_first_batch():
    """A RecordingModel, a run_batch whose first batch waits for the gate, and the gate."""
    model, gate = RecordingModel(), threading.Event()

    def slow_first(batch, options):
        if not model.batches:
            gate.wait(5)
        return model(batch, options)

    return model, slow_first, gate


def _stage_thread() -> str:
    """The batcher thread running this stage: "model", "collate" or "split"."""
    return threading.current_thread().name.split("_")[0]


def _first_then_second(forward, **stages) -> list:
    """Items "first" and "second" submitted together, batches of one: their outputs."""
    batcher = DynamicBatcher(forward, **stages, max_batch_size=1, max_wait_s=0.0)

    async def main():
        return await asyncio.gather(batcher.submit("first", None), batcher.submit("second", None))

    return asyncio.run(main())


def test_many_jobs_with_mixed_options_get_exactly_their_own_results_in_order():
    model = RecordingModel()
    batcher = _batcher(model)
    rng = random.Random(0)
    jobs = [
        (list(range(100 * j, 100 * j + rng.randint(1, 12))), rng.choice("ab")) for j in range(40)
    ]

    async def main():
        return await asyncio.gather(*(_job(batcher, items, opt) for items, opt in jobs))

    results = asyncio.run(main())
    for (items, option), result in zip(jobs, results, strict=True):
        assert result == [(i * 2, option) for i in items]
    option_of = {item: option for items, option in jobs for item in items}
    assert all(option_of[item] == options for batch, options in model.batches for item in batch)
    assert all(len(batch) <= 8 for batch, _ in model.batches)
    # 40 jobs, ~260 images: batching must have packed them, not run one by one.
    assert len(model.batches) < sum(len(items) for items, _ in jobs) / 4
    assert model.threads == {"model_0"}


def test_options_are_never_mixed_in_one_batch():
    model = RecordingModel()
    batcher = _batcher(model)

    async def main():
        return await asyncio.gather(
            _job(batcher, [1, 2, 3], "short"), _job(batcher, [4, 5], "long")
        )

    asyncio.run(main())
    for items, options in model.batches:
        assert {i for i in items} <= ({1, 2, 3} if options == "short" else {4, 5})


def test_a_full_batch_runs_without_waiting_and_a_partial_one_waits_at_most_max_wait():
    model = RecordingModel()
    batcher = _batcher(model, max_wait_s=5.0, max_batch_size=4)

    async def main():
        loop = asyncio.get_running_loop()
        started = loop.time()
        await _job(batcher, [1, 2, 3, 4], None)
        return loop.time() - started

    assert asyncio.run(main()) < 1.0

    # Images still on their way (being decoded): a partial batch waits for them, at most max_wait.
    waiting = _batcher(RecordingModel(), max_wait_s=0.05, max_batch_size=64, incoming=lambda: 3)

    async def partial():
        loop = asyncio.get_running_loop()
        started = loop.time()
        await _job(waiting, [1], None)
        return loop.time() - started

    assert 0.04 <= asyncio.run(partial()) < 1.0


def test_a_lone_request_on_an_idle_model_runs_at_once_whatever_the_wait():
    model = RecordingModel()
    batcher = _batcher(model, max_wait_s=5.0, max_batch_size=64)  # nothing else incoming

    async def lone():
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.submit(7, None)
        return loop.time() - started

    assert asyncio.run(lone()) < 0.5
    assert model.batches == [([7], None)]


def test_items_queued_while_the_model_is_busy_form_the_next_batch():
    model, slow_first, gate = _model_held_on_its_first_batch()
    batcher = _batcher(slow_first, max_wait_s=5.0, max_batch_size=64)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0, None))
        await asyncio.sleep(0.05)  # the model is now busy with [0]
        rest = [batcher.enqueue(i, None) for i in range(1, 10)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(main())
    assert results == [(i * 2, None) for i in range(10)]
    assert [len(batch) for batch, _ in model.batches] == [1, 9]


def test_out_of_memory_splits_the_batch_and_lowers_the_working_size():
    model = RecordingModel(oom_above=3)
    batcher = _batcher(model, max_batch_size=8, max_wait_s=0.05)
    results = asyncio.run(_job(batcher, list(range(8)), None))
    assert results == [(i * 2, None) for i in range(8)]
    assert batcher.working_batch_size == 2  # 8 failed, 4 failed, halves of 2 fit
    assert all(len(batch) <= 3 for batch, _ in model.batches)
    # Later batches start at the working size and do not hit OOM again.
    model.batches.clear()
    asyncio.run(_job(batcher, list(range(6)), None))
    assert [len(b) for b, _ in model.batches] == [2, 2, 2]


def test_a_single_image_that_runs_out_of_memory_fails_alone():
    model = RecordingModel(oom_above=0)
    results = asyncio.run(_job(_batcher(model), [1, 2], None))
    assert all(isinstance(r, ImageError) and r.code == "inference_failed" for r in results)
    assert "out of memory" in results[0].message


def test_a_failing_batch_fails_its_items_and_the_batcher_keeps_running():
    model = RecordingModel(fail_on=13)
    batcher = _batcher(model, max_batch_size=2, max_wait_s=0.05)

    async def main():
        failed = await _job(batcher, [12, 13], None)
        fine = await _job(batcher, [1, 2, 3], None)
        return failed, fine

    failed, fine = asyncio.run(main())
    assert [r.code for r in failed] == ["inference_failed"] * 2
    assert "model blew up" in failed[0].message
    assert fine == [(2, None), (4, None), (6, None)]


def test_a_cancelled_waiter_is_skipped_not_run():
    model = RecordingModel()
    batcher = _batcher(model, max_wait_s=0.1)

    async def main():
        doomed = asyncio.ensure_future(batcher.submit(99, None))
        await asyncio.sleep(0)
        doomed.cancel()
        return await _job(batcher, [1], None)

    assert asyncio.run(main()) == [(2, None)]
    assert all(99 not in batch for batch, _ in model.batches)


def test_a_model_returning_the_wrong_count_is_an_error_not_a_silent_mismatch():
    batcher = _batcher(lambda items, options: items[:-1])
    results = asyncio.run(_job(batcher, [1, 2], None))
    assert all(isinstance(r, ImageError) for r in results)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("shape mismatch"), False),
    ],
)
def test_out_of_memory_detection(error, expected):
    assert is_out_of_memory(error) is expected


def test_a_lone_job_does_not_pay_the_batch_wait_and_a_many_image_job_still_batches(make_worker):
    import time

    from conftest import b64, photo, run_job

    worker = make_worker("resnet", BATCH_WAIT_MS=3000, MAX_BATCH_SIZE=64)
    image = b64(photo("chelsea"))
    run_job(worker, {"image": image})  # first run pays lazy initialisation
    started = time.monotonic()
    assert "labels" in run_job(worker, {"image": image})["results"][0]
    assert time.monotonic() - started < 1.0  # not 3 s: nothing else was on its way
    before = dict(worker.batcher.batch_sizes)
    run_job(worker, {"images": [image] * 12})
    new = {size: n - before.get(size, 0) for size, n in worker.batcher.batch_sizes.items()}
    assert {size: n for size, n in new.items() if n} == {12: 1}  # one batch, all 12 together


def test_post_processing_runs_off_the_model_thread_while_the_next_batch_runs():
    """split (decoding, box scaling, host copies) runs on its own thread, so a slow one does not
    hold the model: the second batch's forward pass starts before the first batch's split ends."""
    events: list[str] = []
    first_split_may_end = threading.Event()

    def forward(items, options):
        events.append(f"forward {items[0]} on {_stage_thread()}")
        if items[0] == "second":
            first_split_may_end.set()
        return list(items)

    def split(raw, items, options):
        events.append(f"split {raw[0]} on {_stage_thread()}")
        if raw[0] == "first":
            assert first_split_may_end.wait(timeout=30), "the model waited for post-processing"
        return [f"{item}!" for item in raw]

    assert _first_then_second(forward, split=split) == ["first!", "second!"]
    # The first split waited for the second forward pass, so they overlapped; each stage ran
    # on its own thread.
    assert sorted(events) == [
        "forward first on model",
        "forward second on model",
        "split first on split",
        "split second on split",
    ]


def test_an_out_of_memory_batch_is_split_per_half_after_its_halves_ran():
    model = RecordingModel(oom_above=2)
    seen: list[int] = []

    def split(raw, items, options):
        seen.append(len(items))
        return raw

    batcher = _batcher(model, split=split)

    async def main():
        return await _job(batcher, list(range(8)), "a")

    assert asyncio.run(main()) == [(i * 2, "a") for i in range(8)]
    assert seen == [2, 2, 2, 2]  # each half's raw output post-processed as its own


def test_forward_passes_run_at_most_two_batches_ahead_of_post_processing():
    """Each batch waiting for its split holds its raw output (GPU memory): a slow split must
    slow the model down, not pile outputs up."""
    ahead: list[int] = []
    finished_splits = []

    def forward(items, options):
        ahead.append(forwards_done() - len(finished_splits))
        return list(items)

    def split(raw, items, options):
        threading.Event().wait(0.05)
        finished_splits.append(raw[0])
        return raw

    batcher = DynamicBatcher(forward, split=split, max_batch_size=1, max_wait_s=0.0)
    forwards_done = lambda: len(ahead)  # noqa: E731

    async def main():
        return await asyncio.gather(*(batcher.submit(i, None) for i in range(8)))

    assert asyncio.run(main()) == list(range(8))
    assert max(ahead) <= 2


def test_the_next_full_batch_is_collated_on_its_own_thread_while_the_model_runs():
    """collate (stacking, padding, copies to the device) runs off the model thread: the second
    batch is collated while the first one's forward pass runs, and is ready when it ends."""
    events: list[str] = []
    second_collated = threading.Event()

    def collate(items, options):
        events.append(f"collate {items[0]} on {_stage_thread()}")
        if items[0] == "second":
            second_collated.set()
        return [f"{item}+" for item in items]

    def forward(batch, options):
        events.append(f"forward {batch[0]} on {_stage_thread()}")
        if batch[0] == "first+":
            assert second_collated.wait(timeout=30), "the next batch waited for the model"
        return list(batch)

    assert _first_then_second(forward, collate=collate) == ["first+", "second+"]
    # The first forward pass waited for the second collate, so they overlapped. The first
    # batch found the model idle: it was collated just before its pass, on the model thread.
    assert sorted(events) == [
        "collate first on model",
        "collate second on collate",
        "forward first+ on model",
        "forward second+ on model",
    ]


def test_a_collate_out_of_memory_is_halved_like_a_forward_pass():
    """Collating a large batch onto the device may run out of memory itself: the batch is
    collated again in halves, and every item gets its output."""
    collated: list[int] = []

    def collate(items, options):
        collated.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(items)

    batcher = _batcher(RecordingModel(), collate=collate)

    async def main():
        return await _job(batcher, list(range(8)), "a")

    assert asyncio.run(main()) == [(i * 2, "a") for i in range(8)]
    # Whole, then in halves of halves, each collated again.
    assert collated == [8, 4, 2, 2, 4, 2, 2]
    assert batcher.working_batch_size == 2


def test_a_partial_batch_waits_for_the_model_instead_of_being_collated_ahead():
    """Only a full batch is collated ahead: a partial one queued while the model is busy keeps
    taking in items until the model is free, as before collation moved off the model thread."""
    model, slow_first, gate = _model_held_on_its_first_batch()
    batcher = _batcher(slow_first, max_wait_s=0.0, max_batch_size=4)

    async def main():
        first = [batcher.enqueue(i, None) for i in range(4)]  # full: runs at once
        await asyncio.sleep(0.05)
        second = [batcher.enqueue(i, None) for i in range(4, 6)]
        await asyncio.sleep(0.05)
        third = [batcher.enqueue(i, None) for i in range(6, 8)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*first, *second, *third)

    assert asyncio.run(main()) == [(i * 2, None) for i in range(8)]
    assert [len(batch) for batch, _ in model.batches] == [4, 4]


class _Collated(list):
    """Stands in for a Batch holding device tensors (weak references tell when it is gone)."""


def _tracked_collate(refs: list):
    def collate(items, options):
        batch = _Collated(items)
        refs.append(weakref.ref(batch))
        return batch

    return collate


def test_a_batchs_collated_inputs_go_when_its_pass_ends():
    refs: list = []
    batcher = DynamicBatcher(
        lambda batch, options: list(batch),
        collate=_tracked_collate(refs),
        max_batch_size=4,
        max_wait_s=0.0,
    )

    async def main():
        assert await batcher.submit(1, None) == 1
        await asyncio.sleep(0.1)  # an idle worker
        gc.collect()
        return [ref() is not None for ref in refs]

    assert asyncio.run(main()) == [False]  # not kept until the next batch comes


def test_out_of_memory_halves_run_without_the_whole_batchs_inputs():
    refs: list = []
    whole_alive: list[bool] = []

    def forward(batch, options):
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        gc.collect()
        whole_alive.append(refs[0]() is not None)
        return list(batch)

    batcher = _batcher(forward, collate=_tracked_collate(refs), max_batch_size=4)

    async def main():
        return await asyncio.gather(*(batcher.enqueue(i, None) for i in range(4)))

    assert asyncio.run(main()) == [0, 1, 2, 3]
    assert whole_alive == [False, False]


def test_a_batch_collated_ahead_whose_jobs_were_cancelled_never_runs():
    ran: list[list] = []
    gate = threading.Event()

    def forward(batch, options):
        ran.append(list(batch))
        if batch[0] == 0:
            gate.wait(5)
        return list(batch)

    batcher = DynamicBatcher(forward, max_batch_size=2, max_wait_s=0.0)

    async def main():
        first = [batcher.enqueue(i, None) for i in (0, 1)]
        await asyncio.sleep(0.05)
        second = [batcher.enqueue(i, None) for i in (2, 3)]  # full: collated ahead
        await asyncio.sleep(0.05)
        second[0].cancel()
        third = [batcher.enqueue(i, None) for i in (4, 5)]
        await asyncio.sleep(0.05)
        for future in third:
            future.cancel()  # a whole job cancelled while the batch before runs
        gate.set()
        survivors = await asyncio.gather(*first, second[1])
        await batcher.drain()
        return survivors

    assert asyncio.run(main()) == [0, 1, 3]
    # The second batch ran without its cancelled item (collated again); the third not at all.
    assert ran == [[0, 1], [3]]


def test_a_batch_collated_ahead_runs_at_the_size_an_out_of_memory_error_lowered():
    attempts: list[int] = []
    gate = threading.Event()

    def forward(batch, options):
        attempts.append(len(batch))
        if len(attempts) == 1:
            gate.wait(5)  # the next full batch is collated meanwhile, at the old size
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(batch)

    batcher = _batcher(forward, max_batch_size=4, max_wait_s=0.0)

    async def main():
        first = [batcher.enqueue(i, None) for i in range(4)]
        await asyncio.sleep(0.05)
        second = [batcher.enqueue(i, None) for i in range(4, 8)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*first, *second)

    assert asyncio.run(main()) == list(range(8))
    assert attempts == [4, 2, 2, 2, 2]  # one out-of-memory error, not one per batch
