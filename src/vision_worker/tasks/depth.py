"""Depth estimation: any `AutoModelForDepthEstimation` checkpoint (Depth Anything / V2, DPT,
GLPN, ZoeDepth, Depth Pro, ...), one depth map per image at the photo's own size.

The map is the `depth-estimation` pipeline's `predicted_depth`: the checkpoint's own
`post_process_depth_estimation` brings the model's output to the photo's size (bicubic for DPT
and Depth Anything; ZoeDepth also removes its padding). It comes back as a 16-bit PNG with the
`min` and `max` it spans, so `min + pixel / 65535 * (max - min)` gives the model's values back
within 1/131070 of their range; on request also the model's own output, unresized, as float32.
`max_side` makes a smaller map (the same post-processing, to a smaller target size).

A map returned inline counts towards MAX_OUTPUT_MB: one that could be over it on its own (a
16-bit PNG is up to 2 bytes a pixel: 32 MB of base64 at 12 MP) fails before the model runs,
naming the `max_side` that fits.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModelForDepthEstimation
from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES

from .base import (
    Batch,
    Checkpoint,
    ModelSource,
    Prepared,
    Task,
    TaskOptions,
    architectures_in,
    load_weights,
    pixel_batch,
    prepare_model,
)
from .dense import (
    OutputLimits,
    batch_rows,
    check_inline_size,
    depth_png,
    float32_base64,
    float_map_bytes,
    inline_bytes,
    largest_fitting_side,
    png_bound,
    scaled_size,
)
from .detections import target_size

_ARCHITECTURES = architectures_in(MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES)
# Working copies of the photo-sized map while it is made: the bicubic output, the levels
# (uint16) and the PNG's own buffer, in float32 units.
_MAP_COPIES = 3
# A depth result's JSON besides its PNG: keys, min, max, sizes.
_RESULT_JSON_BYTES = 200


class DepthOptions(TaskOptions):
    raw: bool = Field(
        False,
        description="Also the model's own output before resizing, as base64 little-endian "
        'float32 under "raw" (its size is the model\'s, e.g. 518 px for Depth Anything).',
    )
    max_side: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="The map's longest side at most this (px), aspect kept; default the "
        "photo's size. A smaller map is a smaller PNG (a 12 MP one can be 32 MB inline).",
    )


class DepthTask(Task):
    name: ClassVar[str] = "depth"
    hub_label: ClassVar[str] = "Depth (Depth Anything, DPT, ZoeDepth)"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Depth: Depth Anything V2 small", "depth-anything/Depth-Anything-V2-Small-hf"),
    )
    summary: ClassVar[str] = "a depth map per image, at the photo's size (16-bit PNG)"
    Options: ClassVar = DepthOptions
    Limits: ClassVar = OutputLimits
    architectures_doc: ClassVar[str] = (
        "any `*ForDepthEstimation` checkpoint (Depth Anything / V2, DPT, GLPN, ZoeDepth, ...)"
    )
    example_input: ClassVar[dict] = {"image": "<image>"}
    example_output: ClassVar[list] = [
        {
            "depth": {
                "png": "data:image/png;base64,iVBORw0KGgo...",
                "min": 0.31,
                "max": 7.92,
                "width": 4032,
                "height": 3024,
            }
        }
    ]

    def __init__(
        self, source: ModelSource, model: Any, processor: Any, limits: OutputLimits
    ) -> None:
        self.source = source
        self.model = model
        self.limits = limits
        self.processor = self.image_processor = processor
        post_process = inspect.signature(processor.post_process_depth_estimation)
        self.takes_source_sizes = "source_sizes" in post_process.parameters

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(_ARCHITECTURES, MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES)

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, limits: OutputLimits) -> DepthTask:
        model, _ = load_weights(source, AutoModelForDepthEstimation, cls.name, "depth head")
        return cls(source, prepare_model(model, source), source.load_image_processor(), limits)

    def batch_key(self, item: Prepared, options: DepthOptions) -> Hashable:
        # Processors that keep the aspect ratio (Depth Anything, DPT) give each photo shape its
        # own input size; the pipeline runs each image unpadded, so equal shapes batch together.
        return (item.kind, tuple(item.inputs["pixel_values"].shape))

    def prepare(self, image: Image.Image, options: DepthOptions) -> Prepared:
        size = target_size(image)
        map_size = scaled_size(size, options.max_side)
        pixels = self.processor(images=[image], return_tensors="pt").pixel_values[0]
        self._check_inline_size(map_size, pixels.shape[-2:], options)
        return Prepared({"pixel_values": pixels}, meta={"size": size, "map_size": map_size})

    def _check_inline_size(
        self, map_size: tuple[int, int], model_size: Sequence[int], options: DepthOptions
    ) -> None:
        """Fail this photo before the model runs if its result could be over MAX_OUTPUT_MB: the
        PNG at most, plus the raw map (the model's output is its input's size)."""
        raw = inline_bytes(4 * int(model_size[0]) * int(model_size[1])) if options.raw else 0

        def inline(size: tuple[int, int]) -> int:
            return inline_bytes(png_bound(*size, 2)) + raw + _RESULT_JSON_BYTES

        limit = self.limits.MAX_OUTPUT_MB * 1_000_000
        side = largest_fitting_side(map_size, lambda size: inline(size) <= limit)
        fits = f'set "max_side" to {side} or less, ' if side else ""
        height, width = map_size
        what = f"a {width}x{height} depth map (16-bit PNG)"
        check_inline_size(self.limits, what, inline(map_size), fits)

    def collate(self, items: Sequence[Prepared], options: Sequence[Any]) -> Batch:
        return pixel_batch(items, self.source)

    def forward(self, batch: Batch, options: Sequence[Any]) -> dict:
        with torch.inference_mode():
            outputs = self.model(**batch.inputs)
        # What post-processing reads: the depth, and Depth Pro's field of view (its metric scale).
        return {
            name: outputs[name].float().cpu()
            for name in ("predicted_depth", "field_of_view")
            if outputs.get(name) is not None
        }

    def split(self, raw: dict, items: Sequence[Prepared], options: Sequence[Any]) -> list:
        return batch_rows(raw, len(items))  # resized per image in encode (see tasks/dense.py)

    def result_memory(self, output: dict, meta: dict, options: DepthOptions) -> int:
        return float_map_bytes(*meta["map_size"], maps=_MAP_COPIES)

    def encode(self, output: dict, meta: dict, options: DepthOptions) -> dict:
        batch_of_one = SimpleNamespace(**{name: value[None] for name, value in output.items()})
        targets = [meta["map_size"]]
        # ZoeDepth's post-processing takes the photo's size as `source_sizes` (to remove its
        # padding) and resizes only to `target_sizes`; the others take `target_sizes` first.
        post_process = self.processor.post_process_depth_estimation
        if self.takes_source_sizes:
            (resized,) = post_process(batch_of_one, [meta["size"]], target_sizes=targets)
        else:
            (resized,) = post_process(batch_of_one, targets)
        depth = resized["predicted_depth"].numpy()
        height, width = depth.shape  # the map's own size: the photo's (or max_side's), as asked
        png, low, high = depth_png(depth)
        del resized, depth
        result = {"png": png, "min": low, "max": high, "width": width, "height": height}
        if options.raw:
            model_map = output["predicted_depth"]
            result["raw"] = {
                "width": model_map.shape[-1],
                "height": model_map.shape[-2],
                "float32": float32_base64(model_map.numpy()),
            }
        return {"depth": result}
