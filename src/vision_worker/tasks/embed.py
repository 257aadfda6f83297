"""Image embeddings: CLIP / SigLIP image features (plus text features in the same space), or the
pooled output of any vision backbone (DINOv2, ViT, ResNet, ConvNeXt, ...).

Which vector a backbone gives: its `pooler_output` when the checkpoint has trained pooler weights
(DINOv2: the layer-normed CLS token; ResNet/ConvNeXt: global average pooling), otherwise the CLS
token of the last hidden state (ViT saved from a classifier, whose pooler was never trained).
These equal transformers' `image-feature-extraction` pipeline with `pool=True` (resp. its first
token without pooling).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModel
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_MAPPING_NAMES

from ..config import TextLimits
from ..errors import JobError
from .base import (
    Checkpoint,
    JobItem,
    ModelSource,
    Prepared,
    Task,
    TaskOptions,
    load_weights,
    prepare_model,
    stack_on_device,
)
from .towers import DualEncoder, is_dual_encoder, normalize


class EmbedOptions(TaskOptions):
    normalize: bool = Field(True, description="Scale each embedding to unit length (L2).")
    encoding: Literal["float", "base64"] = Field(
        "float", description='"base64": little-endian float32 bytes, base64-encoded (compact).'
    )
    texts: list[str] | None = Field(
        None,
        description="CLIP/SigLIP only: texts to embed in the images' space, up to "
        'MAX_TEXTS_PER_JOB, returned under "texts".',
    )


class EmbedLimits(TextLimits):
    # Texts per job: each is one text-tower sequence.
    MAX_TEXTS_PER_JOB: int = Field(64, ge=1, le=4096)


class EmbedTask(Task):
    name: ClassVar[str] = "embed"
    # The RunPod Hub listing: this task in the TASK menu, and ready-made endpoints for it.
    hub_label: ClassVar[str] = "Embed (CLIP/SigLIP/DINOv2/backbones)"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Embeddings: DINOv2 base", "facebook/dinov2-base"),
    )
    summary: ClassVar[str] = "an embedding vector per image (and per text for CLIP/SigLIP)"
    Options: ClassVar = EmbedOptions
    Limits: ClassVar = EmbedLimits
    architectures_doc: ClassVar[str] = (
        "CLIP / SigLIP / SigLIP2 (image tower), and any vision backbone `AutoModel` loads "
        "(DINOv2, ViT, ResNet, ConvNeXt, Swin, ...), including classifiers' backbones"
    )
    example_input: ClassVar[dict] = {"images": ["<image>"], "texts": ["a photo of a cat"]}
    example_output: ClassVar[list] = [{"embedding": [0.0123, -0.0456, "..."], "dim": 512}]

    def __init__(
        self,
        source: ModelSource,
        limits: EmbedLimits,
        *,
        towers: DualEncoder | None = None,
        backbone: Any = None,
        processor: Any = None,
        use_pooler: bool = True,
    ) -> None:
        self.source = source
        self.limits = limits
        self.towers = towers
        self.backbone = backbone
        self.processor = processor
        self.image_processor = towers.processor if towers is not None else processor
        self.use_pooler = use_pooler

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return is_dual_encoder(checkpoint) or checkpoint.model_type in MODEL_FOR_IMAGE_MAPPING_NAMES

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, limits: EmbedLimits) -> EmbedTask:
        if is_dual_encoder(checkpoint):
            return cls(source, limits, towers=DualEncoder.load(source, cls.name))
        # A classifier's checkpoint has no pooler (its head reads the hidden states), so the
        # pooler AutoModel adds would be random: those weights are tolerated and left unused.
        model, missing = load_weights(
            source,
            AutoModel,
            cls.name,
            "trained backbone",
            tolerate=lambda key: key.startswith("pooler."),
        )
        processor = source.load_image_processor()
        return cls(
            source,
            limits,
            backbone=prepare_model(model, source),
            processor=processor,
            use_pooler=not missing,
        )

    def check(self, options: EmbedOptions) -> EmbedOptions:
        if options.texts is None:
            return options
        limits = self.limits
        if self.towers is None:
            raise JobError(
                f'"texts" needs a model with a text tower (CLIP, SigLIP); '
                f"{self.source.name} embeds images only"
            )
        if not options.texts or len(options.texts) > limits.MAX_TEXTS_PER_JOB:
            code = "too_large" if options.texts else "invalid_input"
            raise JobError(f'"texts" must hold 1 to {limits.MAX_TEXTS_PER_JOB} texts', code)
        if any(len(text) > limits.MAX_TEXT_CHARS for text in options.texts):
            raise JobError(f"each text must be at most {limits.MAX_TEXT_CHARS} characters")
        return options

    def batch_key(self, item: Prepared, options: EmbedOptions) -> str:
        # normalize and encoding apply after the forward pass; only images and texts differ.
        return item.kind

    # --- images -----------------------------------------------------------------------------
    def prepare(self, image: Image.Image, options: EmbedOptions) -> Prepared:
        if self.towers is not None:
            return self.towers.image_item(image)
        batch = self.processor(images=[image], return_tensors="pt")
        return Prepared({"pixel_values": batch.pixel_values[0]})

    def forward(self, items: Sequence[Prepared], options: Sequence[Any]) -> list[torch.Tensor]:
        if items[0].kind == "text":
            return list(self.towers.text_features(items).cpu())  # type: ignore[union-attr]
        if self.towers is not None:
            return list(self.towers.image_features(items).cpu())
        pixels = stack_on_device([item.inputs["pixel_values"] for item in items], self.source)
        with torch.inference_mode():
            output = self.backbone(pixel_values=pixels)
        if self.use_pooler and getattr(output, "pooler_output", None) is not None:
            pooled = output.pooler_output
        else:
            pooled = output.last_hidden_state[:, 0]
        return list(pooled.flatten(1).float().cpu())

    def encode(self, output: torch.Tensor, meta: dict, options: EmbedOptions) -> dict:
        if "tokens" in meta:  # a text's: how many tokens it was (usage, for OpenAI's route)
            return {**vector_result(output, options), "tokens": meta["tokens"]}
        return vector_result(output, options)

    # --- texts (CLIP / SigLIP) --------------------------------------------------------------
    def job_items(self, sources: Sequence[str | bytes], options: EmbedOptions) -> list[JobItem]:
        texts = [JobItem(options, text=text) for text in options.texts or ()]
        return super().job_items(sources, options) + texts

    def prepare_text(self, text: str, options: EmbedOptions) -> Prepared:
        return self.towers.text_item(text)  # type: ignore[union-attr]


def vector_result(vector: torch.Tensor, options: EmbedOptions) -> dict:
    """{"embedding": [...], "dim": N}, or base64 of little-endian float32 with "encoding"."""
    if options.normalize:
        vector = normalize(vector)
    values = vector.numpy().astype("<f4")
    if options.encoding == "base64":
        encoded = base64.b64encode(values.tobytes()).decode()
        return {"embedding": encoded, "dim": int(values.size), "encoding": "base64"}
    return {"embedding": values.tolist(), "dim": int(values.size)}


def decode_base64_embedding(encoded: str) -> np.ndarray:
    """The inverse of the base64 encoding, for clients (and tests)."""
    return np.frombuffer(base64.b64decode(encoded), dtype="<f4")
