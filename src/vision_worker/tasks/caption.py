"""Image captioning: VisionEncoderDecoder (ViT-GPT2), GIT and BLIP through one generate() path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModelForImageTextToText, AutoTokenizer

from ..errors import JobError
from .base import (
    Batch,
    Checkpoint,
    ModelSource,
    Prepared,
    Task,
    load_weights,
    on_device,
    pixel_batch,
    pixel_inputs,
    prepare_model,
)
from .generation import (
    CAPTIONER_ARCHITECTURES,
    CAPTIONER_MODEL_TYPES,
    DONUT_ENCODERS,
    GenerationLimits,
    GenerationOptions,
    checked_generation,
    new_tokens_limit,
)

# Model types that take a prompt, and whether it ends with [SEP] (see _prompt_ids).
_PROMPT_FORMS = {"blip": 1, "git": 0}


class CaptionOptions(GenerationOptions):
    prompt: str | None = Field(
        None,
        min_length=1,
        max_length=1_000_000,
        description="Conditional captioning (BLIP, GIT): the caption starts with this text, e.g. "
        '"a photograph of"; at most MAX_TEXT_CHARS characters.',
    )


class CaptionTask(Task):
    name: ClassVar[str] = "caption"
    # The RunPod Hub listing: this task in the TASK menu, and ready-made endpoints for it.
    hub_label: ClassVar[str] = "Caption"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Captioning: ViT-GPT2 (default)", "nlpconnect/vit-gpt2-image-captioning"),
        ("Captioning: GIT base TextCaps", "microsoft/git-base-textcaps"),
        ("Captioning: BLIP base", "Salesforce/blip-image-captioning-base"),
    )
    summary: ClassVar[str] = (
        "a caption per image (greedy or beam search), or one that continues a prompt"
    )
    Options: ClassVar = CaptionOptions
    Limits: ClassVar = GenerationLimits
    architectures_doc: ClassVar[str] = (
        "`VisionEncoderDecoderModel` (ViT-GPT2, TrOCR), `GitForCausalLM`, "
        "`BlipForConditionalGeneration`"
    )
    example_input: ClassVar[dict] = {"images": ["<image>", "<image>"], "max_new_tokens": 20}
    example_output: ClassVar[list] = [
        {"caption": "a cat laying on a couch next to a remote"},
        {"caption": "an astronaut in a space suit holding a flag"},
    ]
    # Benchmarks pin the caption length (min = max) so runs compare; jobs cannot set it.
    pinned_min_new_tokens: int | None = None

    def __init__(
        self, source: ModelSource, model, processor, tokenizer, limits: GenerationLimits
    ) -> None:
        self.source = source
        self.model = model
        self.processor = self.image_processor = processor
        self.tokenizer = tokenizer
        self.limits = limits
        self.model_type = model.config.model_type
        self.positions, self.max_new_tokens_limit = new_tokens_limit(model.config, limits)

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return (
            checkpoint.saved_as(CAPTIONER_ARCHITECTURES, CAPTIONER_MODEL_TYPES)
            and checkpoint.encoder_type not in DONUT_ENCODERS
        )

    @classmethod
    def load(
        cls, source: ModelSource, checkpoint: Checkpoint, limits: GenerationLimits
    ) -> CaptionTask:
        model, _ = load_weights(
            source, AutoModelForImageTextToText, cls.name, "trained text decoder"
        )
        processor = source.load_image_processor()
        tokenizer = source.load_processor(AutoTokenizer.from_pretrained, "tokenizer")
        return cls(source, prepare_model(model, source), processor, tokenizer, limits)

    def check(self, options: CaptionOptions) -> CaptionOptions:
        max_new_tokens = checked_generation(options, self.max_new_tokens_limit, self.limits)
        if options.prompt is not None:
            self._check_prompt(options.prompt, max_new_tokens)
        return options.model_copy(update={"max_new_tokens": max_new_tokens})

    def _check_prompt(self, prompt: str, max_new_tokens: int) -> None:
        if self.model_type not in _PROMPT_FORMS:
            raise JobError(
                f'"prompt" is not supported by {self.model_type} models (BLIP and GIT take one)'
            )
        if len(prompt) > self.limits.MAX_TEXT_CHARS:
            raise JobError(f'"prompt" is over {self.limits.MAX_TEXT_CHARS} characters')
        room = self.positions - max_new_tokens
        if len(self._prompt_ids(prompt)) > room:
            raise JobError(
                f'"prompt" is too long: with max_new_tokens={max_new_tokens} this model has room '
                f"for {room} prompt tokens"
            )

    def _prompt_ids(self, prompt: str) -> list[int]:
        """The decoder's start as the model was trained on it: BLIP [CLS] p [SEP] (generate swaps
        in its BOS and drops the [SEP]), GIT [CLS] p (both model cards' recipes)."""
        tokens = self.tokenizer(prompt, add_special_tokens=False).input_ids
        form = _PROMPT_FORMS[self.model_type]
        return [self.tokenizer.cls_token_id, *tokens, *([self.tokenizer.sep_token_id] * form)]

    def batch_key(self, item: Prepared, options: CaptionOptions) -> tuple:
        # Every generation option changes the decoding loop, so only equal options share a batch.
        return (item.kind, options.max_new_tokens, options.num_beams, options.prompt)

    def prepare(self, image: Image.Image, options: CaptionOptions) -> Prepared:
        return Prepared(pixel_inputs(self.processor, image))

    def collate(self, items: Sequence[Prepared], options: Sequence[Any]) -> Batch:
        batch = pixel_batch(items, self.source)
        prompt = options[0].prompt  # equal for the whole batch (batch_key)
        if prompt is not None:
            ids = torch.tensor([self._prompt_ids(prompt)]).repeat(len(items), 1)
            batch.inputs["input_ids"] = on_device(ids, self.source)  # BLIP writes into it
        return batch

    def forward(self, batch: Batch, options: Sequence[Any]) -> torch.Tensor:
        first = options[0]  # equal for the whole batch (batch_key)
        with torch.inference_mode():
            generated = self.model.generate(
                **batch.inputs,
                max_new_tokens=first.max_new_tokens,
                min_new_tokens=self.pinned_min_new_tokens,
                num_beams=first.num_beams,
                do_sample=False,
            )
        return generated.cpu()

    def split(self, raw: torch.Tensor, items: Sequence[Prepared], options: Sequence[Any]) -> list:
        texts = self.tokenizer.batch_decode(raw, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]

    def encode(self, output: str, meta: dict, options: CaptionOptions) -> dict:
        return {"caption": output}
