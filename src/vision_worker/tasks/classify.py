"""Image classification: any transformers image-classification model, top-k softmax labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from ..config import Settings
from .base import ModelSource, check_range, prepare_model, preprocess_image, stack_on_device


@dataclass(frozen=True)
class ClassifyOptions:
    top_k: int


class ClassifyTask:
    name: ClassVar[str] = "classify"
    option_names: ClassVar[tuple[str, ...]] = ("top_k",)

    def __init__(self, source: ModelSource, model, processor, settings: Settings) -> None:
        self.source = source
        self.model = model
        self.processor = processor
        self.settings = settings
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    @classmethod
    def supports(cls, model_type: str) -> bool:
        return model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    @classmethod
    def load(cls, source: ModelSource, settings: Settings) -> ClassifyTask:
        model = source.load(AutoModelForImageClassification.from_pretrained, dtype=source.dtype)
        processor = source.load(AutoImageProcessor.from_pretrained)
        return cls(source, prepare_model(model, source, settings), processor, settings)

    def resolve_options(self, given: dict[str, int]) -> ClassifyOptions:
        default = min(self.settings.DEFAULT_TOP_K, len(self.labels))
        return ClassifyOptions(
            check_range("top_k", given.get("top_k", default), 1, len(self.labels))
        )

    def batch_key(self, options: ClassifyOptions) -> tuple:
        # top_k only slices the output, so every classification job can share a batch.
        return ()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(self.processor, image)

    def predict(
        self, pixels: Sequence[torch.Tensor], options: ClassifyOptions
    ) -> list[torch.Tensor]:
        pixels = stack_on_device(pixels, self.source)
        with torch.inference_mode():
            logits = self.model(pixel_values=pixels).logits
        # Softmax in float32: half-precision probabilities lose the small scores entirely.
        return list(logits.float().softmax(dim=-1).cpu())

    def encode(self, output: torch.Tensor, options: ClassifyOptions) -> dict:
        scores, indices = output.topk(options.top_k)
        return {
            "labels": [
                {"label": self.labels[i], "score": round(s, 6)}
                for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
            ]
        }
