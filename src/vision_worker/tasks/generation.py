"""What every generating task shares (captions, answers): its options, its limits, and the
bounds a decoder's position table puts on them."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ..config import TextLimits
from ..errors import JobError
from .base import TaskOptions

# The captioners among the image-text-to-text architectures: a vision encoder and a text
# decoder without a chat template. `caption` serves them; `ask` serves the chat models.
CAPTIONER_ARCHITECTURES = frozenset(
    {"VisionEncoderDecoderModel", "GitForCausalLM", "BlipForConditionalGeneration"}
)
CAPTIONER_MODEL_TYPES = frozenset({"vision-encoder-decoder", "git", "blip"})


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
