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


def sendable(text: str) -> str:
    """Text that can always be sent: lone UTF-16 surrogates (valid in a JSON string from a caller,
    invalid in UTF-8) replaced. Echoing one unchanged made the runpod SDK fail to post the result,
    and the job hung until RunPod timed it out."""
    return text.encode("utf-8", "replace").decode("utf-8")
