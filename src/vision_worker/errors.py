"""The two kinds of failure a job can meet, as values the handler turns into JSON."""

from __future__ import annotations

from typing import Literal

ImageErrorCode = Literal[
    "invalid_image", "too_large", "fetch_failed", "forbidden_url", "inference_failed"
]


class ImageError(Exception):
    """One image failed; the rest of its job still gets results."""

    def __init__(self, code: ImageErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_result(self, index: int) -> dict:
        return {"error": {"code": self.code, "message": f"image {index}: {self.message}"}}


class JobError(Exception):
    """The job as a whole is invalid; RunPod marks it FAILED with this one sentence."""
