"""Boxes out: what every detecting task (detect, zero_shot_detect) shares, from its options to
the shape one detection has in a result."""

from __future__ import annotations

from typing import Any

from PIL import Image
from pydantic import Field

from ..images import photo_size
from .base import TaskOptions, pixel_box


class DetectionOptions(TaskOptions):
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Detections scoring at or below this are dropped."
    )
    max_detections: int = Field(
        100, ge=1, le=1000, description="Detections returned per image at most, best first."
    )


def target_size(image: Image.Image) -> tuple[int, int]:
    """The (height, width) outputs are scaled to: the photo's own pixels after EXIF rotation,
    not the decoded image's (a scaled JPEG decode is 1/2 to 1/8 of the photo). The model
    predicts relative to its input, so its outputs scale to the photo exactly."""
    width, height = photo_size(image)
    return height, width


def detection(label: str, score: Any, box: Any) -> dict:
    """One detection as jobs get it: corners in the original image's pixels, two decimals."""
    return {"label": label, "score": round(float(score), 6), "box": pixel_box(box)}


def best_first(scores: Any, limit: int) -> list[int]:
    """Indices of the `limit` best detections, best first."""
    return scores.argsort(descending=True)[:limit].tolist()
