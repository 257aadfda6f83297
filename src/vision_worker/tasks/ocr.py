"""Document OCR: GOT-OCR2 reads a page's text (plain, or formatted as LaTeX / markdown; a
region of it, the text framed in a color, or a large page as tiles) and Donut reads a document
into fields (receipts, forms, DocVQA answers) from a task prompt, each as its model card runs it.

GOT-OCR2's card: `processor(image, return_tensors="pt", format=...)`, then greedy `generate`
with `stop_strings="<|im_end|>"` and the new tokens decoded without special tokens. Donut's
card: the task prompt as `decoder_input_ids`, `generate` without the unknown token, the sequence
decoded with its tokens, the end and padding tokens and the task token removed, then
`processor.token2json`. Prompts are never padded: images share a generate call only when their
prompts have the same tokens' count (GOT; the prompt differs only by box or color) or are the
same prompt (Donut), so a batched page reads exactly as it reads alone.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar, Literal

import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModelForImageTextToText, AutoProcessor

from ..errors import ImageError, JobError
from ..images import photo_size
from .base import (
    Checkpoint,
    ModelLoadError,
    ModelSource,
    Prepared,
    Task,
    load_weights,
    on_device,
    prepare_model,
    stack_on_device,
)
from .generation import (
    DONUT_ENCODERS,
    AnswerStreamer,
    GenerationLimits,
    GenerationOptions,
    checked_generation,
    new_tokens_limit,
)

_GOT_ARCHITECTURES = frozenset({"GotOcr2ForConditionalGeneration"})
_GOT_MODEL_TYPES = frozenset({"got_ocr2"})
# GOT-OCR2 ends its answer with ChatML's end of turn; its generation config stops at
# <|endoftext|>, so its model card stops at this text.
_GOT_STOP = "<|im_end|>"
_GOT_OPTIONS = ("format", "box", "color", "crop_to_patches", "max_patches")


class OcrLimits(GenerationLimits):
    # GOT-OCR2's crop_to_patches: tiles a page is cut into at most (plus a thumbnail). Each tile
    # is one more pass of the vision encoder at its input size (1024 px) and 256 more prompt
    # tokens; a batch holds up to MAX_BATCH_SIZE pages of them.
    MAX_PATCHES: int = Field(12, ge=1, le=64)


class OcrOptions(GenerationOptions):
    format: bool = Field(
        False,
        description="GOT-OCR2: formatted text (LaTeX for formulas, markdown for tables and "
        "layout) instead of plain text.",
    )
    box: list[float] | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="GOT-OCR2: read only this region, [x1, y1, x2, y2] in the photo's pixels "
        "(upright, as its EXIF orientation shows it).",
    )
    color: Literal["red", "green", "blue"] | None = Field(
        None, description="GOT-OCR2: read only the text framed in this color."
    )
    crop_to_patches: bool = Field(
        False,
        description="GOT-OCR2: read a large or dense page as tiles of the model's input size "
        "plus a thumbnail of the whole (each tile costs a vision pass and 256 prompt tokens).",
    )
    max_patches: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="GOT-OCR2 with crop_to_patches: tiles at most; default the processor's "
        "own, at most MAX_PATCHES.",
    )
    prompt: str | None = Field(
        None,
        min_length=1,
        max_length=1_000_000,
        description='Donut: the task start sequence, e.g. "<s_cord-v2>", "<s_synthdog>" or '
        '"<s_docvqa><s_question>When is the break?</s_question><s_answer>"; default the '
        "checkpoint's own task token; at most MAX_TEXT_CHARS characters.",
    )


class OcrTask(Task):
    name: ClassVar[str] = "ocr"
    # The RunPod Hub listing: this task in the TASK menu, and ready-made endpoints for it.
    hub_label: ClassVar[str] = "OCR (documents: GOT-OCR2, Donut)"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("OCR: GOT-OCR 2.0", "stepfun-ai/GOT-OCR-2.0-hf"),
        ("Receipts to JSON: Donut CORD-v2", "naver-clova-ix/donut-base-finetuned-cord-v2"),
        ("Document questions: Donut DocVQA", "naver-clova-ix/donut-base-finetuned-docvqa"),
    )
    summary: ClassVar[str] = (
        "the text of each page (GOT-OCR2: plain or formatted, a region, a color, large pages "
        "as tiles), or its fields as JSON from a task prompt (Donut)"
    )
    Options: ClassVar = OcrOptions
    Limits: ClassVar = OcrLimits
    # A page is hundreds of tokens, not a caption's thirty: the model ends it itself, well
    # before these unless the page is dense (GOT's card allows 4096; raise them for such pages).
    limit_defaults: ClassVar = {"DEFAULT_MAX_NEW_TOKENS": 1024, "MAX_NEW_TOKENS_LIMIT": 2048}
    architectures_doc: ClassVar[str] = (
        "`GotOcr2ForConditionalGeneration` (GOT-OCR 2.0); `VisionEncoderDecoderModel` with a "
        "`donut-swin` encoder (Donut)"
    )
    example_input: ClassVar[dict] = {"images": ["<image>"], "format": True, "max_new_tokens": 128}
    example_output: ClassVar[list] = [
        {"text": "\\section*{Invoice}\nTotal: \\$42.00", "finish_reason": "stop"},
    ]

    def __init__(
        self, source: ModelSource, model: Any, processor: Any, limits: OcrLimits, family: str
    ) -> None:
        self.source = source
        self.model = model
        self.processor = processor
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.limits = limits
        self.family = family  # "got" or "donut"
        self.positions, self.max_new_tokens_limit = new_tokens_limit(model.config, limits)
        self.end_ids = frozenset(_ids(model.generation_config.eos_token_id)) | {
            i for i in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None
        }
        self.forced_end = model.generation_config.forced_eos_token_id is not None
        if family == "got":
            if _GOT_STOP in self.tokenizer.get_vocab():
                self.end_ids |= {self.tokenizer.convert_tokens_to_ids(_GOT_STOP)}
        else:
            start = model.generation_config.decoder_start_token_id
            self.decoder_start = model.config.decoder_start_token_id if start is None else start
            self.default_prompt = _donut_task_token(self.decoder_start, self.tokenizer)

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        if checkpoint.saved_as(_GOT_ARCHITECTURES, _GOT_MODEL_TYPES):
            return True
        encoder_decoder = checkpoint.saved_as(
            {"VisionEncoderDecoderModel"}, {"vision-encoder-decoder"}
        )
        return encoder_decoder and checkpoint.encoder_type in DONUT_ENCODERS

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, limits: OcrLimits) -> OcrTask:
        family = "got" if checkpoint.saved_as(_GOT_ARCHITECTURES, _GOT_MODEL_TYPES) else "donut"
        what = "language model" if family == "got" else "trained text decoder"
        model, _ = load_weights(source, AutoModelForImageTextToText, cls.name, what)
        processor = source.load_processor(AutoProcessor.from_pretrained, "processor")
        expected = "GotOcr2Processor" if family == "got" else "DonutProcessor"
        if type(processor).__name__ != expected:
            raise ModelLoadError(
                f"{source.name} has a {type(processor).__name__}; its model reads with a "
                f"{expected} (set PROCESSOR_NAME to the checkpoint it was fine-tuned from)"
            )
        return cls(source, prepare_model(model, source), processor, limits, family)

    # --- options ----------------------------------------------------------------------------
    def warmup_options(self) -> OcrOptions:
        return self.check(OcrOptions(max_new_tokens=2))

    def check(self, options: OcrOptions) -> OcrOptions:
        update = {
            "max_new_tokens": checked_generation(options, self.max_new_tokens_limit, self.limits)
        }
        if self.family == "got":
            update |= self._check_got(options)
        else:
            update |= self._check_donut(options, update["max_new_tokens"])
        return options.model_copy(update=update)

    def _check_got(self, options: OcrOptions) -> dict:
        if options.prompt is not None:
            raise JobError(
                '"prompt" is a Donut option; GOT-OCR2 reads with "format", "box", "color" '
                'and "crop_to_patches"'
            )
        if options.box is not None:
            x1, y1, x2, y2 = options.box
            if not (0 <= x1 < x2 and 0 <= y1 < y2):
                raise JobError(
                    f'"box" must be [x1, y1, x2, y2] in pixels with 0 <= x1 < x2 and '
                    f"0 <= y1 < y2, got {options.box}"
                )
        if not options.crop_to_patches:
            if options.max_patches is not None:
                raise JobError('"max_patches" bounds "crop_to_patches"; set it to true as well')
            return {}
        if options.box is not None or options.color is not None:
            raise JobError(
                '"box" and "color" read a region of the whole page; they do not combine with '
                '"crop_to_patches"'
            )
        limit = self.limits.MAX_PATCHES
        if options.max_patches is not None and options.max_patches > limit:
            raise JobError(
                f'"max_patches" must be between 1 and {limit} (MAX_PATCHES), '
                f"got {options.max_patches}"
            )
        own = getattr(self.image_processor, "max_patches", limit)
        return {"max_patches": options.max_patches or min(own, limit)}

    def _check_donut(self, options: OcrOptions, max_new_tokens: int) -> dict:
        given = [name for name in _GOT_OPTIONS if getattr(options, name) not in (None, False)]
        if given:
            raise JobError(
                f'"{given[0]}" is a GOT-OCR2 option; Donut reads what its task "prompt" asks for'
            )
        if options.prompt is None:
            prompt = self.default_prompt
            if prompt is None and self.decoder_start is None:
                raise JobError(
                    "this checkpoint has no task token or decoder start of its own: give its "
                    '"prompt", e.g. "<s_cord-v2>"'
                )
        else:
            prompt = options.prompt
            if len(prompt) > self.limits.MAX_TEXT_CHARS:
                raise JobError(f'"prompt" is over {self.limits.MAX_TEXT_CHARS} characters')
            ids = self._prompt_ids(prompt)
            first = self.tokenizer.convert_ids_to_tokens(ids[0]) if ids else ""
            if first not in self.tokenizer.get_added_vocab():
                shown = ", ".join(_task_tokens(self.tokenizer)[:4]) or "<s_cord-v2>"
                raise JobError(
                    f'"prompt" must start with a task token of this checkpoint ({shown}), '
                    f"got {prompt[:40]!r}"
                )
        room = self.positions - max_new_tokens
        if len(self._prompt_ids(prompt)) > room:
            raise JobError(
                f'"prompt" is too long: with max_new_tokens={max_new_tokens} this model has '
                f"room for {room} prompt tokens"
            )
        return {"prompt": prompt}

    def _prompt_ids(self, prompt: str | None) -> list[int]:
        """Donut's decoder_input_ids: the prompt's tokens (its model card), or the decoder's
        start token for a checkpoint without a task token of its own."""
        if prompt is None:
            return [self.decoder_start]
        return self.tokenizer(prompt, add_special_tokens=False).input_ids

    # --- batches ----------------------------------------------------------------------------
    def batch_key(self, item: Prepared, options: OcrOptions) -> Hashable:
        # Every generation option changes the decoding loop. Prompts are not padded: GOT's
        # share a pass when their token counts are equal (the box or color may differ), Donut's
        # when they are the same prompt.
        prompt = item.inputs["input_ids"].shape[1] if self.family == "got" else options.prompt
        return (item.kind, options.max_new_tokens, options.num_beams, prompt)

    def decode_target(self, options: OcrOptions) -> dict | None:
        if options.crop_to_patches or options.box is not None:
            # Tiles are cut from the page at full resolution; a box is in the photo's pixels
            # and normalized by the size of the image the processor sees.
            return None
        return self.input_size()

    def prepare(self, image: Image.Image, options: OcrOptions) -> Prepared:
        if self.family == "donut":
            pixels = self.processor(images=image, return_tensors="pt").pixel_values
            prompt = torch.tensor(self._prompt_ids(options.prompt))
            return Prepared({"pixel_values": pixels[0], "decoder_input_ids": prompt})
        kwargs: dict[str, Any] = {"format": options.format}
        if options.color is not None:
            kwargs["color"] = options.color
        if options.box is not None:
            kwargs["box"] = _box_in(image, options.box)
        if options.crop_to_patches:
            kwargs |= {"crop_to_patches": True, "max_patches": options.max_patches}
        inputs = self.processor(images=image, return_tensors="pt", **kwargs)
        length = inputs["input_ids"].shape[1]
        if length + options.max_new_tokens > self.positions:
            raise ImageError(
                "too_large",
                f"the prompt is {length} tokens with this image; with max_new_tokens="
                f"{options.max_new_tokens} it needs more than the model's {self.positions}",
            )
        return Prepared(
            {key: inputs[key] for key in ("input_ids", "attention_mask", "pixel_values")},
            meta={"prompt_tokens": length},
        )

    def forward(self, items: Sequence[Prepared], options: Sequence[Any]) -> tuple:
        first = options[0]  # the decoding loop's options are equal for the whole batch
        decoding = {
            "max_new_tokens": first.max_new_tokens,
            "num_beams": first.num_beams,
            "do_sample": False,
        }
        with torch.inference_mode():
            if self.family == "got":
                # Each image's tiles follow one another along dim 0, as the processor joins
                # a batch of its own; the model fills the image tokens in that order.
                batch = {
                    key: on_device(torch.cat([item.inputs[key] for item in items]), self.source)
                    for key in ("input_ids", "attention_mask", "pixel_values")
                }
                if first.num_beams == 1 and any(item.on_text is not None for item in items):
                    # A page of text takes a while: its lines go out as they are generated.
                    decoding["streamer"] = AnswerStreamer(
                        [item.on_text for item in items], self._text_so_far, self.end_ids
                    )
                generated = self.model.generate(
                    **batch, tokenizer=self.tokenizer, stop_strings=_GOT_STOP, **decoding
                )
                start = batch["input_ids"].shape[1]
            else:
                # One prompt for the whole batch (batch_key): stacked, not padded.
                pixels, ids = (
                    stack_on_device([item.inputs[key] for item in items], self.source)
                    for key in ("pixel_values", "decoder_input_ids")
                )
                unknown = self.tokenizer.unk_token_id
                generated = self.model.generate(
                    pixels,
                    decoder_input_ids=ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    use_cache=True,
                    bad_words_ids=None if unknown is None else [[unknown]],
                    **decoding,
                )
                start = ids.shape[1]
        return generated.cpu(), start

    def _text_so_far(self, _prompt_end: list[int], new_tokens: list[int]) -> str:
        """GOT's text as `split` decodes it: the new tokens alone."""
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)

    def split(self, raw: tuple, items: Sequence[Prepared], options: Sequence[Any]) -> list[dict]:
        generated, start = raw
        endings = [
            self._finish_reason(row, job.max_new_tokens)
            for row, job in zip(generated[:, start:].tolist(), options, strict=True)
        ]
        if self.family == "got":
            texts = self.tokenizer.batch_decode(generated[:, start:], skip_special_tokens=True)
            return [
                {"text": text, "finish_reason": reason}
                for text, reason in zip(texts, endings, strict=True)
            ]
        results = []
        for sequence, reason in zip(self.processor.batch_decode(generated), endings, strict=True):
            sequence = sequence.replace(self.tokenizer.eos_token, "")
            sequence = sequence.replace(self.tokenizer.pad_token, "")
            sequence = re.sub(r"<.*?>", "", sequence, count=1).strip()  # the task token
            fields = self.processor.token2json(sequence)
            results.append({"sequence": sequence, "fields": fields, "finish_reason": reason})
        return results

    def _finish_reason(self, new_tokens: list[int], max_new_tokens: int) -> str:
        """Why the text ended: "stop" when the model ended it (an end token; padding after it
        in a batch), "length" when max_new_tokens cut it. A decoder with a forced end token
        (MBart's, so Donut's) is given one in the last place when it is cut: "length" too."""
        end = next((i for i, token in enumerate(new_tokens) if token in self.end_ids), None)
        if end is None or (self.forced_end and end == max_new_tokens - 1):
            return "length"
        return "stop"

    def encode(self, output: dict, meta: dict, options: OcrOptions) -> dict:
        return output


def _ids(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def _box_in(image: Image.Image, box: list[float]) -> list[float]:
    """The job's box (the upright photo's pixels) in the pixels of the image the processor
    sees, which normalizes it to GOT's 0-1000 by that image's size; ImageError outside it."""
    width, height = photo_size(image)
    x1, y1, x2, y2 = box
    if x2 > width or y2 > height:
        raise ImageError("invalid_image", f"the box {box} is outside the {width}x{height} photo")
    if (width, height) == image.size:
        return list(box)  # a new list: the processor writes the normalized values into it
    scale_x, scale_y = image.width / width, image.height / height
    return [x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y]


def _task_tokens(tokenizer: Any) -> list[str]:
    """Donut's task start tokens: added "<s_...>" tokens that no "</s_...>" closes (the fields
    a task reads come in pairs; the token that starts it does not)."""
    added = tokenizer.get_added_vocab()
    return sorted(
        token
        for token in added
        if token.startswith("<s_") and token.endswith(">") and f"</{token[1:]}" not in added
    )


def _donut_task_token(start: int | None, tokenizer: Any) -> str | None:
    """The prompt a job without one gets: the decoder's start token where it is a task token,
    else the checkpoint's one task token (a fine-tuned Donut has one: <s_cord-v2>, <s_docvqa>,
    <s_rvlcdip>); None (the decoder's start token alone) where it has several or none."""
    if start is not None:
        token = tokenizer.convert_ids_to_tokens(start)
        if isinstance(token, str) and token.startswith("<s_"):
            return token
    tasks = _task_tokens(tokenizer)
    return tasks[0] if len(tasks) == 1 else None
