"""Promptable segmentation: SAM (`SamModel`), SAM-HQ (`SamHQModel`) and SAM 2 (`Sam2Model`)
mask what the job points at, as their model cards show: the processor's image, prompts
(foreground/background points, boxes) in the photo's own pixels, the mask decoder,
`post_process_masks` back to the photo's size, with each mask's predicted IoU. (SAM pads the
photo to a square and its post-processing removes the padding; SAM 2 resizes the photo to its
square.)

The image embedding is the expensive part (a ViT-B/L/H at 1024 px); prompts are cheap. So a
batch computes its images' embeddings in one pass and every prompt of a job (up to MAX_PROMPTS)
goes through the mask decoder with its image's embedding, once per image. The masks come to the
photo's size one prompt at a time (3 float masks of 12 MP are 145 MB; all of a job's at once
would be GBs).

Automatic masks (`points_per_side` instead of prompts) are the `mask-generation` pipeline's: a
grid of points over the photo, each a one-point prompt with three masks, filtered by predicted
IoU and stability, then non-maximum suppression over their boxes. The pipeline's filters are
each mask's own, so they are applied in the same order but a few masks at a time: the IoU test
on the device (only masks that can pass leave it), the photo-sized steps (`filter_masks`) and
NMS in split, so what waits for encode is the chosen masks' runs (int32), not their
low-resolution logits: those are 3 x 256 x 256 float32 per grid point, 805 MB for a 32 x 32 grid
with pred_iou_thresh 0, so an automatic image runs alone in its batch (a batch holds one such
image, and at most three batches are in flight), and an image whose masks' runs pass
_AUTOMATIC_HELD_BYTES fails alone as too_large rather than wait with them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator, model_validator
from torchvision.ops import batched_nms
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
    pixel_box,
    prepare_model,
    stack_pixels,
)
from .dense import (
    MaskOutputOptions,
    batch_rows,
    coco_rle_of_runs,
    float_map_bytes,
    mask_of_runs,
    mask_output,
)

_ARCHITECTURES = frozenset({"SamModel", "SamHQModel", "Sam2Model"})


class MaskLimits(TaskLimits):
    # Prompts per job: each is a pass of the mask decoder and masks at the photo's size.
    MAX_PROMPTS: int = Field(32, ge=1, le=1024)


# Automatic masks: photo-sized float masks made at once in split (at least one), and at most
# the pipeline's own 3 x 64 per `filter_masks` call (its run-length step looks for each mask's
# runs among all of the call's: 3,072 masks at once took minutes).
_AUTOMATIC_BYTES = 256 * 1024 * 1024
_AUTOMATIC_MASKS_AT_ONCE = 3 * 64
# Automatic masks: the most one image's filtered masks may hold as runs (int32, 4 bytes a run)
# from split until encode; past it the image fails alone as too_large. A mask upscaled from the
# decoder's 256 x 256 logits has a few runs per photo column it spans (an object across a 12 MP
# photo: ~8,000 runs, 32 KB), and its COCO RLE is about half of that in the job's output, so the
# cap is far over what MAX_OUTPUT_MB lets a job return inline.
_AUTOMATIC_HELD_BYTES = 64 * 1024 * 1024
# The pipeline's stability score offset: the mask is thresholded at mask_threshold +- this.
_STABILITY_OFFSET = 1


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
    prompts: list[Prompt] | None = Field(
        None,
        min_length=1,
        description='What to mask in every image of the job (up to MAX_PROMPTS), e.g. [{"points": '
        '[[450, 600]]}, {"box": [75, 275, 1725, 850]}]; each gives its own masks. Give this or '
        '"points_per_side".',
    )
    # At most the pipeline's default, 32: 1,024 decoder prompts and up to 3,072 masks per image
    # (with pred_iou_thresh 0, 805 MB of low-resolution masks wait for split: one image a batch).
    points_per_side: int | None = Field(
        None,
        ge=1,
        le=32,
        description="Automatic masks of everything (the mask-generation pipeline): a grid of "
        "this many points per side (the pipeline's default is 32), each a one-point prompt; "
        'masks come filtered and de-duplicated under "masks".',
    )
    points_per_batch: int = Field(
        64, ge=1, le=1024, description="Automatic masks: grid points per mask-decoder pass."
    )
    pred_iou_thresh: float = Field(
        0.88, ge=0.0, le=1.0, description="Automatic masks: kept if their predicted IoU is above."
    )
    stability_score_thresh: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Automatic masks: kept if stable under a +-1 change of the logit cutoff.",
    )
    crops_nms_thresh: float = Field(
        0.7, ge=0.0, le=1.0, description="Automatic masks: box IoU above which NMS drops one."
    )
    multimask_output: bool = Field(
        True, description="Three masks per prompt (whole, part, subpart), else the best one."
    )
    mask_threshold: float = Field(
        0.0, ge=-100.0, le=100.0, description="Mask logits above this are inside the mask."
    )

    @model_validator(mode="after")
    def _prompts_or_grid(self) -> MaskOptions:
        if (self.prompts is None) == (self.points_per_side is None):
            raise ValueError('give "prompts", or "points_per_side" for automatic masks (one)')
        return self


class MaskTask(Task):
    name: ClassVar[str] = "mask"
    hub_label: ClassVar[str] = "Mask (SAM, promptable segmentation)"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Promptable masks: SAM ViT-B", "facebook/sam-vit-base"),
    )
    summary: ClassVar[str] = "masks for the points and boxes a job gives (SAM), with IoU scores"
    Options: ClassVar = MaskOptions
    Limits: ClassVar = MaskLimits
    architectures_doc: ClassVar[str] = (
        "`SamModel` (SAM ViT-B/L/H), `SamHQModel` (SAM-HQ), `Sam2Model` (SAM 2, SAM 2.1)"
    )
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
        # SAM 2 squeezes the photo into its square input instead of padding it.
        self.squeezes = model.config.model_type == "sam2"

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(_ARCHITECTURES, {"sam", "sam_hq", "sam2"})

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, limits: MaskLimits) -> MaskTask:
        model, _ = load_weights(source, AutoModelForMaskGeneration, cls.name, "mask decoder")
        processor = source.load_processor(AutoProcessor.from_pretrained, "processor")
        return cls(source, prepare_model(model, source), processor, limits)

    def warmup_options(self) -> MaskOptions:
        return self.check(MaskOptions(prompts=[Prompt(points=[[1.0, 1.0]])]))

    def check(self, options: MaskOptions) -> MaskOptions:
        if options.points_per_side is not None:
            if self.squeezes:
                # The pipeline places its grid as for SAM's padded input: on SAM 2's squeezed
                # one the points would miss their places in any photo that is not square.
                raise JobError('"points_per_side" (automatic masks) needs SAM or SAM-HQ')
            return options  # a grid, bounded by the option itself
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
        if options.points_per_side is not None:
            # Up to 805 MB of low-resolution masks wait for split per automatic image: one
            # image per batch (a key of its own while it is queued), whatever MAX_BATCH_SIZE.
            return (item.kind, "automatic", id(item))
        return item.kind  # every image is resized and padded to the same square

    def decode_target(self, options: MaskOptions) -> dict | None:
        return None  # prompts and masks are in the photo's own pixels: decoded in full

    def prepare(self, image: Image.Image, options: MaskOptions) -> Prepared:
        width, height = image.size  # decoded in full and upright: the photo's pixels
        for index, prompt in enumerate(options.prompts or ()):
            outside = [
                p for p in prompt.corners() if not (0 <= p[0] <= width and 0 <= p[1] <= height)
            ]
            if outside:
                raise ImageError(
                    "invalid_image",
                    f"prompt {index} has {outside[0]} outside the {width}x{height} photo",
                )
        inputs = self.image_processor(images=[image], return_tensors="pt")
        if self.squeezes:
            resized = (self.image_processor.size["height"], self.image_processor.size["width"])
        else:
            resized = tuple(int(side) for side in inputs["reshaped_input_sizes"][0])
        meta = {"size": (height, width), "resized": resized}
        if options.points_per_side is not None:
            meta["grid"] = self._grid(options.points_per_side, (height, width))
        return Prepared({"pixel_values": inputs["pixel_values"][0]}, meta=meta)

    def _grid(self, per_side: int, size: tuple[int, int]) -> torch.Tensor:
        """The mask-generation pipeline's points (per_side**2, 2), centres of a per_side grid
        over the photo, in the model's input pixels, computed as its processor does (float32,
        the same operations in the same order: the decoder sees the same numbers)."""
        offset = 1 / (2 * per_side)
        side = torch.linspace(offset, 1 - offset, per_side)
        points = torch.stack(
            [torch.tile(side[None, :], (per_side, 1)), torch.tile(side[:, None], (1, per_side))],
            dim=-1,
        ).reshape(-1, 2)
        height, width = size
        points = points * torch.tensor([width, height])
        scale = self.image_processor.size["longest_edge"] * 1.0 / max(height, width)
        points[..., 0] = points[..., 0] * (int(width * scale + 0.5) / width)
        points[..., 1] = points[..., 1] * (int(height * scale + 0.5) / height)
        return points

    def forward(self, items: Sequence[Prepared], options: Sequence[Any]) -> list[dict]:
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(stack_pixels(items, self.source))
            return [
                self._generate(_image_inputs(embeddings, row), item.meta, job)
                if job.points_per_side is not None
                else self._decode(_image_inputs(embeddings, row), item.meta, job)
                for row, (item, job) in enumerate(zip(items, options, strict=True))
            ]

    def _generate(self, image: dict, meta: dict, options: MaskOptions) -> dict:
        """Automatic masks: the grid's points through the decoder, points_per_batch at a time,
        three masks each; only the masks that pass the predicted-IoU filter (the pipeline's
        first, each mask's own) come back to host memory."""
        device = self.source.device
        kept_masks, kept_scores = [], []
        for chunk in meta["grid"].split(options.points_per_batch):
            outputs = self.model(
                **image,
                input_points=chunk[None, :, None, :].to(device),
                input_labels=torch.ones(1, len(chunk), 1, dtype=torch.long, device=device),
                multimask_output=True,
            )
            masks, scores = outputs.pred_masks[0].flatten(0, 1), outputs.iou_scores[0].flatten()
            if options.pred_iou_thresh > 0.0:
                keep = scores > options.pred_iou_thresh
                masks, scores = masks[keep], scores[keep]
            kept_masks.append(masks.float().cpu())
            kept_scores.append(scores.float().cpu())
        return {"automatic": torch.cat(kept_masks), "scores": torch.cat(kept_scores)}

    def _decode(self, image: dict, meta: dict, options: MaskOptions) -> dict:
        """The mask decoder over the job's prompts for one image's embedding: one pass per
        number of points. (The SAM processor pads shorter point lists, and padded points
        still take part in the decoder's attention: a prompt's masks would then depend on the
        job's other prompts.)"""
        prompts = options.prompts
        masks: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        scores: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        for group in _by_point_count(prompts):
            outputs = self.model(
                **image,
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
        the model's input, as the processor scales them (its resized size over the photo's);
        in float64 as SAM's processor hands them over (the model normalises them to [0, 1]
        before it casts to its own dtype, so float16 models lose nothing), float32 as SAM 2's."""
        device = self.source.device
        inputs: dict[str, torch.Tensor] = {}
        if prompts[0].box is not None:
            boxes = self._scaled([p.box for p in prompts], meta).view(-1, 2, 2)
            inputs["input_boxes"] = boxes.view(1, -1, 4).to(device)
        if prompts[0].points:
            points = self._scaled([p.points for p in prompts], meta)
            labels = torch.tensor([p.labels or [1] * len(p.points or ()) for p in prompts])
            inputs["input_points"] = points[None].to(device)
            inputs["input_labels"] = labels[None].to(device)
        return inputs

    def _scaled(self, corners: list, meta: dict) -> torch.Tensor:
        """[..., x, y] corners from the photo's pixels to the model input's, an axis at a time
        as the processors' `_normalize_coordinates` does (the same numbers, to the last bit)."""
        (height, width), (new_height, new_width) = meta["size"], meta["resized"]
        dtype = torch.float32 if self.squeezes else torch.float64
        scaled = torch.tensor(corners, dtype=dtype).view(-1, 2)
        scaled[:, 0] = scaled[:, 0] * (new_width / width)
        scaled[:, 1] = scaled[:, 1] * (new_height / height)
        return scaled.view(len(corners), -1, 2)

    def split(self, raw: list[dict], items: Sequence[Prepared], options: Sequence[Any]) -> list:
        """Prompted masks come to the photo's size in encode; automatic ones are filtered and
        chosen here, so only the chosen masks' runs wait for encode."""
        return [
            self._chosen(output, item.meta, job) if "automatic" in output else output
            for output, item, job in zip(batch_rows(raw, len(items)), items, options, strict=True)
        ]

    def result_memory(self, output: dict, meta: dict, options: MaskOptions) -> int:
        if "runs" in output:  # the held runs, the masks made of them (as long), one photo mask
            return _held_bytes(output) * 3 + float_map_bytes(*meta["size"])
        per_prompt = output["masks"].shape[1]  # masks of one prompt, at the photo's size
        return float_map_bytes(*meta["size"], maps=per_prompt) * 5 // 4  # float and boolean

    def encode(self, output: dict, meta: dict, options: MaskOptions) -> dict:
        if "runs" in output:
            return {"masks": self._automatic_masks(output, meta, options)}
        prompts = []
        for masks, scores in zip(output["masks"], output["scores"], strict=True):
            resized = self._at_photo_size(masks[None], meta, options.mask_threshold, True)
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

    def _automatic_masks(self, output: dict, meta: dict, options: MaskOptions) -> list[dict]:
        """The chosen masks, best first, as the pipeline returns them."""
        height, width = meta["size"]
        return [
            {
                "score": round(float(score), 6),
                "box": pixel_box(box.tolist()),
                "mask": self._runs_output(runs, height, width, options),
            }
            for runs, score, box in zip(
                output["runs"], output["scores"], output["boxes"], strict=True
            )
        ]

    def _chosen(self, output: dict, meta: dict, options: MaskOptions) -> dict | ImageError:
        """One image's masks that pass the pipeline's filters, then its NMS over their boxes
        (best first): their runs, scores and boxes, or ImageError("too_large")."""
        filtered = self._filtered(output, meta, options)
        if isinstance(filtered, ImageError):
            return filtered
        runs, scores, boxes = filtered
        if runs:
            chosen = batched_nms(
                boxes.float(), scores, torch.zeros(len(boxes)), options.crops_nms_thresh
            ).tolist()
            runs, scores, boxes = [runs[i] for i in chosen], scores[chosen], boxes[chosen]
        return {"runs": runs, "scores": scores, "boxes": boxes}

    def _filtered(
        self, output: dict, meta: dict, options: MaskOptions
    ) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor] | ImageError:
        """(runs, scores, boxes) of the masks the pipeline's `filter_masks` keeps, called on a
        few photo-sized masks at a time (its tests are each mask's own: stability, touching the
        crop's edge); the runs are its uncompressed RLE as int32, small where the masks were
        not; ImageError("too_large") once they pass _AUTOMATIC_HELD_BYTES."""
        height, width = meta["size"]
        whole_photo = torch.tensor([0, 0, width, height], dtype=torch.float32)
        at_once = _automatic_at_once(meta["size"])
        runs, scores, boxes, held = [], [], [], 0
        for start in range(0, len(output["scores"]), at_once):
            low = output["automatic"][start : start + at_once, None]
            masks = self._at_photo_size(low, meta, options.mask_threshold, False)
            kept, kept_scores, kept_boxes = self.image_processor.filter_masks(
                masks,
                output["scores"][start : start + at_once, None],
                meta["size"],
                whole_photo,
                options.pred_iou_thresh,
                options.stability_score_thresh,
                options.mask_threshold,
                _STABILITY_OFFSET,
            )
            del masks
            chunk_runs = [np.asarray(rle["counts"], dtype=np.int32) for rle in kept]
            del kept  # Python ints: 36 bytes a run
            runs += chunk_runs
            held += sum(r.nbytes for r in chunk_runs)
            if held > _AUTOMATIC_HELD_BYTES:
                return _too_many_runs()
            scores.append(kept_scores)
            boxes.append(kept_boxes)
        if not runs:
            return [], torch.empty(0), torch.empty(0, 4)
        return runs, torch.cat(scores), torch.cat(boxes)

    def _at_photo_size(
        self, masks: torch.Tensor, meta: dict, mask_threshold: float, binarize: bool
    ) -> torch.Tensor:
        """(n, masks, h, w) low-resolution masks at the photo's size by the processor's
        `post_process_masks` (SAM's also takes the resized size, to remove its padding)."""
        resized = () if self.squeezes else ([meta["resized"]],)
        (at_photo_size,) = self.image_processor.post_process_masks(
            [masks], [meta["size"]], *resized, mask_threshold=mask_threshold, binarize=binarize
        )
        return at_photo_size

    @staticmethod
    def _runs_output(runs: np.ndarray, height: int, width: int, options: MaskOptions) -> Any:
        if options.mask_format == "rle":
            return coco_rle_of_runs(runs, height, width)
        return mask_output(mask_of_runs(runs, height, width), "png")


def _by_point_count(prompts: list[Prompt]) -> list[list[int]]:
    """Prompt indices grouped by their number of points, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(len(prompt.points or ()), []).append(index)
    return list(groups.values())


def _image_inputs(embeddings: Any, row: int) -> dict[str, Any]:
    """One image's embedding as the mask decoder takes it: SAM's is a tensor; SAM-HQ's
    (embedding, the ViT's early layers), which its high-quality token reads too; SAM 2's a list
    of feature maps, fine to coarse."""
    if isinstance(embeddings, list):
        return {"image_embeddings": [level[row : row + 1] for level in embeddings]}
    if isinstance(embeddings, tuple):
        embedding, early = embeddings
        return {
            "image_embeddings": embedding[row : row + 1],
            "intermediate_embeddings": [layer[row : row + 1] for layer in early],
        }
    return {"image_embeddings": embeddings[row : row + 1]}


def _automatic_at_once(size: tuple[int, int]) -> int:
    return max(1, min(_AUTOMATIC_MASKS_AT_ONCE, _AUTOMATIC_BYTES // float_map_bytes(*size)))


def _held_bytes(output: dict) -> int:
    """Bytes an automatic image's chosen masks hold from split until encode."""
    tensors = (output["scores"], output["boxes"])
    return sum(r.nbytes for r in output["runs"]) + sum(t.nbytes for t in tensors)


def _too_many_runs() -> ImageError:
    return ImageError(
        "too_large",
        f"this photo's automatic masks pass {_AUTOMATIC_HELD_BYTES // 2**20} MB of run-length "
        'masks: raise "pred_iou_thresh" or "stability_score_thresh", or send a smaller photo',
    )
