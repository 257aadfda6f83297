"""Visual questions: image-text-to-text models (LLaVA, SmolVLM/Idefics3, Qwen2-VL, PaliGemma, ...)
answer a question about each image, through the checkpoint's own processor and chat template.

Each image's prompt is built as transformers' `image-text-to-text` pipeline builds it (the chat
template over one user turn holding the image and the question), so answers equal the
pipeline's. Images with different questions share a batch: prompts are left-padded, and the
vision inputs are joined as the processor joins a batch of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from ..errors import ImageError, JobError
from ..images import photo_size
from .base import (
    Batch,
    Checkpoint,
    JobItem,
    ModelLoadError,
    ModelSource,
    Prepared,
    Task,
    architectures_in,
    load_weights,
    prepare_model,
)
from .generation import (
    CAPTIONER_ARCHITECTURES,
    CAPTIONER_MODEL_TYPES,
    AnswerStreamer,
    GenerationLimits,
    GenerationOptions,
    checked_generation,
    new_tokens_limit,
)
from .paligemma_outputs import paligemma_detections

# Every image-text-to-text architecture; the captioners among them (BLIP, GIT, ViT-GPT2) have no
# chat template and are served by `caption`, which comes first in the registry.
_ARCHITECTURES = architectures_in(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


class AskLimits(GenerationLimits):
    # Images in one question (`together`): each adds its image tokens to the one prompt, and
    # all of them are decoded at once.
    MAX_IMAGES_PER_QUESTION: int = Field(8, ge=1, le=64)
    # Per-job resolution, where the image processor takes it. Qwen2-VL-style processors
    # (Qwen2-VL, Qwen2.5-VL): `min_pixels`/`max_pixels`, the pixel budget of one image, each
    # image token 28x28 px; the default is those checkpoints' own maximum (16384 image tokens).
    MAX_VLM_PIXELS: int = Field(16384 * 28 * 28, ge=1)
    # SmolVLM/Idefics3: `longest_edge`, the size an image is scaled to before it is split into
    # tiles of the vision tower's input size (SmolVLM's 512 px: 2048 is 4x4 tiles and a global
    # view, each tile its 64 more image tokens).
    MAX_VLM_LONGEST_EDGE: int = Field(2048, ge=1)


class AskOptions(GenerationOptions):
    question: str | None = Field(
        None,
        min_length=1,
        max_length=1_000_000,
        description="One question for every image of the job, at most MAX_TEXT_CHARS characters.",
    )
    questions: list[str] | None = Field(
        None, min_length=1, description="One question per image, in the images' order."
    )
    system: str | None = Field(
        None,
        min_length=1,
        max_length=1_000_000,
        description="A system message before the question, where the chat template takes one.",
    )
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="0 answers greedily; above 0 samples at this temperature."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling (with temperature).")
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Sampling seed: the same seed, image and question give the same answer.",
    )
    stop: list[str] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="Up to 4 texts that end the answer (not included in it).",
    )
    together: bool = Field(
        False,
        description="One answer about all the job's images at once, in their order (e.g. "
        '"what changed between these photos?"), for models that take several images in one '
        "prompt; at most MAX_IMAGES_PER_QUESTION images, one result.",
    )
    min_pixels: int | None = Field(
        None,
        ge=1,
        le=10**12,
        description="Qwen2-VL and Qwen2.5-VL: each image is scaled to at least this many pixels "
        "(28x28 px an image token); default the processor's own, at most MAX_VLM_PIXELS.",
    )
    max_pixels: int | None = Field(
        None,
        ge=1,
        le=10**12,
        description="Qwen2-VL and Qwen2.5-VL: each image is scaled to at most this many pixels, "
        "which sets its number of image tokens; default the processor's own, at most "
        "MAX_VLM_PIXELS.",
    )
    longest_edge: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="SmolVLM and Idefics3: each image's longest edge is scaled to this many "
        "pixels before it is split into tiles (more tiles, more image tokens); default the "
        "processor's own, at most MAX_VLM_LONGEST_EDGE.",
    )


class AskTask(Task):
    name: ClassVar[str] = "ask"
    # The RunPod Hub listing: this task in the TASK menu, and ready-made endpoints for it.
    hub_label: ClassVar[str] = "Ask (visual questions, VLMs)"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Visual questions: LLaVA-Interleave Qwen 0.5B", "llava-hf/llava-interleave-qwen-0.5b-hf"),
    )
    summary: ClassVar[str] = "an answer per image to the job's question (small VLMs)"
    Options: ClassVar = AskOptions
    Limits: ClassVar = AskLimits
    architectures_doc: ClassVar[str] = (
        "image-text-to-text checkpoints with a chat template: `LlavaForConditionalGeneration`, "
        "`SmolVLMForConditionalGeneration`, `Qwen2VLForConditionalGeneration`, "
        "`Qwen2_5_VLForConditionalGeneration`, ..."
    )
    example_input: ClassVar[dict] = {
        "images": ["<image>", "<image>"],
        "question": "What is the animal doing?",
    }
    example_output: ClassVar[list] = [
        {
            "answer": "The cat is lying on a couch.",
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 1184, "completion_tokens": 9},
        },
    ]

    def __init__(self, source: ModelSource, model: Any, processor: Any, limits: AskLimits) -> None:
        self.source = source
        self.model = model
        self.processor = processor
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.limits = limits
        self.positions, self.max_new_tokens_limit = new_tokens_limit(model.config, limits)
        self.resolution = _resolution_kind(self.image_processor)
        # A streamed answer is cut after its prompt's end at every step; each row's prompt end
        # is decoded once (rows of a batch, and repeated questions, share few distinct ends).
        self._prompt_end_text = functools.lru_cache(maxsize=256)(self._decoded)

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        captioner = checkpoint.saved_as(CAPTIONER_ARCHITECTURES, CAPTIONER_MODEL_TYPES)
        return checkpoint.saved_as(_ARCHITECTURES, ()) and not captioner

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, limits: AskLimits) -> AskTask:
        model, _ = load_weights(source, AutoModelForImageTextToText, cls.name, "language model")
        processor = source.load_processor(AutoProcessor.from_pretrained, "processor")
        if not getattr(processor, "chat_template", None):
            raise ModelLoadError(
                f"{source.name} has no chat template; questions need one (captioners without "
                "one serve TASK=caption, Florence-2 TASK=florence, GOT-OCR2 TASK=ocr)"
            )
        # Prompts of different lengths share a batch: padded on the left, so every prompt ends
        # where generation starts.
        processor.tokenizer.padding_side = "left"
        return cls(source, prepare_model(model, source), processor, limits)

    def warmup_options(self) -> AskOptions:
        return self.check(AskOptions(question="What is in the image?", max_new_tokens=2))

    def check(self, options: AskOptions) -> AskOptions:
        if (options.question is None) == (options.questions is None):
            raise JobError('give either "question" (for every image) or "questions" (one each)')
        for text in options.questions or [options.question]:
            if not text.strip() or len(text) > self.limits.MAX_TEXT_CHARS:
                raise JobError(
                    f"each question must be 1 to {self.limits.MAX_TEXT_CHARS} characters "
                    "and not blank"
                )
        for text in [options.system or "", *(options.stop or ())]:
            if len(text) > self.limits.MAX_TEXT_CHARS:
                raise JobError(
                    f'"system" and "stop" texts are at most {self.limits.MAX_TEXT_CHARS} characters'
                )
        if options.stop is not None and not all(options.stop):
            raise JobError('"stop" texts must not be empty')
        if options.together and options.questions is not None:
            raise JobError('"together" asks one "question" about all the images, not "questions"')
        if options.temperature > 0 and options.num_beams > 1:
            raise JobError('"temperature" samples one answer; it does not combine with num_beams')
        self._resolution(options)  # refused here, before any image is read
        tokens = checked_generation(options, self.max_new_tokens_limit, self.limits)
        return options.model_copy(update={"max_new_tokens": tokens})

    def _resolution(self, options: AskOptions) -> dict[str, Any]:
        """The processor kwargs of the job's resolution options ({} without any): the `size`
        these processors take per call, as the pipeline's `processor_kwargs` pass it."""
        given = {
            name: getattr(options, name)
            for name in ("min_pixels", "max_pixels", "longest_edge")
            if getattr(options, name) is not None
        }
        if not given:
            return {}
        takes = _RESOLUTION_OPTIONS.get(self.resolution, ())
        refused = [name for name in given if name not in takes]
        if refused:
            which = " and ".join(f'"{name}"' for name in takes) or "none of them"
            raise JobError(
                f'"{refused[0]}" does not apply to this model\'s image processor '
                f"({type(self.image_processor).__name__}, which takes {which}): "
                '"min_pixels" and "max_pixels" set the pixel budget of Qwen2-VL and Qwen2.5-VL '
                'processors, "longest_edge" the tiling of SmolVLM and Idefics3 processors'
            )
        if self.resolution == "edge":
            limit = self.limits.MAX_VLM_LONGEST_EDGE
            if options.longest_edge > limit:
                raise JobError(
                    f'"longest_edge" must be between 1 and {limit} (MAX_VLM_LONGEST_EDGE), '
                    f"got {options.longest_edge}"
                )
            return {"size": {"longest_edge": options.longest_edge}}
        limit = self.limits.MAX_VLM_PIXELS
        for name, value in given.items():
            if value > limit:
                raise JobError(
                    f'"{name}" must be between 1 and {limit} (MAX_VLM_PIXELS), got {value}'
                )
        own = self.image_processor.size
        low = options.min_pixels or own.shortest_edge
        high = options.max_pixels or own.longest_edge
        if low > high:
            raise JobError(
                f'"min_pixels" ({low}) must not exceed "max_pixels" ({high}); this model\'s own '
                f"budget is {own.shortest_edge} to {own.longest_edge} pixels"
            )
        return {"size": {"shortest_edge": low, "longest_edge": high}}

    def job_items(self, sources: Sequence[str | bytes], options: AskOptions) -> list[JobItem]:
        images = len(sources)
        if options.together:
            if images > self.limits.MAX_IMAGES_PER_QUESTION:
                raise JobError(
                    f'"together" takes at most {self.limits.MAX_IMAGES_PER_QUESTION} images in '
                    f"one question (MAX_IMAGES_PER_QUESTION), got {images}"
                )
            return [JobItem(options, images=tuple(sources), together=True)]
        if options.questions is None:
            return super().job_items(sources, options)
        if len(options.questions) != images:
            raise JobError(
                f'"questions" has {len(options.questions)} questions for {images} images; '
                'give one per image, or one "question" for all'
            )
        return [
            JobItem(options.model_copy(update={"question": question}), images=(source,))
            for source, question in zip(sources, options.questions, strict=True)
        ]

    def batch_key(self, item: Prepared, options: AskOptions) -> Hashable:
        # Questions and resolutions (min_pixels, max_pixels, longest_edge) differ freely within
        # a batch: they shape each image's own inputs, which `collate` joins as it joins photos
        # of different sizes; the decoding loop's options may not. A seeded
        # answer runs alone: the random stream is the batch's, so only alone does the same seed
        # give the same answer.
        alone = id(item) if options.seed is not None else None
        sampling = (options.temperature, options.top_p, tuple(options.stop or ()), alone)
        return (item.kind, options.max_new_tokens, options.num_beams, sampling)

    def decode_target(self, options: AskOptions) -> dict | None:
        # Decoded in full: these processors lay out tiles and image tokens from the image's own
        # size (LLaVA-NeXT's `image_sizes` and grid, Qwen2-VL's dynamic resolution, Idefics3's
        # splits), so a scaled decode could change the prompt itself; and generation costs far
        # more than the full decode of a 12 MP JPEG (about 0.1 s a core).
        return None

    def prepare(self, image: Image.Image, options: AskOptions) -> Prepared:
        prompt = self.processor.apply_chat_template(
            self._turns([{"type": "image"}], options), add_generation_prompt=True
        )
        inputs = self.processor(
            images=[image], text=[prompt], return_tensors="pt", **self._resolution(options)
        )
        prepared = self._checked(dict(inputs.items()), "this image", options)
        # PaliGemma's location tokens are boxes in the upright photo's pixels (encode).
        prepared.meta["photo_size"] = photo_size(image)
        return prepared

    def prepare_together(self, images: list[Image.Image], options: AskOptions) -> Prepared:
        # As the pipeline does for a chat: the processor's template takes the images from the
        # turn itself, so each processor nests them per prompt as its model expects.
        parts = [{"type": "image", "image": image} for image in images]
        inputs = self.processor.apply_chat_template(
            self._turns(parts, options),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs=self._resolution(options),
        )
        return self._checked(dict(inputs.items()), f"these {len(images)} images", options)

    def _turns(self, images: list[dict], options: AskOptions) -> list[dict]:
        turns = [{"role": "user", "content": [*images, {"type": "text", "text": options.question}]}]
        if options.system is not None:
            system = [{"type": "text", "text": options.system}]
            turns.insert(0, {"role": "system", "content": system})
        return turns

    def _checked(self, inputs: dict[str, torch.Tensor], what: str, options: AskOptions) -> Prepared:
        # Checked per item, before batching: past its positions the decoder would fail the
        # whole batch, other jobs' images included.
        length = inputs["input_ids"].shape[1]
        if length + options.max_new_tokens > self.positions:
            raise ImageError(
                "too_large",
                f"the prompt is {length} tokens with {what}; with max_new_tokens="
                f"{options.max_new_tokens} it needs more than the model's {self.positions}",
            )
        return Prepared(inputs, meta={"prompt_tokens": length})

    def collate(self, items: Sequence[Prepared], options: Sequence[Any]) -> Batch:
        return Batch(items, self._joined(items))

    def forward(self, batch: Batch, options: Sequence[Any]) -> tuple:
        first = options[0]  # decoding options are equal for the whole batch (batch_key)
        items, inputs = batch.items, batch.inputs
        prompt_length = inputs["input_ids"].shape[1]
        decoding = self._decoding(first)
        # Beam search settles its answer only at the end: nothing to stream before it.
        if first.num_beams == 1 and any(item.on_text is not None for item in items):
            decoding["streamer"] = AnswerStreamer(
                [item.on_text for item in items],
                self._streamed_answer,
                # Only an end token ends a row: a pad token chosen mid-answer is decoded away.
                end_ids=_token_ids(self.model.generation_config.eos_token_id),
                stops=first.stop or (),
            )
        with torch.inference_mode():
            generated = self.model.generate(**inputs, **decoding)
        return generated.cpu(), prompt_length

    def _streamed_answer(self, prompt_end: list[int], new_tokens: list[int]) -> str:
        """The answer so far, cut as `split` cuts the whole one: decoded after the prompt's last
        tokens (a word may continue across the boundary), that end's text removed."""
        full = self._decoded(tuple(prompt_end + new_tokens))
        return _answer(full, self._prompt_end_text(tuple(prompt_end)))

    def _decoded(self, tokens: tuple[int, ...]) -> str:
        decode = self.processor.post_process_image_text_to_text
        return decode(torch.tensor([tokens]), skip_special_tokens=True)[0]

    def _decoding(self, options: AskOptions) -> dict[str, Any]:
        """generate's arguments for the batch: greedy or beam search, or sampling."""
        decoding: dict[str, Any] = {
            "max_new_tokens": options.max_new_tokens,
            "num_beams": options.num_beams,
            "do_sample": options.temperature > 0,
        }
        if options.temperature > 0:
            decoding |= {"temperature": options.temperature, "top_p": options.top_p, "top_k": None}
            if options.seed is not None:
                torch.manual_seed(options.seed)  # the batch is this one image (batch_key)
        if options.stop:
            decoding |= {"stop_strings": options.stop, "tokenizer": self.tokenizer}
        return decoding

    def split(self, raw: tuple, items: Sequence[Prepared], options: Sequence[Any]) -> list[dict]:
        generated, prompt_length = raw
        answers = (
            _answer(full, prompt)
            for full, prompt in zip(
                self.processor.post_process_image_text_to_text(generated, skip_special_tokens=True),
                self.processor.post_process_image_text_to_text(
                    generated[:, :prompt_length], skip_special_tokens=True
                ),
                strict=True,
            )
        )
        return [
            self._ending(answer, new_tokens, job)
            for answer, new_tokens, job in zip(
                answers, generated[:, prompt_length:], options, strict=True
            )
        ]

    def _ending(self, answer: str, new_tokens: torch.Tensor, options: AskOptions) -> dict:
        """The answer, cut at a stop text; its tokens and why it ended ("stop", "length")."""
        eos = set(_token_ids(self.model.generation_config.eos_token_id))
        tokens = new_tokens.tolist()
        ended_at = next((i for i, t in enumerate(tokens) if t in eos), None)
        if ended_at is not None:
            count = ended_at + 1  # the end token is generated, and counted
        else:
            # Rows that stopped early (a stop text, another row still running) are padded to
            # the batch's length; a pad token the model chose mid-answer is a generated token.
            count = len(tokens)
            while count and tokens[count - 1] == self.tokenizer.pad_token_id:
                count -= 1
        cut = min((answer.find(t) for t in options.stop or () if t in answer), default=-1)
        if cut >= 0:
            answer, reason = answer[:cut].rstrip(), "stop"
        else:
            ended = ended_at is not None or count < options.max_new_tokens
            reason = "stop" if ended else "length"
        return {"answer": answer, "completion_tokens": count, "finish_reason": reason}

    def encode(self, output: dict, meta: dict, options: AskOptions) -> dict:
        usage = {
            "prompt_tokens": meta["prompt_tokens"],
            "completion_tokens": output["completion_tokens"],
        }
        result = {
            "answer": output["answer"],
            "finish_reason": output["finish_reason"],
            "usage": usage,
        }
        # One image's answer (not `together`: a box there would not say which image it is on).
        if self.model.config.model_type == "paligemma" and "photo_size" in meta:
            found = paligemma_detections(output["answer"], meta["photo_size"])
            if found is not None:
                result["detections"] = found
        return result

    def _joined(self, items: Sequence[Prepared]) -> dict[str, torch.Tensor]:
        """One batch as the processor would make it: prompts left-padded, vision inputs joined
        along the batch axis (padded where images have different numbers of tiles)."""
        pad_id = self.tokenizer.pad_token_id or 0
        length = max(item.inputs["input_ids"].shape[1] for item in items)
        batch: dict[str, torch.Tensor] = {}
        for key in items[0].inputs:
            rows = [item.inputs[key] for item in items]
            if all(_per_token(row, item) for row, item in zip(rows, items, strict=True)):
                # input_ids, attention_mask and any other per-token key the processor returns
                # (Qwen2-VL's mm_token_type_ids): left-padded together, so they stay aligned.
                fill = pad_id if key == "input_ids" else 0
                batch[key] = torch.cat(
                    [torch.nn.functional.pad(r, (length - r.shape[1], 0), value=fill) for r in rows]
                )
            else:
                batch[key] = _join(rows)
        device, dtype = self.source.device, self.source.dtype
        return {
            key: value.to(device, dtype=dtype if value.is_floating_point() else value.dtype)
            for key, value in batch.items()
        }


# Image processors that take a per-call resolution: "pixels", Qwen2-VL's dynamic resolution (a
# pixel budget per image: `size`'s shortest_edge and longest_edge are pixel counts); "edge",
# Idefics3's splitting (`size`'s longest_edge, the image's before it is tiled).
_RESOLUTION_PROCESSORS = {
    "pixels": ("Qwen2VLImageProcessor", "Qwen2VLImageProcessorPil"),
    "edge": (
        "Idefics3ImageProcessor",
        "Idefics3ImageProcessorPil",
        "SmolVLMImageProcessor",
        "SmolVLMImageProcessorPil",
    ),
}
_RESOLUTION_OPTIONS = {"pixels": ("min_pixels", "max_pixels"), "edge": ("longest_edge",)}


def _resolution_kind(image_processor: Any) -> str | None:
    """Which resolution options the image processor takes: "pixels", "edge" or None."""
    import transformers

    for kind, names in _RESOLUTION_PROCESSORS.items():
        classes = tuple(c for c in (getattr(transformers, n, None) for n in names) if c)
        if classes and isinstance(image_processor, classes):
            return kind
    return None


def _per_token(value: torch.Tensor, item: Prepared) -> bool:
    """A tensor with one entry per prompt token: the shape of the item's input_ids."""
    return value.shape == item.inputs["input_ids"].shape


def _token_ids(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def _answer(full_text: str, prompt_text: str) -> str:
    """The generated text after the prompt, cut as the pipeline cuts it: both decoded whole, the
    prompt's text removed from the front (decoding the new tokens alone would split a word that
    continues across the boundary, e.g. "##yke")."""
    start = full_text.find(prompt_text)
    if 0 <= start <= 2:  # the pipeline allows two leading characters (a space, a newline)
        full_text = full_text[start + len(prompt_text) :]
    return full_text.strip()


def _join(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding dim 1 first when its sizes differ (Idefics3/SmolVLM
    tile counts); the models skip all-zero tiles as padding."""
    if len({t.shape[1:] for t in tensors}) > 1 and len({t.ndim for t in tensors}) == 1:
        widest = max(t.shape[1] for t in tensors)
        tensors = [
            torch.cat([t, t.new_zeros(t.shape[0], widest - t.shape[1], *t.shape[2:])], dim=1)
            for t in tensors
        ]
    return torch.cat(tensors)
