"""Image and text towers of dual encoders (CLIP, SigLIP, SigLIP2), shared by zero_shot and embed.

The arithmetic follows transformers' own `zero-shot-image-classification` pipeline: features from
`get_image_features` / `get_text_features`, L2-normalised, cosine times `logit_scale.exp()` (plus
`logit_bias` for SigLIP); softmax over labels for CLIP, an independent sigmoid per label for SigLIP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import AutoModel, AutoTokenizer

from .base import (
    Checkpoint,
    ModelSource,
    Prepared,
    features_of,
    load_weights,
    prepare_model,
    stack_on_device,
)

# Model types whose checkpoints pair an image tower with a text tower in one embedding space.
DUAL_ENCODER_TYPES = frozenset({"clip", "siglip", "siglip2"})


def is_dual_encoder(checkpoint: Checkpoint) -> bool:
    """A full CLIP/SigLIP checkpoint (both towers), not a vision-only or classifier variant."""
    if checkpoint.model_type not in DUAL_ENCODER_TYPES:
        return False
    return not checkpoint.architectures or any(
        a.endswith("Model") and "Vision" not in a and "Text" not in a
        for a in checkpoint.architectures
    )


class DualEncoder:
    """A loaded CLIP-style model with its image processor and tokenizer."""

    def __init__(self, source: ModelSource, model: Any, processor: Any, tokenizer: Any) -> None:
        self.source = source
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self.model_type = model.config.model_type
        # SigLIP was trained on fixed-length, padded text, so its pipeline pads to 64 tokens;
        # CLIP pads to the longest text in the batch.
        self.text_kwargs: dict[str, Any] = (
            {"padding": "max_length", "max_length": 64, "truncation": True}
            if self.model_type.startswith("siglip")
            else {"padding": True, "truncation": True}
        )

    @classmethod
    def load(cls, source: ModelSource, task: str) -> DualEncoder:
        model, _ = load_weights(source, AutoModel, task, "trained image and text towers")
        processor = source.load_image_processor()
        tokenizer = source.load_processor(AutoTokenizer.from_pretrained, "tokenizer")
        return cls(source, prepare_model(model, source), processor, tokenizer)

    # --- inputs -------------------------------------------------------------------------------
    def image_item(self, image: Image.Image) -> Prepared:
        # Every tensor the processor returns: SigLIP2 adds patch masks and spatial shapes.
        batch = self.processor(images=[image], return_tensors="pt")
        return Prepared({name: value[0] for name, value in batch.items()})

    def text_item(self, text: str) -> Prepared:
        tokens = self.tokenizer([text], return_tensors="pt", **self.text_kwargs)
        # The text's own tokens (SigLIP pads every text to 64), for usage counts.
        counted = len(
            self.tokenizer([text], truncation=True, **self._length_kwargs())["input_ids"][0]
        )
        return Prepared(
            {name: value[0] for name, value in tokens.items()},
            meta={"tokens": counted},
            kind="text",
        )

    def _length_kwargs(self) -> dict[str, Any]:
        return (
            {"max_length": self.text_kwargs["max_length"]}
            if "max_length" in self.text_kwargs
            else {}
        )

    # --- forward passes -------------------------------------------------------------------------
    def image_features(self, items: Sequence[Prepared]) -> torch.Tensor:
        """Projected image features, float32, one row per item (not normalised)."""
        inputs = {
            name: stack_on_device([item.inputs[name] for item in items], self.source)
            for name in items[0].inputs
        }
        with torch.inference_mode():
            return features_of(self.model.get_image_features(**inputs)).float()

    def text_features(self, items: Sequence[Prepared]) -> torch.Tensor:
        """Projected text features, float32, one row per item (not normalised)."""
        # Padding again across the batch: each text was padded (CLIP) only to its own length.
        padded = self.tokenizer.pad(
            [{name: value.tolist() for name, value in item.inputs.items()} for item in items],
            return_tensors="pt",
        )
        inputs = {name: value.to(self.source.device) for name, value in padded.items()}
        with torch.inference_mode():
            return features_of(self.model.get_text_features(**inputs)).float()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text features for texts tokenised together, as the pipeline does."""
        return normalize(self.text_features([self.text_item(text) for text in texts]))

    def label_probabilities(
        self, image_features: torch.Tensor, text_features: torch.Tensor
    ) -> torch.Tensor:
        """Probabilities of each label for each image, both inputs normalised."""
        model = self.model
        logits = image_features @ text_features.T * model.logit_scale.float().exp()
        if getattr(model, "logit_bias", None) is not None:
            logits = logits + model.logit_bias.float()
        if self.model_type.startswith("siglip"):
            return logits.sigmoid().cpu()
        return logits.softmax(dim=-1).cpu()


def normalize(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(p=2, dim=-1, keepdim=True)
