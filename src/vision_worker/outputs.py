"""The output stage: images a task returns (heatmaps, masks, maps) delivered, and the output's
size checked.

A task returns an image as an `OutputImage` value inside its result; the worker delivers it
here, so no task does I/O. An image goes back inline as a `data:image/png;base64,...` string,
or, when a bucket is set (RunPod's documented BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID,
BUCKET_SECRET_ACCESS_KEY), is uploaded with the runpod SDK's upload utility and comes back as a
presigned URL. RunPod caps a job's payload, so an output over MAX_OUTPUT_MB fails with the fix
named instead of being cut.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .config import Settings
from .errors import ImageError, JobError


def bucket_configured(settings: Settings) -> bool:
    """All three of RunPod's bucket variables are set: output images are uploaded."""
    return bool(
        settings.BUCKET_ENDPOINT_URL
        and settings.BUCKET_ACCESS_KEY_ID
        and settings.BUCKET_SECRET_ACCESS_KEY
    )


@dataclass(frozen=True)
class OutputImage:
    """An image in a task's result, delivered as a PNG (inline or a bucket URL) by the worker:
    a PIL image, or its PNG already (`png`: results of many masks hold small PNGs, not
    photo-sized images, until they are delivered)."""

    image: Image.Image | bytes
    kind: str  # names the upload: "heatmap-<uuid>.png"

    @classmethod
    def png(cls, image: Image.Image, kind: str) -> OutputImage:
        return cls(png_bytes(image), kind)


def png_bytes(image: Image.Image) -> bytes:
    png = io.BytesIO()
    # Level 1: a few times faster than the default for a few percent more bytes.
    image.save(png, "PNG", compress_level=1)
    return png.getvalue()


class ImageOutputs:
    """Where a task's output images go: inline, or to the bucket when one is configured."""

    def __init__(self, settings: Settings) -> None:
        self.uploads = bucket_configured(settings)
        self.bucket_name = settings.BUCKET_NAME or None
        self.prefix = "vision-worker"

    def deliver_all(self, result: Any) -> Any:
        """`result` with each OutputImage in it (at any depth) replaced by its delivery."""
        if isinstance(result, OutputImage):
            return self.deliver(result.image, result.kind)
        if isinstance(result, dict):
            return {key: self.deliver_all(value) for key, value in result.items()}
        if isinstance(result, list):
            return [self.deliver_all(value) for value in result]
        return result

    def deliver(self, image: Image.Image | bytes, kind: str) -> str:
        """A PNG of `image` as a data URI, or the URL it was uploaded to (ImageError if not)."""
        png = image if isinstance(image, bytes) else png_bytes(image)
        if not self.uploads:
            return "data:image/png;base64," + base64.b64encode(png).decode()
        return self._upload(png, f"{kind}-{uuid.uuid4().hex}.png")

    def _upload(self, data: bytes, name: str) -> str:
        # The SDK reads the BUCKET_* variables itself, as every RunPod worker's uploads do.
        from runpod.serverless.utils.rp_upload import upload_in_memory_object

        try:
            return upload_in_memory_object(
                name, data, bucket_name=self.bucket_name, prefix=self.prefix
            )
        except Exception as error:  # boto3's many error types: the image fails, not the job
            raise ImageError(
                "inference_failed", f"upload to the bucket failed: {type(error).__name__}: {error}"
            ) from None


class OutputMeter:
    """A job's output size as its results arrive. Past MAX_OUTPUT_MB the job will fail, so its
    later results are not kept: a job of 64 inline 40 MP depth maps would otherwise hold GBs
    only to refuse them at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limit = settings.MAX_OUTPUT_MB * 1_000_000
        self.size = 0
        self._lock = threading.Lock()  # results are measured on several encode threads

    def admit(self, result: dict) -> dict:
        """`result`, or an empty stand-in once the job's output is over the limit."""
        size = json_size(result)
        with self._lock:
            self.size += size
            over = self.size > self.limit
        return {} if over else result

    def check(self, output: dict[str, Any]) -> None:
        """JobError when the whole output is over MAX_OUTPUT_MB, naming what makes it smaller."""
        results = output.get("results", [])
        size = self.size + json_size({**output, "results": []}) + len(results)
        if size > self.limit:
            raise output_too_large(size, self.settings)


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def output_too_large(size: int, settings: Settings) -> JobError:
    fixes = 'send fewer images per job, or use "encoding": "base64" for embeddings'
    if not bucket_configured(settings):
        fixes += "; for output images (heatmaps, masks as PNG, depth maps, cut-outs) set "
        fixes += "BUCKET_ENDPOINT_URL (with BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY) "
        fixes += "so they come back as URLs"
    return JobError(
        f"the output is {size / 1_000_000:.1f} MB, over the {settings.MAX_OUTPUT_MB:g} MB a job "
        f"may return (MAX_OUTPUT_MB, RunPod's payload limit): {fixes}",
        "too_large",
    )


def add_text_piece(entries: list[dict[str, Any]], index: int, text: str) -> None:
    """A streamed answer's new text into a chunk's "text" entries: a piece that follows one of
    the same image joins it, so a chunk says each image's new text once, in order."""
    if entries and entries[-1]["index"] == index:
        entries[-1]["text"] += text
    else:
        entries.append({"index": index, "text": text})
