"""Image classification: any transformers image-classification checkpoint, top-k softmax labels."""

from __future__ import annotations

import io
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from ..config import TaskLimits
from ..errors import JobError
from ..images import photo_size
from ..outputs import OutputImage
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
    pixel_inputs,
    prepare_model,
)
from .explain import (
    HEATMAP_MAX_SIDE,
    grad_cam,
    overlay,
    overlay_size,
    region_box,
    seen_region,
)
from .labels import ranked_labels

# The class names a checkpoint is saved from when it carries a trained classification head.
_CLASSIFIER_ARCHITECTURES = architectures_in(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)


class ClassifyOptions(TaskOptions):
    top_k: int | None = Field(
        None, ge=1, le=1_000_000, description="Labels returned, best first; default DEFAULT_TOP_K."
    )
    explain: bool = Field(
        False,
        description="Also a Grad-CAM heatmap of the regions behind the top label "
        "(a PNG overlay, inline or a bucket URL, and the raw map).",
    )


class ClassifyLimits(TaskLimits):
    # Labels per image when a job sets none.
    DEFAULT_TOP_K: int = Field(5, ge=1)


class ClassifyTask(Task):
    name: ClassVar[str] = "classify"
    # The RunPod Hub listing: this task in the TASK menu, and ready-made endpoints for it.
    hub_label: ClassVar[str] = "Classify"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Classification: ResNet-50", "microsoft/resnet-50"),
    )
    summary: ClassVar[str] = "top-k labels from the checkpoint's own classification head"
    Options: ClassVar = ClassifyOptions
    Limits: ClassVar = ClassifyLimits
    architectures_doc: ClassVar[str] = (
        "any `*ForImageClassification` checkpoint (ViT, ResNet, ConvNeXt, Swin, EfficientNet, ...)"
    )
    example_input: ClassVar[dict] = {"image": "<image>", "top_k": 2}
    example_output: ClassVar[list] = [
        {"labels": [{"label": "tabby cat", "score": 0.91}, {"label": "tiger cat", "score": 0.06}]}
    ]

    def __init__(self, source: ModelSource, model, processor, limits: ClassifyLimits) -> None:
        self.source = source
        self.model = model
        self.processor = self.image_processor = processor
        self.limits = limits
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(
            _CLASSIFIER_ARCHITECTURES, MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
        )

    @classmethod
    def load(
        cls, source: ModelSource, checkpoint: Checkpoint, limits: ClassifyLimits
    ) -> ClassifyTask:
        model, _ = load_weights(
            source, AutoModelForImageClassification, cls.name, "classification head"
        )
        processor = source.load_image_processor()
        return cls(source, prepare_model(model, source), processor, limits)

    def options_schema(self) -> dict[str, Any]:
        """As the base's, with top_k bounded by this model's labels too, as `check` bounds it."""
        schema = super().options_schema()
        for branch in schema["properties"]["top_k"].get("anyOf", []):
            if branch.get("type") == "integer":
                branch["maximum"] = len(self.labels)
        return schema

    def check(self, options: ClassifyOptions) -> ClassifyOptions:
        top_k = options.top_k or min(self.limits.DEFAULT_TOP_K, len(self.labels))
        if top_k > len(self.labels):
            raise JobError(f'"top_k" must be between 1 and {len(self.labels)}, got {top_k}')
        return options.model_copy(update={"top_k": top_k})

    def batch_key(self, item: Prepared, options: ClassifyOptions) -> Hashable:
        # top_k only slices the output, so every classification job can share a batch; an
        # explanation needs a backward pass, so those batch among themselves.
        return (item.kind, options.explain)

    def decode_target(self, options: ClassifyOptions) -> dict | None:
        # The heatmap is drawn over the image at up to HEATMAP_MAX_SIDE, not at the model's size.
        return {"longest_edge": HEATMAP_MAX_SIDE} if options.explain else self.input_size()

    def prepare(self, image: Image.Image, options: ClassifyOptions) -> Prepared:
        prepared = Prepared(pixel_inputs(self.processor, image))
        if options.explain:
            # Kept until the result is encoded, outside the decode budget: as a JPEG, a 1024 px
            # copy costs ~0.15 MB instead of 3 MB, so 64-image jobs in flight stay small.
            photo = photo_size(image)
            shown = image.resize(overlay_size(photo), Image.Resampling.LANCZOS)
            jpeg = io.BytesIO()
            shown.convert("RGB").save(jpeg, "JPEG", quality=90)
            prepared.meta["image_jpeg"] = jpeg.getvalue()
            prepared.meta["photo"] = photo
            prepared.meta["seen"] = seen_region(self.processor, photo)
        return prepared

    def collate(self, items: Sequence[Prepared], options: Sequence[Any]) -> Batch:
        return pixel_batch(items, self.source)

    def forward(self, batch: Batch, options: Sequence[Any]) -> Any:
        pixels = batch.inputs["pixel_values"]
        if options[0].explain:  # equal for the whole batch (batch_key)
            logits, maps = grad_cam(self.model, pixels)  # the backward pass is model work too
            return logits.float().cpu(), maps
        with torch.inference_mode():
            return self.model(pixel_values=pixels).logits.float().cpu(), None

    def split(self, raw: Any, items: Sequence[Prepared], options: Sequence[Any]) -> list[Any]:
        logits, maps = raw
        if maps is None:
            return _probabilities(logits)
        return list(zip(_probabilities(logits), maps, strict=True))

    def encode(self, output: Any, meta: dict, options: ClassifyOptions) -> dict:
        probabilities, cam = output if options.explain else (output, None)
        result = ranked_labels(probabilities, self.labels, options.top_k or len(self.labels))
        if cam is None:
            return result
        shown = overlay(Image.open(io.BytesIO(meta["image_jpeg"])), cam, meta["seen"])
        result["explanation"] = {
            "label": self.labels[int(probabilities.argmax())],
            "heatmap": OutputImage(shown, "heatmap"),  # delivered by the worker
            "map": [[round(v, 3) for v in row] for row in cam.tolist()],
            # The part of the photo `map` covers (a centre crop sees less than the photo).
            "map_box": region_box(meta["seen"], meta["photo"]),
        }
        return result


def _probabilities(logits: torch.Tensor) -> list[torch.Tensor]:
    # Softmax in float32: half-precision probabilities lose the small scores entirely.
    return list(logits.float().softmax(dim=-1).cpu())
