"""The job input contract: parsing and one-sentence error messages for invalid jobs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import JobError

# Sanity caps on option values before the model-specific bounds apply; a JSON integer can be
# arbitrarily large and should be rejected as such, not overflow something downstream.
_OPTION_MAX = 1_000_000


class JobInput(BaseModel):
    """What a caller puts under "input". Strict: "5" is not an integer, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)

    images: list[str] | None = Field(None, description="Images: base64, data URI or http(s) URL.")
    image: str | None = Field(None, description="A single image, same forms as `images`.")
    task: str | None = Field(None, description="Must match the loaded model's task.")
    top_k: int | None = Field(None, ge=1, le=_OPTION_MAX, description="classify: labels returned.")
    max_new_tokens: int | None = Field(
        None, ge=1, le=_OPTION_MAX, description="caption: tokens generated at most."
    )
    num_beams: int | None = Field(None, ge=1, le=_OPTION_MAX, description="caption: beam width.")

    @model_validator(mode="after")
    def _exactly_one_image_field(self) -> JobInput:
        if (self.images is None) == (self.image is None):
            raise ValueError('give either "images" (a list) or "image" (one string), not both')
        if self.images is not None and not self.images:
            raise ValueError('"images" is empty; send at least one image')
        return self

    @property
    def sources(self) -> list[str]:
        """The image strings in input order."""
        return self.images if self.images is not None else [self.image]  # type: ignore[list-item]

    def options(self) -> dict[str, int]:
        """The task options the caller set explicitly."""
        return {
            name: value
            for name in ("top_k", "max_new_tokens", "num_beams")
            if (value := getattr(self, name)) is not None
        }


def parse_job_input(raw: Any, max_images: int) -> JobInput:
    """Validate a job's "input" or raise JobError with one clear sentence."""
    if not isinstance(raw, dict):
        raise JobError(f'"input" must be a JSON object, got {_json_type(raw)}')
    images = raw.get("images")
    # Checked before pydantic walks the list, so a million-entry list is refused cheaply.
    if isinstance(images, list) and len(images) > max_images:
        raise JobError(f"too many images: {len(images)} given, at most {max_images} per job")
    try:
        return JobInput.model_validate(raw)
    except ValidationError as error:
        raise JobError(_describe(error)) from None


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    # Keys come from the caller and can be megabytes long; the sentence quotes only their start.
    where = _shorten(".".join(str(part) for part in first["loc"]))
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(JobInput.model_fields)
        return f'unknown input key "{where}" (allowed: {allowed})'
    if not where:
        return first["msg"].removeprefix("Value error, ")
    return f'invalid "{where}": {first["msg"]} (got {_short_repr(first.get("input"))})'


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, int | float) else "value")


def _short_repr(value: Any) -> str:
    return _shorten(repr(value))


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
