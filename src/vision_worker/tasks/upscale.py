"""Super-resolution: Swin2SR (`Swin2SRForImageSuperResolution`) returns each photo upscaled 2x,
3x or 4x as its model card shows (`reconstruction` clamped to [0, 1], times 255, rounded), cut
to the photo's own size times the scale (the processor pads the bottom and right to a multiple
of the window, and the padding's reconstruction is not part of the photo).

The output size is checked before any model work: a 12 MP photo upscaled 4x is 194 MP, past any
payload and most GPUs, so photos whose output would be over MAX_UPSCALED_PIXELS fail alone; and
so do those whose PNG, returned inline, could be over MAX_OUTPUT_MB on its own (an 8-bit RGB PNG
is up to 3 bytes a pixel: 2.5 MP upscaled fits the default 10 MB, 4 MP may not).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModelForImageToImage

from ..errors import ImageError
from ..outputs import OutputImage
from .base import (
    Batch,
    Checkpoint,
    ModelSource,
    Prepared,
    Task,
    TaskOptions,
    load_weights,
    pixel_batch,
    prepare_model,
)
from .dense import (
    OutputLimits,
    batch_rows,
    check_inline_size,
    inline_bytes,
    largest_fitting_side,
    png_bound,
)

_ARCHITECTURES = frozenset({"Swin2SRForImageSuperResolution"})
# An upscale result's JSON besides its PNG: keys and sizes.
_RESULT_JSON_BYTES = 100


class UpscaleLimits(OutputLimits):
    # Pixels of one upscaled image at most (16 MP: a 2000x2000 photo at 2x, 1000x1000 at 4x).
    MAX_UPSCALED_PIXELS: int = Field(16_000_000, ge=1024, le=400_000_000)


class UpscaleOptions(TaskOptions):
    pass


class UpscaleTask(Task):
    name: ClassVar[str] = "upscale"
    hub_label: ClassVar[str] = "Upscale (Swin2SR super-resolution)"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Super-resolution: Swin2SR classical x2", "caidas/swin2SR-classical-sr-x2-64"),
    )
    summary: ClassVar[str] = "each photo upscaled (super-resolution), as a PNG"
    Options: ClassVar = UpscaleOptions
    Limits: ClassVar = UpscaleLimits
    architectures_doc: ClassVar[str] = "`Swin2SRForImageSuperResolution` (x2, x3, x4)"
    example_input: ClassVar[dict] = {"image": "<image>"}
    example_output: ClassVar[list] = [
        {"image": "data:image/png;base64,iVBORw0KGgo...", "width": 1280, "height": 960}
    ]

    def __init__(
        self, source: ModelSource, model: Any, processor: Any, limits: UpscaleLimits
    ) -> None:
        self.source = source
        self.model = model
        self.processor = self.image_processor = processor
        self.limits = limits
        self.scale = int(model.config.upscale)

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(_ARCHITECTURES, {"swin2sr"})

    @classmethod
    def load(
        cls, source: ModelSource, checkpoint: Checkpoint, limits: UpscaleLimits
    ) -> UpscaleTask:
        model, _ = load_weights(source, AutoModelForImageToImage, cls.name, "upsampler")
        return cls(source, prepare_model(model, source), source.load_image_processor(), limits)

    def batch_key(self, item: Prepared, options: UpscaleOptions) -> Hashable:
        # Every photo keeps its own size (padded to the window): equal shapes batch together.
        return (item.kind, tuple(item.inputs["pixel_values"].shape))

    def decode_target(self, options: UpscaleOptions) -> dict | None:
        return None  # the photo's every pixel is the input

    def prepare(self, image: Image.Image, options: UpscaleOptions) -> Prepared:
        width, height = image.size  # decoded in full and upright: the photo's own pixels
        upscaled = width * height * self.scale**2
        if upscaled > self.limits.MAX_UPSCALED_PIXELS:
            raise ImageError(
                "too_large",
                f"{width}x{height} upscaled {self.scale}x is {upscaled:,} pixels, over "
                f"MAX_UPSCALED_PIXELS={self.limits.MAX_UPSCALED_PIXELS:,}: send a smaller image",
            )
        self._check_inline_size(height, width)
        pixels = self.processor(images=[image], return_tensors="pt").pixel_values[0]
        return Prepared({"pixel_values": pixels}, meta={"size": (height, width)})

    def _check_inline_size(self, height: int, width: int) -> None:
        """Fail this photo before the model runs if its upscaled PNG could be over
        MAX_OUTPUT_MB, naming the photo size that fits."""

        def inline(size: tuple[int, int]) -> int:
            upscaled = png_bound(size[0] * self.scale, size[1] * self.scale, 3)
            return inline_bytes(upscaled) + _RESULT_JSON_BYTES

        limit = self.limits.MAX_OUTPUT_MB * 1_000_000
        side = largest_fitting_side((height, width), lambda size: inline(size) <= limit)
        fits = f"send a photo of at most {side} px on its longest side, " if side else ""
        what = f"{width}x{height} upscaled {self.scale}x (an RGB PNG)"
        check_inline_size(self.limits, what, inline((height, width)), fits)

    def collate(self, items: Sequence[Prepared], options: Sequence[Any]) -> Batch:
        return pixel_batch(items, self.source)

    def forward(self, batch: Batch, options: Sequence[Any]) -> torch.Tensor:
        with torch.inference_mode():
            reconstruction = self.model(**batch.inputs).reconstruction
        return reconstruction.float().cpu()

    def split(self, raw: torch.Tensor, items: Sequence[Prepared], options: Sequence[Any]) -> list:
        # To 8 bits at once, as the card does: a quarter of the float32 it arrives as.
        rows = batch_rows(raw, len(items))
        return [self._pixels(row, item.meta["size"]) for row, item in zip(rows, items, strict=True)]

    def _pixels(self, reconstruction: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        height, width = size[0] * self.scale, size[1] * self.scale
        cropped = reconstruction[:, :height, :width].clamp(0, 1)
        return np.moveaxis((cropped.numpy() * 255.0).round().astype(np.uint8), 0, -1)

    def result_memory(self, output: np.ndarray, meta: dict, options: UpscaleOptions) -> int:
        return 2 * output.nbytes  # the image and its PNG

    def encode(self, output: np.ndarray, meta: dict, options: UpscaleOptions) -> dict:
        height, width = output.shape[:2]
        image = OutputImage(Image.fromarray(output), "upscaled")
        return {"image": image, "width": width, "height": height}
