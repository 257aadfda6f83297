"""Promptable segmentation: SAM (`SamModel`) masks what the job points at, as its model card
shows: the processor's image, prompts (foreground/background points, boxes) in the photo's own
pixels, the mask decoder, `post_process_masks` back to the photo's size, with each mask's
predicted IoU.

The image embedding is the expensive part (a ViT-B/L/H at 1024 px); prompts are cheap. So a
batch computes its images' embeddings in one pass and every prompt of a job (up to MAX_PROMPTS)
goes through the mask decoder with its image's embedding, once per image. The masks come to the
photo's size one prompt at a time (3 float masks of 12 MP are 145 MB; all of a job's at once
would be GBs).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Annotated, Any, ClassVar

import torch
from PIL import Image
from pydantic import Field, field_validator, model_validator
from transformers import AutoModelForMaskGeneration, AutoProcessor

from ..config import TaskLimits
from ..errors import ImageError, JobError
from .base import (
    Checkpoint,
    ModelSource,
    Prepared,
    Task,
    TaskOptions,
    load_weights,
    prepare_model,
    stack_pixels,
)
from .dense import MaskOutputOptions, batch_rows, float_map_bytes, mask_output

_ARCHITECTURES = frozenset({"SamModel"})


class MaskLimits(TaskLimits):
    # Prompts per job: each is a pass of the mask decoder and masks at the photo's size.
    MAX_PROMPTS: int = Field(32, ge=1, le=1024)


# [x, y]: JSON has no tuples, and options are strict, so a list of exactly two numbers.
Point = Annotated[list[float], Field(min_length=2, max_length=2)]


class Prompt(TaskOptions):
    points: list[Point] | None = Field(
        None, min_length=1, max_length=64, description="[x, y] points in the photo's pixels."
    )
    labels: list[int] | None = Field(
        None, description="Per point: 1 foreground (the default), 0 background."
    )
    box: Annotated[list[float], Field(min_length=4, max_length=4)] | None = Field(
        None, description="[xmin, ymin, xmax, ymax] in the photo's pixels."
    )

    @field_validator("labels")
    @classmethod
    def _foreground_or_background(cls, labels: list[int] | None) -> list[int] | None:
        if labels is not None and any(label not in (0, 1) for label in labels):
            raise ValueError("each label is 1 (foreground) or 0 (background)")
        return labels

    @model_validator(mode="after")
    def _something_to_mask(self) -> Prompt:
        if self.points is None and self.box is None:
            raise ValueError('a prompt needs "points", a "box" or both')
        if self.labels is not None and len(self.labels) != len(self.points or ()):
            raise ValueError('"labels" needs one label per point')
        return self

    def corners(self) -> list[tuple[float, ...]]:
        corners = [*(self.points or ()), *((self.box[:2], self.box[2:]) if self.box else ())]
        return [tuple(corner) for corner in corners]


class MaskOptions(MaskOutputOptions):
    prompts: list[Prompt] = Field(
        ...,
        min_length=1,
        description='What to mask in every image of the job (up to MAX_PROMPTS), e.g. [{"points": '
        '[[450, 600]]}, {"box": [75, 275, 1725, 850]}]; each gives its own masks.',
    )
    multimask_output: bool = Field(
        True, description="Three masks per prompt (whole, part, subpart), else the best one."
    )
    mask_threshold: float = Field(
        0.0, ge=-100.0, le=100.0, description="Mask logits above this are inside the mask."
    )


class MaskTask(Task):
    name: ClassVar[str] = "mask"
    hub_label: ClassVar[str] = "Mask (SAM, promptable segmentation)"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Promptable masks: SAM ViT-B", "facebook/sam-vit-base"),
    )
    summary: ClassVar[str] = "masks for the points and boxes a job gives (SAM), with IoU scores"
    Options: ClassVar = MaskOptions
    Limits: ClassVar = MaskLimits
    architectures_doc: ClassVar[str] = "`SamModel` (SAM ViT-B/L/H)"
    example_input: ClassVar[dict] = {"image": "<image>", "prompts": [{"points": [[450, 600]]}]}
    example_output: ClassVar[list] = [
        {
            "prompts": [
                {
                    "masks": [
                        {"score": 0.97, "mask": {"size": [1200, 1800], "counts": "..."}},
                        {"score": 0.91, "mask": {"size": [1200, 1800], "counts": "..."}},
                        {"score": 0.62, "mask": {"size": [1200, 1800], "counts": "..."}},
                    ]
                }
            ]
        }
    ]

    def __init__(self, source: ModelSource, model: Any, processor: Any, limits: MaskLimits) -> None:
        self.source = source
        self.model = model
        self.processor = processor
        self.image_processor = processor.image_processor
        self.limits = limits

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(_ARCHITECTURES, {"sam"})

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, limits: MaskLimits) -> MaskTask:
        model, _ = load_weights(source, AutoModelForMaskGeneration, cls.name, "mask decoder")
        processor = source.load_processor(AutoProcessor.from_pretrained, "processor")
        return cls(source, prepare_model(model, source), processor, limits)

    def warmup_options(self) -> MaskOptions:
        return self.check(MaskOptions(prompts=[Prompt(points=[[1.0, 1.0]])]))

    def check(self, options: MaskOptions) -> MaskOptions:
        if len(options.prompts) > self.limits.MAX_PROMPTS:
            raise JobError(
                f"too many prompts: {len(options.prompts)}, at most {self.limits.MAX_PROMPTS}",
                "too_large",
            )
        if len({prompt.box is None for prompt in options.prompts}) > 1:
            # The decoder takes one prompt structure per pass: boxes for all prompts or none.
            raise JobError('give every prompt a "box", or none; send the others in another job')
        return options

    def batch_key(self, item: Prepared, options: MaskOptions) -> Hashable:
        return item.kind  # every image is resized and padded to the same square

    def decode_target(self, options: MaskOptions) -> dict | None:
        return None  # prompts and masks are in the photo's own pixels: decoded in full

    def prepare(self, image: Image.Image, options: MaskOptions) -> Prepared:
        width, height = image.size  # decoded in full and upright: the photo's pixels
        for index, prompt in enumerate(options.prompts):
            outside = [
                p for p in prompt.corners() if not (0 <= p[0] <= width and 0 <= p[1] <= height)
            ]
            if outside:
                raise ImageError(
                    "invalid_image",
                    f"prompt {index} has {outside[0]} outside the {width}x{height} photo",
                )
        inputs = self.image_processor(images=[image], return_tensors="pt")
        resized = tuple(int(side) for side in inputs["reshaped_input_sizes"][0])
        return Prepared(
            {"pixel_values": inputs["pixel_values"][0]},
            meta={"size": (height, width), "resized": resized},
        )

    def forward(self, items: Sequence[Prepared], options: Sequence[Any]) -> list[dict]:
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(stack_pixels(items, self.source))
            return [
                self._decode(embeddings[row : row + 1], item.meta, job)
                for row, (item, job) in enumerate(zip(items, options, strict=True))
            ]

    def _decode(self, embedding: torch.Tensor, meta: dict, options: MaskOptions) -> dict:
        """The mask decoder over the job's prompts for one image's embedding: one pass per
        number of points. (The SAM processor pads shorter point lists, and padded points
        still take part in the decoder's attention: a prompt's masks would then depend on the
        job's other prompts.)"""
        prompts = options.prompts
        masks: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        scores: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        for group in _by_point_count(prompts):
            outputs = self.model(
                image_embeddings=embedding,
                multimask_output=options.multimask_output,
                **self._prompt_inputs([prompts[i] for i in group], meta),
            )
            for row, index in enumerate(group):
                masks[index] = outputs.pred_masks[0, row]
                scores[index] = outputs.iou_scores[0, row]
        return {
            "masks": torch.stack(masks).float().cpu(),
            "scores": torch.stack(scores).float().cpu(),
        }

    def _prompt_inputs(self, prompts: list[Prompt], meta: dict) -> dict[str, torch.Tensor]:
        """Points and boxes (prompts with as many points each) scaled from the photo's pixels to
        the model's input, as the SAM processor scales them (its resized size over the
        photo's); in float64, as the processor hands them over (the model normalises them to
        [0, 1] before it casts to its own dtype, so float16 models lose nothing)."""
        (height, width), (new_height, new_width) = meta["size"], meta["resized"]
        scale = torch.tensor([new_width / width, new_height / height], dtype=torch.float64)
        device = self.source.device
        inputs: dict[str, torch.Tensor] = {}
        if prompts[0].box is not None:
            boxes = torch.tensor([p.box for p in prompts], dtype=torch.float64).view(-1, 2, 2)
            inputs["input_boxes"] = (boxes * scale).view(1, -1, 4).to(device)
        if prompts[0].points:
            points = torch.tensor([p.points for p in prompts], dtype=torch.float64) * scale
            labels = torch.tensor([p.labels or [1] * len(p.points or ()) for p in prompts])
            inputs["input_points"] = points[None].to(device)
            inputs["input_labels"] = labels[None].to(device)
        return inputs

    def split(self, raw: list[dict], items: Sequence[Prepared], options: Sequence[Any]) -> list:
        return batch_rows(raw, len(items))  # brought to the photo's size in encode

    def result_memory(self, output: dict, meta: dict, options: MaskOptions) -> int:
        per_prompt = output["masks"].shape[1]  # masks of one prompt, at the photo's size
        return float_map_bytes(*meta["size"], maps=per_prompt) * 5 // 4  # float and boolean

    def encode(self, output: dict, meta: dict, options: MaskOptions) -> dict:
        prompts = []
        for masks, scores in zip(output["masks"], output["scores"], strict=True):
            (resized,) = self.image_processor.post_process_masks(
                [masks[None]],
                [meta["size"]],
                [meta["resized"]],
                mask_threshold=options.mask_threshold,
            )
            prompts.append(
                {
                    "masks": [
                        {
                            "score": round(float(score), 6),
                            "mask": mask_output(m.numpy(), options.mask_format),
                        }
                        for m, score in zip(resized[0], scores, strict=True)
                    ]
                }
            )
        return {"prompts": prompts}


def _by_point_count(prompts: list[Prompt]) -> list[list[int]]:
    """Prompt indices grouped by their number of points, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(len(prompt.points or ()), []).append(index)
    return list(groups.values())
