"""Open-vocabulary detection: OWL-ViT / OWLv2 find the job's own labels (text queries) as boxes.

Each label is scored on its own, as transformers' `zero-shot-object-detection` pipeline does
(one box may be found for several labels), with the checkpoint's own post-processing, so results
equal the pipeline's. All labels go through the model in one pass per batch: OWL-ViT scores each
query independently, so that gives the pipeline's scores without one forward pass per label.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModelForZeroShotObjectDetection, AutoTokenizer

from .base import (
    Checkpoint,
    ModelSource,
    Prepared,
    Task,
    load_weights,
    prepare_model,
    stack_pixels,
)
from .detections import DetectionOptions, detection, target_size
from .labels import LabelLimits, check_labels

# Grounding DINO and OmDet also detect from text, but take one prompt of all labels and
# post-process differently; they are not served (yet).
_ARCHITECTURES = frozenset({"OwlViTForObjectDetection", "Owlv2ForObjectDetection"})
_MODEL_TYPES = frozenset({"owlvit", "owlv2"})


class ZeroShotDetectOptions(DetectionOptions):
    labels: list[str] = Field(
        ...,
        min_length=1,
        description='What to find: 1 to MAX_LABELS text queries, e.g. ["a cat", "a remote"].',
    )
    # The zero-shot-object-detection pipeline's default: OWL scores sit far below a classifier's.
    threshold: float = Field(
        0.1, ge=0.0, le=1.0, description="Detections scoring at or below this are dropped."
    )


class ZeroShotDetectTask(Task):
    name: ClassVar[str] = "zero_shot_detect"
    # The RunPod Hub listing: this task in the TASK menu, and ready-made endpoints for it.
    hub_label: ClassVar[str] = "Open-vocabulary detect (OWL-ViT/OWLv2)"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Open-vocabulary detection: OWLv2 base", "google/owlv2-base-patch16-ensemble"),
    )
    summary: ClassVar[str] = "boxes for labels the job names (open-vocabulary detection)"
    Options: ClassVar = ZeroShotDetectOptions
    Limits: ClassVar = LabelLimits
    architectures_doc: ClassVar[str] = "`OwlViTForObjectDetection`, `Owlv2ForObjectDetection`"
    example_input: ClassVar[dict] = {"image": "<image>", "labels": ["a cat", "a remote control"]}
    example_output: ClassVar[list] = [
        {
            "detections": [
                {
                    "label": "a cat",
                    "score": 0.71,
                    "box": {"xmin": 8.3, "ymin": 52.6, "xmax": 318.1, "ymax": 470.4},
                },
                {
                    "label": "a remote control",
                    "score": 0.33,
                    "box": {"xmin": 40.2, "ymin": 72.9, "xmax": 176.0, "ymax": 117.5},
                },
            ]
        }
    ]

    def __init__(
        self, source: ModelSource, model: Any, processor: Any, tokenizer: Any, limits: LabelLimits
    ) -> None:
        self.source = source
        self.model = model
        self.image_processor = processor
        self.tokenizer = tokenizer
        self.limits = limits
        # The text tower's positions (16 for OWL-ViT): longer labels are truncated to fit.
        self.max_label_tokens = model.config.text_config.max_position_embeddings

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(_ARCHITECTURES, _MODEL_TYPES)

    @classmethod
    def load(
        cls, source: ModelSource, checkpoint: Checkpoint, limits: LabelLimits
    ) -> ZeroShotDetectTask:
        model, _ = load_weights(
            source, AutoModelForZeroShotObjectDetection, cls.name, "detection heads"
        )
        processor = source.load_image_processor()
        tokenizer = source.load_processor(AutoTokenizer.from_pretrained, "tokenizer")
        return cls(source, prepare_model(model, source), processor, tokenizer, limits)

    def warmup_options(self) -> ZeroShotDetectOptions:
        return self.check(ZeroShotDetectOptions(labels=["a photo"]))

    def check(self, options: ZeroShotDetectOptions) -> ZeroShotDetectOptions:
        check_labels(options.labels, self.limits)
        return options

    def batch_key(self, item: Prepared, options: ZeroShotDetectOptions) -> Hashable:
        # One text pass per batch: images share a batch when they ask for the same labels.
        return (item.kind, tuple(options.labels))

    def prepare(self, image: Image.Image, options: ZeroShotDetectOptions) -> Prepared:
        pixels = self.image_processor(images=[image], return_tensors="pt").pixel_values[0]
        return Prepared({"pixel_values": pixels}, meta={"size": target_size(image)})

    def forward(self, items: Sequence[Prepared], options: Sequence[Any]) -> Any:
        labels = options[0].labels  # equal for the whole batch (batch_key)
        text = self.tokenizer(
            labels,
            padding=True,
            truncation=True,
            max_length=self.max_label_tokens,
            return_tensors="pt",
        ).to(self.source.device)
        with torch.inference_mode():
            outputs = self.model(
                input_ids=text.input_ids.repeat(len(items), 1),
                attention_mask=text.attention_mask.repeat(len(items), 1),
                pixel_values=stack_pixels(items, self.source),
            )
        # Only what post-processing reads, in host memory (OWLv2's image and class embeddings
        # are ~15 MB an image in float16 and would otherwise outlive the pass).
        return SimpleNamespace(
            logits=outputs.logits.float().cpu(), pred_boxes=outputs.pred_boxes.float().cpu()
        )

    def split(self, outputs: Any, items: Sequence[Prepared], options: Sequence[Any]) -> list:
        labels = options[0].labels
        sizes = [item.meta["size"] for item in items]
        found: list[list[dict]] = [[] for _ in items]
        lowest = min(o.threshold for o in options)
        for query, label in enumerate(labels):
            # The pipeline's post-processing of one label: the processor's own box scaling.
            one_label = SimpleNamespace(
                logits=outputs.logits[..., query : query + 1], pred_boxes=outputs.pred_boxes
            )
            per_image = self.image_processor.post_process_object_detection(
                one_label, threshold=lowest, target_sizes=sizes
            )
            for row, (boxes, job) in enumerate(zip(per_image, options, strict=True)):
                keep = boxes["scores"] > job.threshold
                scores, corners = boxes["scores"][keep], boxes["boxes"][keep]
                found[row] += [
                    {"label": label, "score": score, "box": box}
                    for score, box in zip(scores, corners, strict=True)
                ]
        return found

    def encode(self, output: list[dict], meta: dict, options: ZeroShotDetectOptions) -> dict:
        best = sorted(output, key=lambda d: float(d["score"]), reverse=True)
        return {"detections": [detection(**d) for d in best[: options.max_detections]]}
