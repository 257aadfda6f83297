"""Pixels out: what the dense tasks (segment, depth) share. Masks as COCO run-length encoding or
PNG, maps as 16-bit PNG, and what a full-resolution output costs in memory while it is made.

Dense outputs are made at the photo's own size, as the pipelines make them, and that is where
their cost is: one 12 MP float map is 48 MB. So `split` only hands each image its slice of the
batch (small, at the model's resolution), and each result is brought to the photo's size in
`encode`, on an encode thread, after the worker has reserved its `result_memory` from the image
memory budget: many large outputs at once wait for room instead of adding up.

An image returned inline rides in the job's JSON, which RunPod caps (MAX_OUTPUT_MB): a 12 MP
16-bit depth map is up to 32 MB as base64. So a task sizes each photo's output image from the
photo's size before any model work (`check_inline_size`) and fails that image alone, naming the
fix, instead of computing an output the job could never return.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from ..config import Settings, TaskLimits
from ..errors import ImageError
from ..outputs import OutputImage, bucket_configured
from .base import TaskOptions

MaskFormat = Literal["rle", "png"]
# What a data URI adds to the base64 of a PNG.
_DATA_URI_PREFIX = len("data:image/png;base64,")


def _worker_setting(name: str) -> Any:
    """The worker's own setting of that name (config.py), declared again in a task's limits so
    the task sees it: the same type, default and bounds, so it cannot drift."""
    return Settings.model_fields[name]


class OutputLimits(TaskLimits):
    """The worker's output settings a dense task sizes its output images against: inline images
    count towards MAX_OUTPUT_MB; uploaded ones (all three BUCKET_* set) do not."""

    MAX_OUTPUT_MB: float = _worker_setting("MAX_OUTPUT_MB")
    BUCKET_ENDPOINT_URL: str | None = _worker_setting("BUCKET_ENDPOINT_URL")
    BUCKET_ACCESS_KEY_ID: str | None = _worker_setting("BUCKET_ACCESS_KEY_ID")
    BUCKET_SECRET_ACCESS_KEY: str | None = _worker_setting("BUCKET_SECRET_ACCESS_KEY")


class MaskOutputOptions(TaskOptions):
    mask_format: MaskFormat = Field(
        "rle",
        description='"rle": COCO run-length encoding ({"size": [h, w], "counts": "..."}, as '
        'pycocotools reads it); "png": a PNG image (255 inside).',
    )


def coco_rle(mask: np.ndarray) -> dict:
    """COCO's compressed RLE of a boolean (height, width) mask: runs of 0s and 1s down the
    columns (Fortran order, starting with 0s), each run minus the one two before it, written
    as 5-bit groups with a continuation bit, offset into printable ASCII from "0"."""
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    ends = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(ends).astype(np.int64)
    if flat.size and flat[0]:
        runs = np.concatenate(([0], runs))  # counts start with a run of 0s, perhaps empty
    return coco_rle_of_runs(runs, height, width)


def coco_rle_of_runs(runs: Any, height: int, width: int) -> dict:
    """COCO's compressed RLE of a mask given as its runs (uncompressed RLE "counts": down the
    columns, starting with 0s), as SAM's mask generation makes them."""
    runs = np.asarray(runs, dtype=np.int64)
    deltas = runs.copy()
    deltas[3:] -= runs[1:-2]  # from the fourth run on, relative to the run two before
    return {"size": [height, width], "counts": _leb_chars(deltas).decode("ascii")}


def mask_of_runs(runs: Any, height: int, width: int) -> np.ndarray:
    """The boolean (height, width) mask of uncompressed RLE runs (see `coco_rle_of_runs`)."""
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T


def _leb_chars(values: np.ndarray) -> bytes:
    """pycocotools' rleToString, vectorised: each value as 5-bit groups, low first."""
    groups, continues = [], []
    remaining = values.copy()
    alive = np.ones(values.size, dtype=bool)
    while alive.any():
        low = remaining & 0x1F
        remaining = remaining >> 5  # arithmetic: negative deltas end at -1
        more = np.where(low & 0x10, remaining != -1, remaining != 0) & alive
        groups.append(np.where(more, low | 0x20, low) + 48)
        continues.append(alive)
        alive = more
    chars = np.stack(groups, axis=1)
    present = np.stack(continues, axis=1)
    return chars[present].astype(np.uint8).tobytes()


def mask_output(mask: np.ndarray, mask_format: MaskFormat) -> Any:
    """One boolean mask as a result carries it."""
    if mask_format == "png":
        # Encoded now: a job's many masks wait for delivery as small PNGs, not as images.
        return OutputImage.png(Image.fromarray(mask.astype(np.uint8) * 255), "mask")
    return coco_rle(mask)


def depth_png(depth: np.ndarray) -> tuple[OutputImage, float, float]:
    """A float map as a 16-bit grayscale PNG scaled from its (min, max), and that range:
    value = min + pixel / 65535 * (max - min)."""
    low, high = float(depth.min()), float(depth.max())
    scale = 65535.0 / (high - low) if high > low else 0.0
    levels = np.rint((depth - low) * scale).astype(np.uint16)
    return OutputImage(Image.fromarray(levels), "depth"), low, high


def png_bound(height: int, width: int, bytes_per_pixel: int) -> int:
    """Bytes a PNG of this size is at most, whatever its pixels: the raw rows (one filter byte
    each) when deflate cannot shrink them, plus zlib's own bound on growth (deflateBound: about
    1/3000 of the data) and the chunks' framing (12 bytes per 64 KB IDAT), with room to spare."""
    raw = height * (1 + width * bytes_per_pixel)
    return raw + raw // 1000 + 1024


def inline_bytes(encoded: int) -> int:
    """JSON bytes of `encoded` bytes of PNG returned inline: base64 in a data URI."""
    return _DATA_URI_PREFIX + 4 * ((encoded + 2) // 3)


def check_inline_size(
    limits: OutputLimits, what: str, inline: int, fixes: str = "", *, certain: bool = False
) -> None:
    """ImageError("too_large") when one image's output, `inline` JSON bytes at most (or, with
    `certain`, at least), is over MAX_OUTPUT_MB on its own; nothing when images upload.

    Checked before the model runs: past the limit the job could never be returned, and RunPod
    would get a failure only after the photo's whole output was made. `fixes`: the task's own
    ways to a smaller output, said first.
    """
    limit = int(limits.MAX_OUTPUT_MB * 1_000_000)
    if bucket_configured(limits) or inline <= limit:
        return
    size = f"{'is at least' if certain else 'can be'} {inline / 1_000_000:.1f} MB"
    raise ImageError(
        "too_large",
        f"{what} {size} inline, over MAX_OUTPUT_MB={limits.MAX_OUTPUT_MB:g} (RunPod's payload "
        f"limit): {fixes}set BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and "
        "BUCKET_SECRET_ACCESS_KEY so output images upload and come back as URLs, or raise "
        "MAX_OUTPUT_MB",
    )


def largest_fitting_side(
    size: tuple[int, int], fits: Callable[[tuple[int, int]], bool]
) -> int | None:
    """The longest side (aspect kept, see `scaled_size`) at which `fits`, or None if not even
    a 1-pixel one does; `fits` grows with the side, so a binary search finds it."""
    low, high = 1, max(size)
    if not fits(scaled_size(size, low)):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(scaled_size(size, middle)) else (low, middle - 1)
    return low


def scaled_size(size: tuple[int, int], longest: int | None) -> tuple[int, int]:
    """(height, width) with the longest side at most `longest`, aspect kept (each side at least
    1); the size itself when it already fits, or when `longest` is None."""
    if longest is None or max(size) <= longest:
        return size
    ratio = longest / max(size)
    return tuple(max(1, round(side * ratio)) for side in size)  # type: ignore[return-value]


def float32_base64(values: np.ndarray) -> str:
    """Little-endian float32 bytes, base64: compact, and exact for a float32 map."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode()


def float_map_bytes(height: int, width: int, maps: int = 1) -> int:
    return 4 * height * width * maps


def batch_rows(raw: torch.Tensor | dict, count: int) -> list[Any]:
    """Each image's slice of a batch output (a tensor, or a dict of tensors by name)."""
    if isinstance(raw, dict):
        return [{name: value[row] for name, value in raw.items()} for row in range(count)]
    return list(raw[:count])
