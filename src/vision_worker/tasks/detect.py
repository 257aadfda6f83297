"""Object detection: any transformers object-detection checkpoint (DETR, Conditional DETR,
RT-DETR, YOLOS, D-FINE, ...), boxes in the original image's pixels, best first.

Post-processing is the checkpoint's own image processor's `post_process_object_detection`, as
transformers' `object-detection` pipeline does, so boxes, labels and scores are the pipeline's
(the pipeline additionally truncates box corners to whole pixels; these keep two decimals).
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import AutoModelForObjectDetection
from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

from .base import (
    Batch,
    Checkpoint,
    ModelSource,
    Prepared,
    Task,
    load_weights,
    prepare_model,
    stack_on_device,
)
from .detections import DetectionOptions, best_first, detection, target_size

_DETECTOR_ARCHITECTURES = frozenset(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.values())


class DetectTask(Task):
    name: ClassVar[str] = "detect"
    # The RunPod Hub listing: this task in the TASK menu, and ready-made endpoints for it.
    hub_label: ClassVar[str] = "Detect objects"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Detection: YOLOS small", "hustvl/yolos-small"),
    )
    summary: ClassVar[str] = "labelled boxes in the original image's pixel coordinates"
    Options: ClassVar = DetectionOptions
    architectures_doc: ClassVar[str] = (
        "any `*ForObjectDetection` checkpoint (DETR, Conditional DETR, RT-DETR, YOLOS, D-FINE, ...)"
    )
    example_input: ClassVar[dict] = {"image": "<image>", "threshold": 0.7}
    example_output: ClassVar[list] = [
        {
            "detections": [
                {
                    "label": "cat",
                    "score": 0.97,
                    "box": {"xmin": 12.5, "ymin": 40.1, "xmax": 310.0, "ymax": 296.8},
                }
            ]
        }
    ]

    def __init__(self, source: ModelSource, model: Any, processor: Any, limits: Any) -> None:
        self.source = source
        self.limits = limits  # options_schema reads them (the /predict form, OpenAPI, demo page)
        self.model = model
        self.processor = self.image_processor = processor
        self.labels = model.config.id2label
        # DETR-style models take a mask over padding, so images of any size share a batch;
        # others (YOLOS) would see the padding as image, so only equal sizes batch together.
        self.takes_pixel_mask = "pixel_mask" in inspect.signature(model.forward).parameters

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(
            _DETECTOR_ARCHITECTURES, MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES
        )

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, limits: Any) -> DetectTask:
        model, _ = load_weights(source, AutoModelForObjectDetection, cls.name, "detection head")
        processor = source.load_image_processor()
        return cls(source, prepare_model(model, source), processor, limits)

    def batch_key(self, item: Prepared, options: DetectionOptions) -> Hashable:
        if self.takes_pixel_mask:
            return item.kind
        return (item.kind, tuple(item.inputs["pixel_values"].shape))

    def prepare(self, image: Image.Image, options: DetectionOptions) -> Prepared:
        pixels = self.processor(images=[image], return_tensors="pt").pixel_values[0]
        return Prepared({"pixel_values": pixels}, meta={"size": target_size(image)})

    def forward(self, batch: Batch, options: Sequence[Any]) -> Any:
        with torch.inference_mode():
            outputs = self.model(**batch.inputs)
        # Only what post-processing reads, in host memory: encoder states and embeddings stay
        # behind, and the copy waits for the device, so the batch's time is its true time.
        return SimpleNamespace(
            logits=outputs.logits.float().cpu(), pred_boxes=outputs.pred_boxes.float().cpu()
        )

    def split(self, outputs: Any, items: Sequence[Prepared], options: Sequence[Any]) -> list:
        # One post-processing pass at the lowest threshold in the batch; each image then keeps
        # what clears its own, which is what a pass at its own threshold would give.
        lowest = min(o.threshold for o in options)
        sizes = [item.meta["size"] for item in items]
        found = self.processor.post_process_object_detection(
            outputs, threshold=lowest, target_sizes=sizes
        )
        results = []
        for detections, item_options in zip(found, options, strict=True):
            keep = detections["scores"] > item_options.threshold
            results.append({key: value[keep].float() for key, value in detections.items()})
        return results

    def encode(self, output: dict, meta: dict, options: DetectionOptions) -> dict:
        order = best_first(output["scores"], options.max_detections)
        return {"detections": [self._detection(output, i) for i in order]}

    def _detection(self, output: dict, index: int) -> dict:
        label = self.labels[int(output["labels"][index])]
        return detection(label, output["scores"][index], output["boxes"][index])

    def collate(self, items: Sequence[Prepared], options: Sequence[Any]) -> Batch:
        return Batch(items, self._joined(items))

    def _joined(self, items: Sequence[Prepared]) -> dict[str, torch.Tensor]:
        pixels = [item.inputs["pixel_values"] for item in items]
        if len({tuple(p.shape) for p in pixels}) == 1:
            batch = {"pixel_values": stack_on_device(pixels, self.source)}
            if self.takes_pixel_mask:
                mask = torch.ones(len(pixels), *pixels[0].shape[1:], dtype=torch.long)
                batch["pixel_mask"] = mask.to(self.source.device)
            return batch
        # Padded bottom and right with zeros and masked, as the DETR image processors pad.
        height = max(p.shape[1] for p in pixels)
        width = max(p.shape[2] for p in pixels)
        padded = torch.zeros(len(pixels), pixels[0].shape[0], height, width)
        mask = torch.zeros(len(pixels), height, width, dtype=torch.long)
        for row, p in enumerate(pixels):
            padded[row, :, : p.shape[1], : p.shape[2]] = p
            mask[row, : p.shape[1], : p.shape[2]] = 1
        return {
            "pixel_values": stack_on_device(list(padded), self.source),
            "pixel_mask": mask.to(self.source.device),
        }
