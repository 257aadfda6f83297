"""Zero-shot classification: CLIP / SigLIP score each image against the job's own labels."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from pydantic import Field, field_validator

from .base import Checkpoint, ModelSource, Prepared, Task, TaskOptions
from .labels import LabelLimits, check_labels, ranked_labels
from .towers import DualEncoder, is_dual_encoder, normalize

# transformers' zero-shot-image-classification pipeline uses this template by default.
DEFAULT_TEMPLATE = "This is a photo of {}."


class ZeroShotOptions(TaskOptions):
    labels: list[str] = Field(
        ..., min_length=1, description='Candidate labels, 1 to MAX_LABELS, e.g. ["cat", "dog"].'
    )
    hypothesis_template: str = Field(
        DEFAULT_TEMPLATE,
        min_length=2,
        max_length=1000,
        description='Sentence each label is put into; must contain "{}" once.',
    )
    top_k: int | None = Field(
        None, ge=1, le=1_000_000, description="Labels returned (default all)."
    )

    @field_validator("hypothesis_template")
    @classmethod
    def _one_placeholder(cls, template: str) -> str:
        if template.count("{}") != 1 or template.replace("{}", "").count("{") > 0:
            raise ValueError('must contain "{}" exactly once and no other braces')
        return template


class ZeroShotTask(Task):
    name: ClassVar[str] = "zero_shot"
    # The RunPod Hub listing: this task in the TASK menu, and ready-made endpoints for it.
    hub_label: ClassVar[str] = "Zero-shot classify (CLIP/SigLIP)"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Zero-shot and embeddings: CLIP ViT-B/32", "openai/clip-vit-base-patch32"),
        ("Zero-shot: SigLIP base", "google/siglip-base-patch16-224"),
    )
    summary: ClassVar[str] = "scores for labels the job names, no training needed"
    Options: ClassVar = ZeroShotOptions
    Limits: ClassVar = LabelLimits
    architectures_doc: ClassVar[str] = "`CLIPModel`, `SiglipModel`, `Siglip2Model`"
    example_input: ClassVar[dict] = {"image": "<image>", "labels": ["cat", "dog", "rocket"]}
    example_output: ClassVar[list] = [
        {
            "labels": [
                {"label": "cat", "score": 0.97},
                {"label": "dog", "score": 0.02},
                {"label": "rocket", "score": 0.01},
            ]
        }
    ]

    def __init__(self, towers: DualEncoder, limits: LabelLimits) -> None:
        self.towers = towers
        self.image_processor = towers.processor
        self.source: ModelSource = towers.source
        self.limits = limits
        # Label sets repeat across jobs (a tagging service sends the same 50 tags every time),
        # so their text features are computed once and kept, least recently used out first.
        self._label_features: OrderedDict[tuple[str, tuple[str, ...]], torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.label_sets_encoded = 0  # text-tower passes over label sets, for tests and metrics

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return is_dual_encoder(checkpoint)

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, limits: LabelLimits) -> ZeroShotTask:
        return cls(DualEncoder.load(source, cls.name), limits)

    def warmup_options(self) -> ZeroShotOptions:
        return self.check(ZeroShotOptions(labels=["a photo"]))

    def check(self, options: ZeroShotOptions) -> ZeroShotOptions:
        check_labels(options.labels, self.limits)
        return options

    def prepare(self, image: Image.Image, options: ZeroShotOptions) -> Prepared:
        return self.towers.image_item(image)

    def forward(self, items: Sequence[Prepared], options: Sequence[Any]) -> list[torch.Tensor]:
        # One image-tower pass for the whole batch, whatever labels each job asked about; only
        # the cheap similarity step is per label set.
        images = normalize(self.towers.image_features(items))
        outputs: list[torch.Tensor] = []
        for row, job_options in enumerate(options):
            labels = self._features_for(job_options)
            outputs.append(self.towers.label_probabilities(images[row : row + 1], labels)[0])
        return outputs

    def encode(self, output: torch.Tensor, meta: dict, options: ZeroShotOptions) -> dict:
        return ranked_labels(output, options.labels, options.top_k or len(options.labels))

    def _features_for(self, options: ZeroShotOptions) -> torch.Tensor:
        key = (options.hypothesis_template, tuple(options.labels))
        with self._cache_lock:
            if key in self._label_features:
                self._label_features.move_to_end(key)
                return self._label_features[key]
        # Only the model thread gets here, so one label set is never encoded twice at once.
        prompts = [options.hypothesis_template.format(label) for label in options.labels]
        features = self.towers.encode_texts(prompts)
        with self._cache_lock:
            self.label_sets_encoded += 1
            self._label_features[key] = features
            while len(self._label_features) > self.limits.LABEL_CACHE_SIZE:
                self._label_features.popitem(last=False)
        return features
