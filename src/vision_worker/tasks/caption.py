"""Image captioning: VisionEncoderDecoder (ViT-GPT2), GIT and BLIP through one generate() path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from ..config import Settings
from .base import ModelSource, check_range, prepare_model, preprocess_image, stack_on_device


@dataclass(frozen=True)
class CaptionOptions:
    max_new_tokens: int
    num_beams: int = 1
    # Benchmarks pin the caption length (min = max) so runs compare; callers cannot set it.
    min_new_tokens: int | None = None


class CaptionTask:
    name: ClassVar[str] = "caption"
    option_names: ClassVar[tuple[str, ...]] = ("max_new_tokens", "num_beams")
    model_types: ClassVar[frozenset[str]] = frozenset({"vision-encoder-decoder", "git", "blip"})

    def __init__(
        self, source: ModelSource, model, processor, tokenizer, settings: Settings
    ) -> None:
        self.source = source
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self.settings = settings

    @classmethod
    def supports(cls, model_type: str) -> bool:
        return model_type in cls.model_types

    @classmethod
    def load(cls, source: ModelSource, settings: Settings) -> CaptionTask:
        model = source.load(AutoModelForImageTextToText.from_pretrained, dtype=source.dtype)
        processor = source.load(AutoImageProcessor.from_pretrained)
        tokenizer = source.load(AutoTokenizer.from_pretrained)
        return cls(source, prepare_model(model, source, settings), processor, tokenizer, settings)

    def resolve_options(self, given: dict[str, int]) -> CaptionOptions:
        limits = self.settings
        return CaptionOptions(
            max_new_tokens=check_range(
                "max_new_tokens",
                given.get("max_new_tokens", limits.DEFAULT_MAX_NEW_TOKENS),
                1,
                limits.MAX_NEW_TOKENS_LIMIT,
            ),
            num_beams=check_range("num_beams", given.get("num_beams", 1), 1, limits.MAX_NUM_BEAMS),
        )

    def batch_key(self, options: CaptionOptions) -> CaptionOptions:
        # Every generation option changes the decoding loop, so only equal options share a batch.
        return options

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(self.processor, image)

    def predict(self, pixels: Sequence[torch.Tensor], options: CaptionOptions) -> list[str]:
        pixels = stack_on_device(pixels, self.source)
        with torch.inference_mode():
            generated = self.model.generate(
                pixel_values=pixels,
                max_new_tokens=options.max_new_tokens,
                min_new_tokens=options.min_new_tokens,
                num_beams=options.num_beams,
                do_sample=False,
            )
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]

    def encode(self, output: str, options: CaptionOptions) -> dict:
        return {"caption": output}
