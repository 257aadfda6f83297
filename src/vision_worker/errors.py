"""The two kinds of failure a job can meet, as values the handler turns into JSON."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ImageErrorCode = Literal[
    "invalid_image", "too_large", "fetch_failed", "forbidden_url", "inference_failed"
]


class ImageError(Exception):
    """One image failed; the rest of its job still gets results."""

    def __init__(self, code: ImageErrorCode, message: str, image: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # The job's image it is about, where that is not the result's own index (one answer
        # about several images fails with the image that failed it).
        self.image = image

    def to_result(self, index: int, what: str = "image") -> dict:
        """The failed item's result: `what` (an image, or a text) and its number in the job."""
        number = index if self.image is None else self.image
        return {"error": {"code": self.code, "message": f"{what} {number}: {self.message}"}}


# Whole-job failures, for machines: a client retries "unavailable" elsewhere, fixes
# "invalid_input" or "too_large", and reports "internal".
JobErrorCode = Literal["invalid_input", "too_large", "unavailable", "internal"]
# The HTTP status pod mode's /predict answers each code with (/runsync keeps 200 and FAILED, as
# RunPod's does).
JOB_ERROR_STATUS: dict[str, int] = {
    "invalid_input": 400,
    "too_large": 413,
    "unavailable": 503,
    "internal": 500,
}


# A refusal's HTTP status, read back as its code: the pod answers these before a job runs
# (a body that is not a job, a body over the limit, a busy or broken worker).
_CODE_OF_STATUS: dict[int, JobErrorCode] = {
    **{status: code for code, status in JOB_ERROR_STATUS.items()},
    429: "unavailable",
}


def refusal(message: str, status: int) -> dict:
    """The body of an HTTP error that stands for a whole-job failure: the sentence and the code
    of its status."""
    return {"error": message, "error_code": _CODE_OF_STATUS[status]}


class ErrorBody(BaseModel):
    """The body of every HTTP error the pod answers (`refusal`, and the framework's own errors,
    in the same shape): what OpenAPI declares for each error status."""

    error: str = Field(description="One sentence saying what was wrong; never echoes input.")
    error_code: JobErrorCode | None = Field(
        None, description="For a refused job: retry elsewhere, fix the input, or report it."
    )


class JobError(Exception):
    """The job as a whole failed; RunPod marks it FAILED with this one sentence and its code."""

    def __init__(self, message: str, code: JobErrorCode = "invalid_input") -> None:
        super().__init__(message)
        self.code: JobErrorCode = code


def job_failure(message: str, code: JobErrorCode) -> dict:
    """A failed job's output: the sentence RunPod shows as "error", and its code beside it (the
    runpod SDK sends every other key of a failed output as the job's "output")."""
    return {"error": sendable(message), "error_code": code}


def sendable(text: str) -> str:
    """Text that can always be sent: lone UTF-16 surrogates (valid in a JSON string from a caller,
    invalid in UTF-8) replaced. Echoing one unchanged made the runpod SDK fail to post the result,
    and the job hung until RunPod timed it out."""
    return text.encode("utf-8", "replace").decode("utf-8")
