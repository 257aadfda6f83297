"""Labels in and out: ranked labels (classify, zero_shot) and the job's own label sets
(zero_shot, zero_shot_detect), with their limits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from ..config import TextLimits
from ..errors import JobError


class LabelLimits(TextLimits):
    # Labels per job: each is one text-tower sequence.
    MAX_LABELS: int = Field(64, ge=1, le=4096)
    # Distinct label sets whose text embeddings are kept, so repeated label sets cost nothing.
    LABEL_CACHE_SIZE: int = Field(256, ge=1, le=100_000)


def check_labels(labels: list[str], limits: LabelLimits) -> None:
    """A job's labels: at most MAX_LABELS, each 1 to MAX_TEXT_CHARS characters, no repeats."""
    if len(labels) > limits.MAX_LABELS:
        raise JobError(f"too many labels: {len(labels)}, at most {limits.MAX_LABELS}", "too_large")
    for label in labels:
        if not label.strip() or len(label) > limits.MAX_TEXT_CHARS:
            raise JobError(
                f"each label must be 1 to {limits.MAX_TEXT_CHARS} characters and not blank"
            )
    if len(set(labels)) != len(labels):
        raise JobError('"labels" has duplicates; each label must appear once')


def ranked_labels(scores: torch.Tensor, labels: Sequence[str], top_k: int) -> dict:
    """{"labels": [{"label", "score"}, ...]} best first; the shape classify and zero_shot share."""
    values, indices = scores.topk(min(top_k, len(labels)))
    return {
        "labels": [
            {"label": labels[i], "score": round(s, 6)}
            for s, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
    }
