"""Image classification: any transformers image-classification checkpoint, top-k softmax labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from ..config import Settings
from ..errors import JobError
from .base import (
    Checkpoint,
    ModelSource,
    Prepared,
    Task,
    TaskOptions,
    load_weights,
    pixel_inputs,
    prepare_model,
    stack_pixels,
)

# The class names a checkpoint is saved from when it carries a trained classification head.
_CLASSIFIER_ARCHITECTURES = frozenset(
    name
    for names in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values()
    for name in ((names,) if isinstance(names, str) else names)
)


class ClassifyOptions(TaskOptions):
    top_k: int | None = Field(
        None, ge=1, le=1_000_000, description="Labels returned, best first (default DEFAULT_TOP_K)."
    )


class ClassifyTask(Task):
    name: ClassVar[str] = "classify"
    summary: ClassVar[str] = "top-k labels from the checkpoint's own classification head"
    Options: ClassVar = ClassifyOptions
    architectures_doc: ClassVar[str] = (
        "any `*ForImageClassification` checkpoint (ViT, ResNet, ConvNeXt, Swin, EfficientNet, ...)"
    )
    example_input: ClassVar[dict] = {"image": "<image>", "top_k": 2}
    example_output: ClassVar[list] = [
        {"labels": [{"label": "tabby cat", "score": 0.91}, {"label": "tiger cat", "score": 0.06}]}
    ]

    def __init__(self, source: ModelSource, model, processor, settings: Settings) -> None:
        self.source = source
        self.model = model
        self.processor = self.image_processor = processor
        self.settings = settings
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(
            _CLASSIFIER_ARCHITECTURES, MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
        )

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, settings: Settings) -> ClassifyTask:
        model, _ = load_weights(
            source, AutoModelForImageClassification, cls.name, "classification head"
        )
        processor = source.load_image_processor()
        return cls(source, prepare_model(model, source, settings), processor, settings)

    def check(self, options: ClassifyOptions) -> ClassifyOptions:
        top_k = options.top_k or min(self.settings.DEFAULT_TOP_K, len(self.labels))
        if top_k > len(self.labels):
            raise JobError(f'"top_k" must be between 1 and {len(self.labels)}, got {top_k}')
        return options.model_copy(update={"top_k": top_k})

    def batch_key(self, item: Prepared, options: ClassifyOptions) -> str:
        # top_k only slices the output, so every classification job can share a batch.
        return item.kind

    def prepare(self, image: Image.Image, options: ClassifyOptions) -> Prepared:
        return Prepared(pixel_inputs(self.processor, image))

    def predict(self, items: Sequence[Prepared], options: Sequence[Any]) -> list[torch.Tensor]:
        with torch.inference_mode():
            logits = self.model(pixel_values=stack_pixels(items, self.source)).logits
        # Softmax in float32: half-precision probabilities lose the small scores entirely.
        return list(logits.float().softmax(dim=-1).cpu())

    def encode(self, output: torch.Tensor, meta: dict, options: ClassifyOptions) -> dict:
        return ranked_labels(output, self.labels, options.top_k or len(self.labels))


def ranked_labels(scores: torch.Tensor, labels: Sequence[str], top_k: int) -> dict:
    """{"labels": [{"label", "score"}, ...]} best first; the shape classify and zero_shot share."""
    values, indices = scores.topk(min(top_k, len(labels)))
    return {
        "labels": [
            {"label": labels[i], "score": round(s, 6)}
            for s, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
    }
