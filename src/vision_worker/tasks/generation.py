"""What every generating task shares (captions, answers): its options, its limits, and the
bounds a decoder's position table puts on them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import Field, model_validator
from transformers.generation.streamers import BaseStreamer

from ..config import TextLimits
from ..errors import JobError
from .base import TaskOptions

log = logging.getLogger(__name__)

# The captioners among the image-text-to-text architectures: a vision encoder and a text
# decoder without a chat template. `caption` serves them; `ask` serves the chat models.
CAPTIONER_ARCHITECTURES = frozenset(
    {"VisionEncoderDecoderModel", "GitForCausalLM", "BlipForConditionalGeneration"}
)
CAPTIONER_MODEL_TYPES = frozenset({"vision-encoder-decoder", "git", "blip"})
# A VisionEncoderDecoderModel is Donut by its encoder (TrOCR and ViT-GPT2 have a ViT one): a
# document reader that answers a task prompt (`ocr`), not a captioner, whose output without
# one is noise.
DONUT_ENCODERS = frozenset({"donut-swin"})


class GenerationLimits(TextLimits):
    # Tokens generated when a job sets none, and at most.
    DEFAULT_MAX_NEW_TOKENS: int = Field(30, ge=1)
    MAX_NEW_TOKENS_LIMIT: int = Field(128, ge=1, le=2048)
    # Beam search multiplies the batch the decoder runs by the beam width.
    MAX_NUM_BEAMS: int = Field(5, ge=1, le=32)

    @model_validator(mode="after")
    def _default_within_limit(self) -> GenerationLimits:
        if self.DEFAULT_MAX_NEW_TOKENS > self.MAX_NEW_TOKENS_LIMIT:
            raise ValueError("DEFAULT_MAX_NEW_TOKENS must not exceed MAX_NEW_TOKENS_LIMIT")
        return self


class GenerationOptions(TaskOptions):
    """What bounds a generation loop; captions and answers share them."""

    max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Tokens generated at most; default DEFAULT_MAX_NEW_TOKENS, "
        "at most MAX_NEW_TOKENS_LIMIT.",
    )
    num_beams: int = Field(1, ge=1, le=1_000_000, description="Beam width, at most MAX_NUM_BEAMS.")


def checked_generation(options: GenerationOptions, limit: int, limits: GenerationLimits) -> int:
    """The job's max_new_tokens (its own or the default, within `limit`); JobError when the
    job asks for more tokens or beams than allowed."""
    if options.max_new_tokens is not None and options.max_new_tokens > limit:
        raise JobError(
            f'"max_new_tokens" must be between 1 and {limit} for this model, '
            f"got {options.max_new_tokens}"
        )
    if options.num_beams > limits.MAX_NUM_BEAMS:
        raise JobError(
            f'"num_beams" must be between 1 and {limits.MAX_NUM_BEAMS}, got {options.num_beams}'
        )
    return options.max_new_tokens or min(limits.DEFAULT_MAX_NEW_TOKENS, limit)


def new_tokens_limit(config: Any, limits: GenerationLimits) -> tuple[int, int]:
    """(the decoder's positions, the most tokens a job may generate): past its position table a
    decoder fails mid-generation, so jobs are bounded by both it and MAX_NEW_TOKENS_LIMIT."""
    positions = decoder_positions(config) or 1_000_000
    return positions, min(limits.MAX_NEW_TOKENS_LIMIT, positions - 1)


def decoder_positions(config: Any) -> int | None:
    """Positions the text decoder can attend to (n_positions / max_position_embeddings)."""
    decoder = getattr(config, "decoder", None) or getattr(config, "text_config", None) or config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(decoder, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


# The prompt's tokens a streamed answer is decoded after: enough for any word to begin there.
PROMPT_CONTEXT_TOKENS = 16
# (the prompt's last tokens, the tokens generated so far) -> the answer so far, cut as the task
# cuts its whole answer.
AnswerSoFar = Callable[[list[int], list[int]], str]


class AnswerStreamer(BaseStreamer):
    """Hands each row's new answer text to its listener as `generate` produces tokens (passed
    as its `streamer`; rows without a listener are skipped).

    `answer_so_far` cuts the text as the task cuts its final answer, so the pieces join into a
    prefix of it. It is given only the prompt's last PROMPT_CONTEXT_TOKENS tokens, so a step
    costs the answer's length, not the prompt's thousand image tokens, on the model thread.
    Text that may still change is held back: a trailing partial character (U+FFFD) and, with
    stop texts, as many characters as the longest of them could already have begun."""

    def __init__(
        self,
        listeners: Sequence[Callable[[str], None] | None],
        answer_so_far: AnswerSoFar,
        end_ids: Sequence[int],
        stops: Sequence[str] = (),
    ) -> None:
        self.listeners = list(listeners)
        self.answer_so_far = answer_so_far
        self.ends = set(end_ids)
        self.stops = tuple(stops)
        self.held = max((len(t) for t in self.stops), default=1) - 1
        self.prompts: list[list[int]] = []
        self.rows: list[list[int]] = [[] for _ in self.listeners]
        self.sent = [""] * len(self.listeners)
        self.done = [listener is None for listener in self.listeners]

    def put(self, value: torch.Tensor) -> None:
        try:
            self._put(value)
        except Exception:  # a streaming fault must never fail the batch's forward pass
            log.exception("streaming an answer failed; the answer still comes whole")
            self.done = [True] * len(self.done)

    def end(self) -> None:
        """Nothing to flush: the whole answer arrives with the result."""

    def _put(self, value: torch.Tensor) -> None:
        if not self.prompts:  # generate's first call: the (left-padded) prompts
            self.prompts = value[:, -PROMPT_CONTEXT_TOKENS:].tolist()
            return
        for row, token in enumerate(value.tolist()):
            if self.done[row]:
                continue
            self.rows[row].append(token)
            finished = token in self.ends
            self._send(row, self._visible(row, finished))
            self.done[row] = self.done[row] or finished

    def _visible(self, row: int, finished: bool) -> str:
        text = self.answer_so_far(self.prompts[row], self.rows[row])
        cut = min((text.find(t) for t in self.stops if t in text), default=-1)
        if cut >= 0:
            self.done[row] = True
            return text[:cut].rstrip()
        if finished:
            return text
        text = text.removesuffix("\ufffd")
        return text[: len(text) - self.held] if self.held else text

    def _send(self, row: int, visible: str) -> None:
        sent = self.sent[row]
        listener = self.listeners[row]
        if listener is not None and len(visible) > len(sent) and visible.startswith(sent):
            listener(visible[len(sent) :])
            self.sent[row] = visible
