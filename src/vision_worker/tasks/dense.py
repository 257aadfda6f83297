"""Pixels out: what the dense tasks (segment, depth) share. Masks as COCO run-length encoding or
PNG, maps as 16-bit PNG, and what a full-resolution output costs in memory while it is made.

Dense outputs are made at the photo's own size, as the pipelines make them, and that is where
their cost is: one 12 MP float map is 48 MB. So `split` only hands each image its slice of the
batch (small, at the model's resolution), and each result is brought to the photo's size in
`encode`, on an encode thread, after the worker has reserved its `result_memory` from the image
memory budget: many large outputs at once wait for room instead of adding up.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from ..outputs import OutputImage
from .base import TaskOptions

MaskFormat = Literal["rle", "png"]


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
    deltas = runs.copy()
    deltas[3:] -= runs[1:-2]  # from the fourth run on, relative to the run two before
    return {"size": [height, width], "counts": _leb_chars(deltas).decode("ascii")}


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
