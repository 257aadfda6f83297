"""Open-vocabulary detection: boxes for the labels a job names (text queries), by the recipe the
checkpoint was published with, chosen from its architecture.

- OWL-ViT / OWLv2 score each label on its own, as transformers' `zero-shot-object-detection`
  pipeline does (one box may be found for several labels), with the checkpoint's own
  post-processing, so results equal the pipeline's. All labels go through the model in one pass
  per batch: OWL-ViT scores each query independently, so that gives the pipeline's scores
  without one forward pass per label.
- Grounding DINO / MM Grounding DINO read all labels as one lower-cased prompt ("a cat. a remote
  control.") and find phrases of it, as their model card does: the processor builds the prompt,
  `post_process_grounded_object_detection` scores each box by its best prompt token (`threshold`)
  and names it by the prompt's tokens scoring above `text_threshold` for it. transformers'
  pipeline also runs these checkpoints, but as it runs OWL: one forward pass per label, each label
  alone as a prompt without its ".", and the generic `post_process_object_detection` (no text
  threshold): not the recipe the checkpoints are published with, so not the reference here.

OmDet-Turbo also detects from text (with its own processor and post-processing): not served yet.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModelForZeroShotObjectDetection, AutoTokenizer, GroundingDinoProcessor

from ..errors import JobError
from .base import (
    Batch,
    Checkpoint,
    ModelSource,
    Prepared,
    Task,
    load_weights,
    on_device,
    prepare_model,
    stack_pixels,
)
from .detections import DetectionOptions, detection, target_size
from .labels import LabelLimits, check_labels

_OWL_ARCHITECTURES = frozenset({"OwlViTForObjectDetection", "Owlv2ForObjectDetection"})
_OWL_MODEL_TYPES = frozenset({"owlvit", "owlv2"})
_GROUNDED_ARCHITECTURES = frozenset(
    {"GroundingDinoForObjectDetection", "MMGroundingDinoForObjectDetection"}
)
_GROUNDED_MODEL_TYPES = frozenset({"grounding-dino", "mm-grounding-dino"})

# Each recipe's own defaults: OWL's threshold is the zero-shot-object-detection pipeline's (OWL
# scores sit far below a classifier's); Grounding DINO's are its processor's post-processing's.
_OWL_THRESHOLD = 0.1
_GROUNDED_THRESHOLD = 0.25
_GROUNDED_TEXT_THRESHOLD = 0.25
# Grounding DINO's prompt delimiters: each ends a phrase (the model's own special tokens).
_DELIMITERS = (".", "?")


class ZeroShotDetectOptions(DetectionOptions):
    labels: list[str] = Field(
        ...,
        min_length=1,
        description='What to find: 1 to MAX_LABELS text queries, e.g. ["a cat", "a remote"]. '
        'Grounding DINO reads them as one lower-cased prompt ("a cat. a remote.") of at most '
        'its text tower\'s 256 tokens, so there a label may not contain "." or "?".',
    )
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Detections scoring at or below this are dropped; unset: 0.1 for "
        "OWL-ViT/OWLv2 (the zero-shot-object-detection pipeline's), 0.25 for Grounding DINO "
        "(its processor's).",
    )
    text_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Grounding DINO only (refused for OWL-ViT/OWLv2, which score each label on "
        "its own): a box is named by the prompt's words scoring above this for it: the job's "
        "label when they are exactly one label's words, else those words as found (part of a "
        'label, words of several, or "" when none); unset: 0.25.',
    )


class ZeroShotDetectTask(Task):
    name: ClassVar[str] = "zero_shot_detect"
    # The RunPod Hub listing: this task in the TASK menu, and ready-made endpoints for it.
    hub_label: ClassVar[str] = "Open-vocabulary detect (OWL-ViT/OWLv2, Grounding DINO)"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Open-vocabulary detection: OWLv2 base", "google/owlv2-base-patch16-ensemble"),
        ("Open-vocabulary detection: Grounding DINO tiny", "IDEA-Research/grounding-dino-tiny"),
    )
    summary: ClassVar[str] = (
        "boxes for labels the job names (open-vocabulary detection: each label on its own with "
        "OWL-ViT/OWLv2, all as one prompt with Grounding DINO)"
    )
    Options: ClassVar = ZeroShotDetectOptions
    Limits: ClassVar = LabelLimits
    architectures_doc: ClassVar[str] = (
        "`OwlViTForObjectDetection`, `Owlv2ForObjectDetection`, "
        "`GroundingDinoForObjectDetection`, `MMGroundingDinoForObjectDetection`"
    )
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
        self,
        source: ModelSource,
        model: Any,
        processor: Any,
        tokenizer: Any,
        limits: LabelLimits,
        grounding: GroundingDinoProcessor | None = None,
    ) -> None:
        self.source = source
        self.model = model
        self.image_processor = processor
        self.tokenizer = tokenizer
        self.limits = limits
        # Grounding DINO's processor (image processor and tokenizer together): the model card
        # builds the prompt and post-processes with it. None for OWL.
        self.processor = grounding
        text = model.config.text_config
        if grounding is None:
            # The text tower's positions (16 for OWL-ViT): longer labels are truncated to fit.
            self.max_label_tokens = text.max_position_embeddings
        else:
            # The model reads max_text_len (256) prompt tokens and silently cuts the rest, which
            # would drop the last labels unseen: a longer prompt fails the job instead.
            self.max_prompt_tokens = min(model.config.max_text_len, text.max_position_embeddings)
            self._delimiter_ids = set(tokenizer.convert_tokens_to_ids(list(_DELIMITERS)))

    @property
    def grounded(self) -> bool:
        return self.processor is not None

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(
            _OWL_ARCHITECTURES | _GROUNDED_ARCHITECTURES, _OWL_MODEL_TYPES | _GROUNDED_MODEL_TYPES
        )

    @classmethod
    def load(
        cls, source: ModelSource, checkpoint: Checkpoint, limits: LabelLimits
    ) -> ZeroShotDetectTask:
        model, _ = load_weights(
            source, AutoModelForZeroShotObjectDetection, cls.name, "detection heads"
        )
        processor = source.load_image_processor()
        tokenizer = source.load_processor(AutoTokenizer.from_pretrained, "tokenizer")
        grounding = None
        if checkpoint.saved_as(_GROUNDED_ARCHITECTURES, _GROUNDED_MODEL_TYPES):
            # What AutoProcessor gives for these checkpoints, with the image processor's backend
            # chosen as for every task.
            grounding = GroundingDinoProcessor(image_processor=processor, tokenizer=tokenizer)
        return cls(source, prepare_model(model, source), processor, tokenizer, limits, grounding)

    def warmup_options(self) -> ZeroShotDetectOptions:
        return self.check(ZeroShotDetectOptions(labels=["a photo"]))

    def check(self, options: ZeroShotDetectOptions) -> ZeroShotDetectOptions:
        check_labels(options.labels, self.limits)
        if not self.grounded:
            if options.text_threshold is not None:
                raise JobError(
                    'option "text_threshold" applies to Grounding DINO only: OWL-ViT and OWLv2 '
                    'score each label on its own, so "threshold" alone decides'
                )
            defaults = {"threshold": _OWL_THRESHOLD}
        else:
            self._phrases(options.labels)  # refuses labels the prompt cannot carry
            defaults = {
                "threshold": _GROUNDED_THRESHOLD,
                "text_threshold": _GROUNDED_TEXT_THRESHOLD,
            }
        unset = {key: value for key, value in defaults.items() if getattr(options, key) is None}
        return options.model_copy(update=unset) if unset else options

    def batch_key(self, item: Prepared, options: ZeroShotDetectOptions) -> Hashable:
        # One text pass per batch: images share a batch when they ask for the same labels.
        if not self.grounded:
            return (item.kind, tuple(options.labels))
        # Grounding DINO's Swin backbone would see padding as image (it takes no pixel mask),
        # so only images the processor resized alike share a pass: the same aspect ratio, as
        # a job of phone photos is.
        return (item.kind, tuple(options.labels), tuple(item.inputs["pixel_values"].shape))

    def prepare(self, image: Image.Image, options: ZeroShotDetectOptions) -> Prepared:
        pixels = self.image_processor(images=[image], return_tensors="pt").pixel_values[0]
        return Prepared({"pixel_values": pixels}, meta={"size": target_size(image)})

    def collate(self, items: Sequence[Prepared], options: Sequence[Any]) -> Batch:
        """The pixels, and the labels' tokens once per image (as the pipeline feeds them)."""
        labels = list(options[0].labels)  # equal for the whole batch (batch_key)
        if self.grounded:
            # The model card's prompt: the processor lower-cases the labels and joins them, "a
            # cat. a remote control.", then tokenizes it ([CLS] ... [SEP], as BERT does).
            text = dict(self.processor(text=labels, return_tensors="pt"))
        else:
            text = dict(
                self.tokenizer(
                    labels,
                    padding=True,
                    truncation=True,
                    max_length=self.max_label_tokens,
                    return_tensors="pt",
                )
            )
            text = {key: text[key] for key in ("input_ids", "attention_mask")}
        inputs = {
            key: on_device(ids.repeat(len(items), 1), self.source) for key, ids in text.items()
        }
        inputs["pixel_values"] = stack_pixels(items, self.source)
        return Batch(items, inputs)

    def forward(self, batch: Batch, options: Sequence[Any]) -> Any:
        if self.grounded:
            return self._forward_prompt(batch)
        with torch.inference_mode():
            outputs = self.model(**batch.inputs)
        # Only what post-processing reads, in host memory (OWLv2's image and class embeddings
        # are ~15 MB an image in float16 and would otherwise outlive the pass).
        return SimpleNamespace(
            logits=outputs.logits.float().cpu(), pred_boxes=outputs.pred_boxes.float().cpu()
        )

    def split(self, outputs: Any, items: Sequence[Prepared], options: Sequence[Any]) -> list:
        if self.grounded:
            return self._split_prompt(outputs, items, options)
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

    # --- Grounding DINO: one prompt of all labels ------------------------------------------
    def _forward_prompt(self, batch: Batch) -> Any:
        with torch.inference_mode():
            outputs = self.model(**batch.inputs)
        # logits: each query's score for each prompt token, padded to 256 with -inf (~1 MB an
        # image); the encoder's and decoder's states stay behind.
        return SimpleNamespace(
            logits=outputs.logits.float().cpu(),
            pred_boxes=outputs.pred_boxes.float().cpu(),
            input_ids=batch.inputs["input_ids"][:1].cpu(),  # the prompt's tokens, once
        )

    def _split_prompt(
        self, outputs: Any, items: Sequence[Prepared], options: Sequence[Any]
    ) -> list[list[dict]]:
        found = []
        for row, (item, job) in enumerate(zip(items, options, strict=True)):
            # Each image at its own job's thresholds: the text threshold decides which words
            # name a box, so one pass at the batch's lowest would name boxes differently.
            [result] = self.processor.post_process_grounded_object_detection(
                SimpleNamespace(
                    logits=outputs.logits[row : row + 1],
                    pred_boxes=outputs.pred_boxes[row : row + 1],
                ),
                outputs.input_ids,
                threshold=job.threshold,
                text_threshold=job.text_threshold,
                target_sizes=[item.meta["size"]],
            )
            # A phrase that is exactly one label's words names the box with the job's own label
            # (as the job spelled it, not lower-cased). Any other phrase (part of a label, "cat"
            # of "a cat"; words of two labels; "" when no word clears text_threshold) is kept,
            # named as the post-processor decoded it, as the model card's recipe gives it.
            named = {phrase: label for label, phrase in self._phrases(job.labels).items()}
            found.append(
                [
                    {"label": named.get(phrase, phrase), "score": score, "box": box}
                    for phrase, score, box in zip(
                        result["text_labels"], result["scores"], result["boxes"], strict=True
                    )
                ]
            )
        return found

    def _phrases(self, labels: Sequence[str]) -> dict[str, str]:
        """Each label's phrase as the post-processor decodes it when exactly that label's words
        clear the text threshold; raises JobError for labels the prompt cannot carry."""
        for index, label in enumerate(labels, 1):
            if any(mark in label for mark in _DELIMITERS):
                raise JobError(
                    f'label {index} contains "." or "?", which end a phrase of Grounding DINO\'s '
                    'prompt ("a cat. a dog."): send it without them'
                )
        ids = self.processor(text=list(labels)).input_ids
        if len(ids) > self.max_prompt_tokens:
            raise JobError(
                f"the labels make a prompt of {len(ids)} tokens and this model reads at most "
                f"{self.max_prompt_tokens}: send fewer or shorter labels",
                "too_large",
            )
        spans: list[list[int]] = [[]]
        for token in ids[1:-1]:  # within [CLS] ... [SEP]; each label ends at its "."
            if token in self._delimiter_ids:
                spans.append([])
            else:
                spans[-1].append(token)
        phrases = self.processor.batch_decode(spans[: len(labels)])
        seen: dict[str, int] = {}
        for index, phrase in enumerate(phrases, 1):
            if not phrase:
                raise JobError(f"label {index} has no word this model's tokenizer reads")
            if phrase in seen:
                raise JobError(
                    f"labels {seen[phrase]} and {index} are the same words to this model, "
                    "which reads them lower-cased"
                )
            seen[phrase] = index
        return dict(zip(labels, phrases, strict=True))
