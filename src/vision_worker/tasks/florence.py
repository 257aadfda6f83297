"""Florence-2: one model, many vision tasks, each asked for by a task prompt (`<CAPTION>`, `<OD>`,
`<OCR_WITH_REGION>`, `<CAPTION_TO_PHRASE_GROUNDING>`, ...), answered as generated text that its
processor parses into structure (a caption, boxes and labels, quad boxes, polygons).

Florence-2 gets a task of its own because neither neighbour fits it: `ask` serves chat models and
needs a chat template (Florence-2 has none; its prompts are fixed task tokens, some with an input),
and `caption` returns text only, while most of Florence-2's tasks answer in `<loc_N>` location
tokens that only its processor's `post_process_generation` turns into coordinates.

Each image follows the model card's recipe: `processor(text=task + input, images=image)`,
`generate` (beam search, 3 beams by default, as the card), `batch_decode` keeping special tokens,
`post_process_generation(text, task, image_size)`. The image size given there is the photo's own,
upright (after EXIF rotation), not the decoded image's: location tokens are 1/1000ths of the image
the model saw, stretched to its square input, so they land in the photo's pixels whatever scale a
JPEG was decoded at. Images of one task, input and decoding share a `generate` call; their
prompts are then the same length, so nothing is padded and a batch answers as each image alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar, Literal

import torch
from PIL import Image
from pydantic import Field, model_validator
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from ..errors import JobError
from ..images import photo_size
from .base import (
    Batch,
    Checkpoint,
    MissingWeightsError,
    ModelLoadError,
    ModelSource,
    Prepared,
    Task,
    TaskOptions,
    load_weights,
    prepare_model,
    stack_on_device,
)
from .generation import GenerationLimits, GenerationOptions, checked_generation, new_tokens_limit

_ARCHITECTURES = frozenset({"Florence2ForConditionalGeneration"})
_MODEL_TYPES = frozenset({"florence2"})

# The task prompts of transformers' Florence2Processor (its prompt and parsing tables); a test
# checks this list against them. Region tasks take a box (`region`), the others below free text.
FlorenceTaskToken = Literal[
    "<CAPTION>",
    "<DETAILED_CAPTION>",
    "<MORE_DETAILED_CAPTION>",
    "<OCR>",
    "<OCR_WITH_REGION>",
    "<OD>",
    "<DENSE_REGION_CAPTION>",
    "<REGION_PROPOSAL>",
    "<CAPTION_TO_PHRASE_GROUNDING>",
    "<REFERRING_EXPRESSION_SEGMENTATION>",
    "<OPEN_VOCABULARY_DETECTION>",
    "<REGION_TO_SEGMENTATION>",
    "<REGION_TO_CATEGORY>",
    "<REGION_TO_DESCRIPTION>",
    "<REGION_TO_OCR>",
]
REGION_TASKS = frozenset(
    {
        "<REGION_TO_SEGMENTATION>",
        "<REGION_TO_CATEGORY>",
        "<REGION_TO_DESCRIPTION>",
        "<REGION_TO_OCR>",
    }
)
# The model card's beam width.
CARD_NUM_BEAMS = 3


class Region(TaskOptions):
    """A box in the photo's pixels (after EXIF rotation), as results give boxes."""

    xmin: float = Field(ge=0, le=1_000_000, description="Left edge, in the photo's pixels.")
    ymin: float = Field(ge=0, le=1_000_000, description="Top edge, in the photo's pixels.")
    xmax: float = Field(ge=0, le=1_000_000, description="Right edge, in the photo's pixels.")
    ymax: float = Field(ge=0, le=1_000_000, description="Bottom edge, in the photo's pixels.")

    @model_validator(mode="after")
    def _corners_in_order(self) -> Region:
        if self.xmax <= self.xmin or self.ymax <= self.ymin:
            raise ValueError("a region needs xmax > xmin and ymax > ymin")
        return self


class FlorenceOptions(GenerationOptions):
    # Not "task": that job field names the served task ("florence").
    task_prompt: FlorenceTaskToken = Field(
        "<CAPTION>",
        description="The Florence-2 task: captions (<CAPTION>, <DETAILED_CAPTION>, "
        "<MORE_DETAILED_CAPTION>), text (<OCR>, <OCR_WITH_REGION>), boxes (<OD>, "
        "<DENSE_REGION_CAPTION>, <REGION_PROPOSAL>), tasks on a text "
        "(<CAPTION_TO_PHRASE_GROUNDING>, <REFERRING_EXPRESSION_SEGMENTATION>, "
        "<OPEN_VOCABULARY_DETECTION>) or on a region (<REGION_TO_SEGMENTATION>, "
        "<REGION_TO_CATEGORY>, <REGION_TO_DESCRIPTION>, <REGION_TO_OCR>).",
    )
    text: str | None = Field(
        None,
        min_length=1,
        max_length=1_000_000,
        description="The text a text task works on (the phrase to ground, the object to find); "
        "only for those tasks, at most MAX_TEXT_CHARS characters.",
    )
    region: Region | None = Field(
        None,
        description="The box a region task works on, in the photo's pixels (after EXIF "
        "rotation); only for the <REGION_TO_...> tasks.",
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Tokens generated at most; default and at most MAX_NEW_TOKENS_LIMIT (the "
        "model ends its answer itself, and a list of boxes cut short loses boxes).",
    )
    num_beams: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Beam width; default 3 as the model card (or MAX_NUM_BEAMS if lower), at "
        "most MAX_NUM_BEAMS.",
    )


class FlorenceTask(Task):
    name: ClassVar[str] = "florence"
    # The RunPod Hub listing: this task in the TASK menu, and ready-made endpoints for it.
    hub_label: ClassVar[str] = "Florence-2 (captions, OCR, boxes by task prompt)"
    # florence-community holds the transformers-native conversions; microsoft/Florence-2-* are
    # remote-code checkpoints (another config and weight layout) that need trust_remote_code.
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Florence-2 base: captions, OCR, detection", "florence-community/Florence-2-base"),
    )
    summary: ClassVar[str] = (
        "Florence-2's answer to a task prompt per image: a caption or text, or boxes, quad boxes "
        "and polygons in the original image's pixels, with the generated text"
    )
    Options: ClassVar = FlorenceOptions
    Limits: ClassVar = GenerationLimits
    # The card's recipe generates up to 1024 tokens: a dense <OD> or <OCR> answer cut short
    # loses boxes or lines.
    limit_defaults: ClassVar = {"MAX_NEW_TOKENS_LIMIT": 1024}
    architectures_doc: ClassVar[str] = (
        "`Florence2ForConditionalGeneration` (transformers-native Florence-2, e.g. "
        "florence-community/Florence-2-base)"
    )
    example_input: ClassVar[dict] = {"image": "<image>", "task_prompt": "<OD>"}
    example_output: ClassVar[list] = [
        {
            "parsed": {"bboxes": [[34, 160, 597, 371]], "labels": ["car"]},
            "generated_text": "</s><s>car<loc_54><loc_375><loc_933><loc_870></s>",
            "finish_reason": "stop",
        }
    ]

    def __init__(
        self, source: ModelSource, model: Any, processor: Any, limits: GenerationLimits
    ) -> None:
        self.source = source
        self.model = model
        self.processor = processor
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.limits = limits
        self.positions, self.max_new_tokens_limit = new_tokens_limit(model.config, limits)
        self.encoder_positions = getattr(
            model.config.get_text_config(), "max_position_embeddings", None
        )
        self.takes_text = frozenset(processor.task_prompts_with_input) - REGION_TASKS
        self.pad_id = self.tokenizer.pad_token_id

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(_ARCHITECTURES, _MODEL_TYPES)

    @classmethod
    def load(
        cls, source: ModelSource, checkpoint: Checkpoint, limits: GenerationLimits
    ) -> FlorenceTask:
        try:
            model, _ = load_weights(
                source, AutoModelForImageTextToText, cls.name, "Florence-2 weights"
            )
        except MissingWeightsError:
            if getattr(source.load(AutoConfig.from_pretrained), "auto_map", None):
                raise ModelLoadError(
                    f"{source.name} is Florence-2 in its original remote-code layout "
                    "(microsoft/Florence-2-*: weights for its own modeling code, which needs "
                    "trust_remote_code and never runs here); use a transformers-native "
                    "conversion, e.g. florence-community/Florence-2-base"
                ) from None
            raise
        processor = source.load_processor(AutoProcessor.from_pretrained, "processor")
        if not hasattr(processor, "post_process_generation"):
            raise ModelLoadError(
                f"{source.name} has a {type(processor).__name__}, not Florence-2's processor "
                "(its task prompts and the parsing of its answers)"
            )
        return cls(source, prepare_model(model, source), processor, limits)

    def warmup_options(self) -> FlorenceOptions:
        return self.check(FlorenceOptions(max_new_tokens=2))

    def check(self, options: FlorenceOptions) -> FlorenceOptions:
        task = options.task_prompt
        if task not in self.processor.tasks_answer_post_processing_type:
            raise JobError(f"this model's processor has no task {task}")
        self._check_input(options)
        beams = options.num_beams or min(CARD_NUM_BEAMS, self.limits.MAX_NUM_BEAMS)
        options = options.model_copy(update={"num_beams": beams})
        checked_generation(options, self.max_new_tokens_limit, self.limits)
        tokens = options.max_new_tokens or self.max_new_tokens_limit
        return options.model_copy(update={"max_new_tokens": tokens})

    def _check_input(self, options: FlorenceOptions) -> None:
        task, text, region = options.task_prompt, options.text, options.region
        if task in self.takes_text:
            if text is None:
                raise JobError(f'task {task} needs "text": the text it works on')
            if not text.strip() or len(text) > self.limits.MAX_TEXT_CHARS:
                raise JobError(
                    f'"text" must be 1 to {self.limits.MAX_TEXT_CHARS} characters and not blank'
                )
            tokens = re.findall(r"<[A-Z_]+>", text)
            if any(t in self.processor.tasks_answer_post_processing_type for t in tokens):
                raise JobError('"text" must not hold a task prompt; give that as "task_prompt"')
            self._check_prompt_length(options)
        elif text is not None:
            raise JobError(
                f'"text" is for the tasks that take one ({", ".join(sorted(self.takes_text))}); '
                f"{task} takes none"
            )
        if task in REGION_TASKS and region is None:
            raise JobError(f'task {task} needs "region": a box in the photo\'s pixels')
        if task not in REGION_TASKS and region is not None:
            raise JobError(
                f'"region" is for the region tasks ({", ".join(sorted(REGION_TASKS))}); '
                f"{task} takes none"
            )

    def _check_prompt_length(self, options: FlorenceOptions) -> None:
        """The encoder reads the image's tokens and the prompt together, within its positions."""
        if not self.encoder_positions:
            return
        prompt = self.processor.task_prompts_with_input[options.task_prompt]
        prompt = prompt.format(input=(options.text or "").strip())
        ids = self.tokenizer(prompt, add_special_tokens=True).input_ids
        length = self.processor.num_image_tokens + len(ids)
        if length > self.encoder_positions:
            raise JobError(
                f'"text" is too long: the image and the prompt are {length} tokens, and this '
                f"model reads at most {self.encoder_positions}"
            )

    def batch_key(self, item: Prepared, options: FlorenceOptions) -> Hashable:
        # One prompt (or prompts of one length: a region is always four location tokens) and
        # one decoding loop per generate call; the shapes too, so the batch stacks unpadded.
        return (
            item.kind,
            options.task_prompt,
            options.text,
            options.max_new_tokens,
            options.num_beams,
            *(tuple(value.shape) for value in item.inputs.values()),
        )

    def prepare(self, image: Image.Image, options: FlorenceOptions) -> Prepared:
        size = photo_size(image)
        inputs = self.processor(
            text=[options.task_prompt + self._task_input(options, size)],
            images=[image],
            return_tensors="pt",
        )
        return Prepared({key: value[0] for key, value in inputs.items()}, meta={"size": size})

    def _task_input(self, options: FlorenceOptions, size: tuple[int, int]) -> str:
        """What follows the task token in the prompt: the text, or the region as Florence-2's
        location tokens (1/1000ths of the photo, as its answers give them)."""
        if options.region is None:
            return options.text or ""
        box, (width, height) = options.region, size
        # As Florence2PostProcessor.quantize bins, but computed as x * 1000 / width: its
        # x / (width / 1000) puts 300 of 600 pixels in bin 499.
        corners = (box.xmin, box.ymin, box.xmax, box.ymax)
        sides = (width, height, width, height)
        bins = (
            min(999, math.floor(c * 1000 / side)) for c, side in zip(corners, sides, strict=True)
        )
        return "".join(f"<loc_{b}>" for b in bins)

    def collate(self, items: Sequence[Prepared], options: Sequence[Any]) -> Batch:
        return Batch(
            items,
            {
                key: stack_on_device([item.inputs[key] for item in items], self.source)
                for key in items[0].inputs
            },
        )

    def forward(self, batch: Batch, options: Sequence[Any]) -> torch.Tensor:
        first = options[0]  # equal for the whole batch (batch_key)
        with torch.inference_mode():
            generated = self.model.generate(
                **batch.inputs,
                max_new_tokens=first.max_new_tokens,
                num_beams=first.num_beams,
                do_sample=False,
            )
        return generated.cpu()

    def split(self, raw: torch.Tensor, items: Sequence[Prepared], options: Sequence[Any]) -> list:
        """Each image's generated text as the model card decodes it (special tokens kept: the
        location tokens are special), without the padding a longer answer in the batch adds."""
        rows = [_unpadded(row.tolist(), self.pad_id) for row in raw]
        texts = self.processor.batch_decode(rows, skip_special_tokens=False)
        # The decoder starts from one token; an answer that used every new token was cut (BART's
        # forced_eos_token_id then ends it with </s> all the same).
        limit = options[0].max_new_tokens
        return [
            {"text": text, "cut": len(row) - 1 >= limit}
            for text, row in zip(texts, rows, strict=True)
        ]

    def encode(self, output: dict, meta: dict, options: FlorenceOptions) -> dict:
        parsed = self.processor.post_process_generation(
            output["text"], task=options.task_prompt, image_size=meta["size"]
        )
        return {
            "parsed": parsed[options.task_prompt],
            "generated_text": output["text"],
            "finish_reason": "length" if output["cut"] else "stop",
        }


def _unpadded(tokens: list[int], pad_id: int | None) -> list[int]:
    """The tokens without the trailing padding of a batch (generate pads shorter answers)."""
    end = len(tokens)
    while end > 1 and tokens[end - 1] == pad_id:
        end -= 1
    return tokens[:end]
