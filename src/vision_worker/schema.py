"""The job input contract: parsing and one-sentence error messages for invalid jobs.

A job is `images` (or `image`), an optional `task`, and the served task's options. The job-level
fields are checked here; everything else goes to the task's own `Options` model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import JobError, sendable
from .tasks import TASKS, JobItem, Task, TaskOptions

JOB_FIELDS = ("images", "image", "task")
M = TypeVar("M", bound=BaseModel)


class ImagesInput(BaseModel):
    """The job-level fields. Strict: "5" is not an integer."""

    model_config = ConfigDict(extra="forbid", strict=True)

    images: list[str] | None = Field(None, description="Images: base64, data URI or http(s) URL.")
    image: str | None = Field(None, description="A single image, same forms as `images`.")
    task: str | None = Field(None, description="Optional; must match the served task.")

    @model_validator(mode="after")
    def _exactly_one_image_field(self) -> ImagesInput:
        if (self.images is None) == (self.image is None):
            raise ValueError('give either "images" (a list) or "image" (one string), not both')
        return self


@dataclass(frozen=True)
class JobRequest:
    """A validated job: its items in input order (images as sent, as strings, or the bytes of
    uploaded files; texts), each with its options, and the task's checked options."""

    items: list[JobItem]
    options: TaskOptions


def parse_job_input(
    raw: Any, max_images: int, task: Task, files: Sequence[bytes] = ()
) -> JobRequest:
    """Validate a job's "input" for the served task, or raise JobError with one clear sentence.
    `files` are images uploaded as bytes (pod /predict): the input then carries options only."""
    if not isinstance(raw, dict):
        raise JobError(f'"input" must be a JSON object, got {_json_type(raw)}')
    if files:
        if "images" in raw or "image" in raw:
            raise JobError('give images as uploaded files or in "images", not both')
        raw = {**raw, "images": list(files)}
    images = raw.get("images")
    # Checked before pydantic walks the list, so a million-entry list is refused cheaply.
    if isinstance(images, list) and len(images) > max_images:
        raise JobError(
            f"too many images: {len(images)} given, at most {max_images} per job "
            "(MAX_IMAGES_PER_JOB; vision-worker-client splits a folder into jobs)",
            "too_large",
        )
    job_fields = {key: value for key, value in raw.items() if key in JOB_FIELDS}
    if files:
        job_fields["images"] = []  # validated as files already; the head checks the rest
    given_options = {key: value for key, value in raw.items() if key not in JOB_FIELDS}
    head = _validated(ImagesInput, job_fields)
    if head.task is not None and head.task != task.name:
        raise JobError(
            f'task "{_shorten(str(head.task))}" is not served here: this worker serves '
            f'"{task.name}"'
        )
    _refuse_foreign_options(given_options, task)
    options = task.check(_validated(task.Options, given_options))
    sources = list(files) or (head.images if head.images is not None else [head.image])
    items = task.job_items(sources, options)  # type: ignore[arg-type]
    if not any(item.images or item.text is not None for item in items):
        # Only a job of texts (text embeddings) may come without images.
        raise JobError('"images" is empty; send at least one image')
    return JobRequest(items, options)


def _refuse_foreign_options(given: dict[str, Any], task: Task) -> None:
    own = set(task.Options.model_fields)
    for key in sorted(set(given) - own, key=str):
        other = [name for name, t in TASKS.items() if key in t.Options.model_fields]
        if other:
            raise JobError(
                f'option "{key}" does not apply to task "{task.name}" (it is for '
                f"{' and '.join(other)})"
            )
        allowed = ", ".join([*JOB_FIELDS, *task.Options.model_fields])
        raise JobError(f'unknown input key "{_shorten(str(key))}" (allowed: {allowed})')


def _validated(model: type[M], values: dict[str, Any]) -> M:
    try:
        try:
            return model.model_validate(values)
        except ValidationError as error:
            raise JobError(_describe(error)) from None
    except RecursionError:  # describing (or validating) a value nested thousands deep
        raise JobError("the input is nested too deeply") from None


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    # Keys come from the caller and can be megabytes long; the sentence quotes only their start.
    where = _shorten(".".join(str(part) for part in first["loc"]))
    if first["type"] == "missing":
        return f'"{where}" is required'
    if not where:
        return first["msg"].removeprefix("Value error, ")
    message = first["msg"].removeprefix("Value error, ")
    sentence = f'invalid "{where}": {message} (got {_short_repr(first.get("input"))})'
    if first["type"] == "list_type" and isinstance(first.get("input"), str):
        # Most often `-o labels=cat` on a command line: the list form is not obvious.
        sentence += f"""; a list is JSON, e.g. -o '{where}=["{_shorten(first["input"], 20)}"]'"""
    return sentence


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, int | float) else "value")


def _short_repr(value: Any) -> str:
    return _shorten(repr(value))


def _shorten(text: str, limit: int = 60) -> str:
    """A short, sendable echo of caller input: at most `limit` characters."""
    return sendable(text if len(text) <= limit else text[: limit - 3] + "...")
