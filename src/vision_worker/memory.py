"""A process-wide budget for decoded image memory: decodes wait for room instead of adding up.

A 6300x6300 image is within the pixel limit, but decoding, converting and preprocessing it holds
about half a GiB; 16 of them in one job, or a few such jobs at once, would take the process down.
Every decode reserves its peak working memory here first (computed from the header, before any
pixel is decoded) and releases it once the image has become model inputs; those inputs then hold
their own bytes until their forward pass is done, so a model slower than decoding makes images
wait instead of piling up as tensors. Under pressure jobs slow down instead of failing.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_MIB = 1024 * 1024
# Bytes per pixel of the decoded image in Pillow's mode, before conversion to RGB.
_MODE_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "PA": 2,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "RGBA": 4,
    "CMYK": 4,
    "I": 4,
    "F": 4,
}
# Working copies per pixel on the way to model inputs: the RGB conversion (3), an EXIF rotation
# (3), and the image processor's full-size arrays before it resizes (PIL processors convert to
# float32 first: 12, plus a uint8 copy: 3). Measured: one 6300x6300 16-bit PNG peaks at
# ~540 MiB over the idle worker with a ViT processor, ~14 bytes per pixel; 20 leaves margin.
_WORKING_BYTES_PER_PIXEL = 20


def decoded_cost(width: int, height: int, mode: str) -> int:
    """Peak bytes one image holds from decode to model inputs."""
    return width * height * (_MODE_BYTES.get(mode, 4) + _WORKING_BYTES_PER_PIXEL)


class DecodeBudget:
    """Bytes of decoded images in flight across all jobs; `reserve` blocks until there is room."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self._used = 0
        self._room = threading.Condition()
        self.waits = 0  # decodes that had to wait: pressure, for logs and tests
        # Decodes waiting for room now: often for inputs queued for the model to run first.
        self.waiting = 0

    @property
    def in_use(self) -> int:
        return self._used

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        held = self.hold(nbytes)
        try:
            yield
        finally:
            held.release()

    def hold(self, nbytes: int, *, wait: bool = True) -> Held:
        """Reserve `nbytes` until `release`: for memory that outlives a block, such as model
        inputs waiting for their forward pass. `wait=False` takes it at once, over the budget if
        need be: for memory that already exists (what is over makes later decodes wait)."""
        # An image larger than the whole budget still runs, alone, rather than never.
        wanted = min(nbytes, self.total_bytes)
        with self._room:
            if wait and self._used + wanted > self.total_bytes:
                self.waits += 1
                self.waiting += 1
                try:
                    self._room.wait_for(lambda: self._used + wanted <= self.total_bytes)
                finally:
                    self.waiting -= 1
            self._used += wanted
        return Held(self, wanted)

    def _give_back(self, nbytes: int) -> None:
        with self._room:
            self._used -= nbytes
            self._room.notify_all()


class Held:
    """Bytes held from a DecodeBudget; `release` gives them back, once."""

    def __init__(self, budget: DecodeBudget, nbytes: int) -> None:
        self._budget, self.nbytes = budget, nbytes

    def release(self) -> None:
        nbytes, self.nbytes = self.nbytes, 0
        if nbytes:
            self._budget._give_back(nbytes)


def inputs_bytes(inputs: Any) -> int:
    """Bytes of the arrays in a task's model inputs (tensors, nested in dicts and lists)."""
    if isinstance(inputs, dict):
        return sum(inputs_bytes(value) for value in inputs.values())
    if isinstance(inputs, list | tuple):
        return sum(inputs_bytes(value) for value in inputs)
    return int(getattr(inputs, "nbytes", 0))


def default_budget_bytes() -> int:
    """A quarter of the memory this process may use (container limit or machine), >= 512 MiB."""
    return max(512 * _MIB, memory_limit_bytes() // 4)


def memory_limit_bytes() -> int:
    """The container's cgroup memory limit when it has one, else the machine's physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(physical, int(text))
    return physical


# glibc's mallopt parameters: the number of malloc arenas, and the size from which allocations
# are mmap'ed (returned to the system on free) instead of carved from an arena.
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Make memory freed by image threads go back to the system, so the budget is what RSS sees.

    By default glibc gives busy threads arenas of their own (up to 8 per core) and keeps what
    they free: three jobs of 16 6300x6300 16-bit PNGs peaked at 6.2 GiB RSS with a 1 GiB decode
    budget; with two arenas and a fixed 4 MiB mmap threshold, at 1.0 GiB (and ran faster).
    Equivalent to MALLOC_ARENA_MAX=2 and MALLOC_MMAP_THRESHOLD_=4194304, which the Docker image
    also sets; this covers processes started without them. False where libc is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        # A fixed threshold also stops glibc from raising it (up to 32 MiB) after the first big
        # free, which would put Pillow's 16 MiB image blocks into arenas that never shrink.
        return bool(libc.mallopt(_M_ARENA_MAX, arenas)) and bool(
            libc.mallopt(_M_MMAP_THRESHOLD, 4 * _MIB)
        )
    except (OSError, AttributeError):
        return False


def return_free_memory() -> bool:
    """Hand memory glibc keeps after frees back to the system (malloc_trim). A large request
    body arrives as 64 KiB chunks, each under the mmap threshold, so they are carved from the
    heap and stay there: the hour soak saw a pod's RSS climb by one body limit (20 MiB) at a
    time, then drop back. False where libc is not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
