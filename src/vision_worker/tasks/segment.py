"""Image segmentation: semantic heads (SegFormer, BEiT, DPT, MobileViT, UperNet, ...) and the
mask classifiers (Mask2Former, MaskFormer, OneFormer, DETR panoptic: semantic, instance,
panoptic), masks at the photo's own size; and background removal (`cutout`): the photo with an
alpha channel from the kept segments.

Answers are the `image-segmentation` pipeline's (same subtask defaults, thresholds, labels,
scores and masks), made with less memory. The pipeline brings every class's (or every query's)
map to the photo's size at once: a 150-class SegFormer on a 12 MP photo is 7.2 GB of float32.
Here the maps are resized a few at a time, keeping a running argmax, which gives the same
labels because each map is interpolated on its own; a few hundred MB at 12 MP.

The mask classifiers share one post-processing (each query a class and a mask) with family
quirks, each as its processor has it: Mask2Former first brings masks to 384 px; OneFormer takes
the subtask as a token input ("the task is panoptic", as the pipeline tokenizes it), resizes
with antialiasing, and picks instances by (query, class) score from their mask logits; DETR's
instances are its panoptic segments.

Not served: EoMT (its processor cuts large photos into crops and merges their masks back), and
remote-code matting models (BiRefNet, RMBG: `trust_remote_code` runs code from the checkpoint's
repository, which a serving worker does not do).
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field
from transformers import (
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
    AutoTokenizer,
)
from transformers.models.auto import modeling_auto

from ..errors import JobError
from ..outputs import OutputImage
from .base import (
    Batch,
    Checkpoint,
    ModelSource,
    Prepared,
    Task,
    architectures_in,
    load_weights,
    pixel_batch,
    prepare_model,
    stack_on_device,
)
from .dense import (
    MaskOutputOptions,
    OutputLimits,
    batch_rows,
    check_inline_size,
    inline_bytes,
    mask_output,
)
from .detections import target_size

_SEMANTIC_HEADS = architectures_in(modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES)
_MASK_CLASSIFIERS = frozenset(
    {
        "Mask2FormerForUniversalSegmentation",
        "MaskFormerForInstanceSegmentation",
        "OneFormerForUniversalSegmentation",
        "DetrForSegmentation",
    }
)
# The two outputs a mask classifier's post-processing reads: (class logits, mask logits).
_QUERY_OUTPUTS = {"detr": ("logits", "pred_masks")}
_DEFAULT_QUERY_OUTPUTS = ("class_queries_logits", "masks_queries_logits")
# Mask2Former's post-processing first brings the query masks to this size (MaskFormer's keeps
# the model's own).
_MASK2FORMER_MASK_SIZE = (384, 384)
# Class (or query) maps brought to the photo's size at once: as many as fit in this (at least
# one): 5 at 12 MP, 1 at 40 MP.
_RESIZED_BYTES = 256 * 1024 * 1024
# Per photo pixel while a result is made, besides the resized maps: the running best score
# (float32) and label (int32), the pixels that improved, one mask and its run-length work.
_BYTES_PER_PIXEL = 4 + 4 + 1 + 1 + 4
# A cut-out: the photo decoded (RGB), with its alpha (RGBA), and the alpha mask.
_CUTOUT_BYTES_PER_PIXEL = 3 + 4 + 1
_BACKGROUND_WORDS = frozenset({"background", "bg", "__background__"})

Subtask = Literal["semantic", "instance", "panoptic"]


class SegmentOptions(MaskOutputOptions):
    subtask: Subtask | None = Field(
        None,
        description="semantic, instance or panoptic; default as the pipeline: panoptic for "
        "Mask2Former/MaskFormer, semantic for semantic heads.",
    )
    threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="instance/panoptic: segments scoring below are dropped."
    )
    mask_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="panoptic: probability that makes a pixel part of a mask."
    )
    overlap_mask_area_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="panoptic: a segment must keep more than this share of its mask's area.",
    )
    labels: list[str] | None = Field(
        None, min_length=1, description="Keep only segments with these labels (default all)."
    )
    cutout: bool = Field(
        False,
        description='Background removal: also the photo as an RGBA PNG under "cutout", opaque '
        'where the kept segments are (default: all but a "background" label), and that alpha '
        "mask.",
    )


class SegmentTask(Task):
    name: ClassVar[str] = "segment"
    hub_label: ClassVar[str] = "Segment (SegFormer, Mask2Former), background removal"
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Segmentation: SegFormer B0 ADE20k", "nvidia/segformer-b0-finetuned-ade-512-512"),
        ("Panoptic: Mask2Former Swin-T COCO", "facebook/mask2former-swin-tiny-coco-panoptic"),
    )
    summary: ClassVar[str] = "labelled masks per image (semantic, instance, panoptic), cut-outs"
    Options: ClassVar = SegmentOptions
    Limits: ClassVar = OutputLimits
    architectures_doc: ClassVar[str] = (
        "any `*ForSemanticSegmentation` checkpoint (SegFormer, BEiT, DPT, MobileViT, UperNet, "
        "...), `Mask2FormerForUniversalSegmentation`, `MaskFormerForInstanceSegmentation`, "
        "`OneFormerForUniversalSegmentation`, `DetrForSegmentation`"
    )
    example_input: ClassVar[dict] = {"image": "<image>", "labels": ["cat"], "cutout": True}
    example_output: ClassVar[list] = [
        {
            "segments": [
                {"label": "cat", "score": 0.98, "mask": {"size": [3024, 4032], "counts": "..."}}
            ],
            "cutout": {
                "png": "data:image/png;base64,iVBORw0KGgo...",
                "alpha": {"size": [3024, 4032], "counts": "..."},
            },
        }
    ]

    def __init__(
        self,
        source: ModelSource,
        model: Any,
        processor: Any,
        limits: OutputLimits,
        tokenizer: Any = None,
    ) -> None:
        self.source = source
        self.model = model
        self.limits = limits
        self.processor = self.image_processor = processor
        self.labels = model.config.id2label
        self.queries = type(model).__name__ in _MASK_CLASSIFIERS
        self.family = model.config.model_type
        self.query_mask_size = _MASK2FORMER_MASK_SIZE if self.family == "mask2former" else None
        self.query_outputs = _QUERY_OUTPUTS.get(self.family, _DEFAULT_QUERY_OUTPUTS)
        # OneFormer's processor resizes with torchvision's resize: antialiased.
        self.antialias = self.family == "oneformer"
        self.task_tokens = _task_tokens(tokenizer, model.config) if tokenizer else None
        self.subtasks: tuple[Subtask, ...] = (
            ("panoptic", "instance", "semantic") if self.queries else ("semantic",)
        )

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.saved_as(_SEMANTIC_HEADS | _MASK_CLASSIFIERS, ())

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, limits: OutputLimits) -> SegmentTask:
        semantic = checkpoint.saved_as(_SEMANTIC_HEADS, ())
        auto_class = (
            AutoModelForSemanticSegmentation if semantic else AutoModelForUniversalSegmentation
        )
        model, _ = load_weights(source, auto_class, cls.name, "segmentation head")
        tokenizer = (
            source.load_processor(AutoTokenizer.from_pretrained, "tokenizer")
            if model.config.model_type == "oneformer"
            else None
        )
        processor = source.load_image_processor()
        return cls(source, prepare_model(model, source), processor, limits, tokenizer)

    def check(self, options: SegmentOptions) -> SegmentOptions:
        subtask = options.subtask or self.subtasks[0]
        if subtask not in self.subtasks:
            raise JobError(
                f'"subtask" {subtask!r} is not one this model does; it does '
                f"{', '.join(self.subtasks)}"
            )
        unknown = set(options.labels or ()) - set(self.labels.values())
        if unknown:
            known = ", ".join(sorted(self.labels.values())[:8])
            raise JobError(
                f"labels the model does not know: {sorted(unknown)[:5]}; it knows {known}, ..."
            )
        return options.model_copy(update={"subtask": subtask})

    def batch_key(self, item: Prepared, options: SegmentOptions) -> Hashable:
        # The pipeline runs each image unpadded; processors that keep the aspect ratio
        # (Mask2Former) give each photo shape its own size, so equal shapes batch together;
        # OneFormer's task token is an input too.
        return (item.kind, tuple(item.inputs["pixel_values"].shape), self._task_of(options))

    def _task_of(self, options: SegmentOptions) -> str | None:
        return options.subtask if self.task_tokens is not None else None

    def decode_target(self, options: SegmentOptions) -> dict | None:
        # A cut-out is the photo itself: decoded in full, not drafted to the model's size.
        return None if options.cutout else self.input_size()

    def prepare(self, image: Image.Image, options: SegmentOptions) -> Prepared:
        pixels = self.processor(images=[image], return_tensors="pt").pixel_values[0]
        prepared = Prepared({"pixel_values": pixels}, meta={"size": target_size(image)})
        if self.task_tokens is not None:
            prepared.inputs["task_inputs"] = self.task_tokens[options.subtask]
        if options.cutout:
            # Kept until the result is made, outside the decode budget, losslessly (a cut-out
            # is the photo's own pixels): PNG at level 1 is about half the decoded photo.
            png = io.BytesIO()
            image.convert("RGB").save(png, "PNG", compress_level=1)
            prepared.meta["photo_png"] = png.getvalue()
            self._check_cutout_size(len(prepared.meta["photo_png"]), image.size)
        return prepared

    def _check_cutout_size(self, photo_png: int, size: tuple[int, int]) -> None:
        """Fail this photo before the model runs if its cut-out cannot fit MAX_OUTPUT_MB: the
        cut-out is these same pixels with an alpha channel, PNG-encoded the same way, so the
        photo's own PNG is (about) the least it can be. Masks are not sized here: they
        compress by 100x or more, and the job's output meter still counts them."""
        what = f"the {size[0]}x{size[1]} cut-out (RGBA PNG)"
        fits = 'send a smaller photo, or leave out "cutout" for the masks alone, '
        check_inline_size(self.limits, what, inline_bytes(photo_png), fits, certain=True)

    def collate(self, items: Sequence[Prepared], options: Sequence[Any]) -> Batch:
        batch = pixel_batch(items, self.source)
        if self.task_tokens is not None:
            tokens = [item.inputs["task_inputs"] for item in items]
            batch.inputs["task_inputs"] = stack_on_device(tokens, self.source, torch.long)
        return batch

    def forward(self, batch: Batch, options: Sequence[Any]) -> dict:
        with torch.inference_mode():
            outputs = self.model(**batch.inputs)
        if not self.queries:
            return {"logits": outputs.logits.float().cpu()}
        classes, masks = self.query_outputs
        return {"classes": outputs[classes].float().cpu(), "masks": outputs[masks].float().cpu()}

    def split(self, raw: dict, items: Sequence[Prepared], options: Sequence[Any]) -> list:
        return batch_rows(raw, len(items))  # brought to the photo's size in encode

    def result_memory(self, output: dict, meta: dict, options: SegmentOptions) -> int:
        height, width = meta["size"]
        per_pixel = _BYTES_PER_PIXEL + (_CUTOUT_BYTES_PER_PIXEL if options.cutout else 0)
        resized = 4 * height * width * _maps_at_once(meta["size"])
        return height * width * per_pixel + resized

    def encode(self, output: dict, meta: dict, options: SegmentOptions) -> dict:
        segmentation, segments = self._segmentation(output, meta["size"], options)
        kept = [s for s in segments if options.labels is None or s["label"] in options.labels]
        result: dict[str, Any] = {
            "segments": [
                {
                    "label": s["label"],
                    "score": s["score"],
                    "mask": mask_output(segmentation == s["id"], options.mask_format),
                }
                for s in kept
            ]
        }
        if options.cutout:
            result["cutout"] = self._cutout(segmentation, kept, meta, options)
        return result

    # --- post-processing at the photo's size, as the pipeline's, a few maps at a time -------
    def _segmentation(
        self, output: dict, size: tuple[int, int], options: SegmentOptions
    ) -> tuple[np.ndarray, list[dict]]:
        """(a map of segment ids at `size`, [{"id", "label", "score"}]) in the pipeline's order."""
        if options.subtask == "semantic":
            scores = output["logits"] if not self.queries else self._semantic_scores(output)
            labels = _argmax_resized(scores, size, "bilinear", self.antialias)[1].numpy()
            found = np.unique(labels)
            return labels, [{"id": i, "label": self.labels[int(i)], "score": None} for i in found]
        if options.subtask == "panoptic" or (options.subtask, self.family) == ("instance", "detr"):
            return self._panoptic(output, size, options)
        if self.family == "oneformer":
            return self._oneformer_instances(output, size, options)
        return self._instances(output, size, options.threshold)

    def _instances(
        self, output: dict, size: tuple[int, int], threshold: float
    ) -> tuple[np.ndarray, list[dict]]:
        """Mask2Former's post_process_instance_segmentation, one query mask at a time."""
        masks = self._query_masks(output)
        classes = output["classes"].softmax(-1)[:, :-1]
        queries, labels = classes.shape
        scores, top = classes.flatten().topk(queries, sorted=False)
        query = torch.div(top, labels, rounding_mode="floor")
        binary = (masks[query] > 0).float()
        mask_scores = (masks[query].sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (
            binary.flatten(1).sum(1) + 1e-6
        )
        scores = scores * mask_scores
        segmentation = torch.full(size, -1, dtype=torch.int32)
        segments = []
        for j in range(queries):
            score = scores[j].item()
            if score < threshold:
                continue
            resized = F.interpolate(binary[j][None, None], size=size, mode="nearest")[0, 0]
            if not torch.any(resized != 0):
                continue
            segmentation[resized == 1] = len(segments)
            label = self.labels[int(top[j] % labels)]
            segments.append({"id": len(segments), "label": label, "score": round(score, 6)})
        return segmentation.numpy(), segments

    def _panoptic(
        self, output: dict, size: tuple[int, int], options: SegmentOptions
    ) -> tuple[np.ndarray, list[dict]]:
        """post_process_panoptic_segmentation: each query its best class, kept above the
        threshold (and not "no object")."""
        probabilities = self._query_masks(output).sigmoid()
        scores, labels = output["classes"].softmax(-1).max(-1)
        null = output["classes"].shape[-1] - 1
        keep = labels.ne(null) & (scores > options.threshold)
        return self._segments(probabilities[keep], scores[keep], labels[keep], size, options)

    def _oneformer_instances(
        self, output: dict, size: tuple[int, int], options: SegmentOptions
    ) -> tuple[np.ndarray, list[dict]]:
        """OneFormer's post_process_instance_segmentation: the best (query, class) pairs above
        the threshold, segmented from the masks' logits (its code passes logits, not
        probabilities, so `mask_threshold` applies to logits times score)."""
        classes = output["classes"].softmax(-1)[:, :-1]
        queries, labels = classes.shape
        scores, top = classes.flatten().topk(queries, sorted=False)
        keep = scores > options.threshold
        logits = self._query_masks(output)[torch.div(top, labels, rounding_mode="floor")]
        return self._segments(logits[keep], scores[keep], (top % labels)[keep], size, options)

    def _segments(
        self,
        maps: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        size: tuple[int, int],
        options: SegmentOptions,
    ) -> tuple[np.ndarray, list[dict]]:
        """The processors' compute_segments, without the (kept queries, height, width) tensor:
        maps resized a few at a time, twice."""
        segmentation = np.zeros(size, dtype=np.int32)
        if not len(scores):
            return segmentation - 1, []
        # Resized, then weighed by the query's score: the pipeline's order of operations.
        best = _argmax_resized(maps, size, "bilinear", self.antialias, scales=scores)[1]
        segments = []
        weighted = _resized(maps, size, "bilinear", self.antialias, 1, scores)
        for k, one_map in enumerate(weighted):
            mine = best == k
            area, original = mine.sum(), (one_map[0] >= options.mask_threshold).sum()
            if not (area > 0 and original > 0):
                continue
            if not (area / original).item() > options.overlap_mask_area_threshold:
                continue
            identity = len(segments) + 1
            segmentation[mine.numpy()] = identity
            label = self.labels[int(labels[k])]
            segments.append({"id": identity, "label": label, "score": round(scores[k].item(), 6)})
        return segmentation, segments

    def _cutout(
        self, segmentation: np.ndarray, kept: list[dict], meta: dict, options: SegmentOptions
    ) -> dict:
        chosen = [
            s["id"]
            for s in kept
            if options.labels is not None or s["label"].lower() not in _BACKGROUND_WORDS
        ]
        alpha = np.isin(segmentation, chosen)
        # Decoded in full (decode_target), upright: the photo's size, as the segmentation is.
        photo = Image.open(io.BytesIO(meta["photo_png"])).convert("RGB")
        photo.putalpha(Image.fromarray(alpha.astype(np.uint8) * 255))
        return {
            "png": OutputImage(photo, "cutout"),
            "alpha": mask_output(alpha, options.mask_format),
        }

    def _query_masks(self, output: dict) -> torch.Tensor:
        """The query masks at the size this family's post-processing uses them."""
        if self.query_mask_size is None:
            return output["masks"]
        masks = output["masks"][None]
        return F.interpolate(
            masks, size=self.query_mask_size, mode="bilinear", align_corners=False
        )[0]

    def _semantic_scores(self, output: dict) -> torch.Tensor:
        """The MaskFormer family's per-class scores: class probabilities (no null) times masks."""
        classes = output["classes"].softmax(-1)[:, :-1]
        return torch.einsum("qc,qhw->chw", classes, self._query_masks(output).sigmoid())


def _task_tokens(tokenizer: Any, config: Any) -> dict[str, torch.Tensor]:
    """OneFormer's task input per subtask, as the pipeline makes it: its processor's sentence
    ("the task is panoptic"), tokenized and padded to the model's task_seq_len."""
    return {
        subtask: tokenizer(
            [f"the task is {subtask}"],
            padding="max_length",
            max_length=config.task_seq_len,
            return_tensors="pt",
        )["input_ids"][0]
        for subtask in ("panoptic", "instance", "semantic")
    }


def _maps_at_once(size: tuple[int, int]) -> int:
    return max(1, _RESIZED_BYTES // (4 * size[0] * size[1]))


def _resized(
    maps: torch.Tensor,
    size: tuple[int, int],
    mode: str,
    antialias: bool = False,
    at_once: int | None = None,
    scales: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """`maps` (n, h, w) at `size` (each times its scale), a few at a time: interpolation
    treats each map on its own, so these are the values resizing all of them at once gives."""
    at_once = at_once or _maps_at_once(size)
    for start in range(0, maps.shape[0], at_once):
        chunk = F.interpolate(
            maps[start : start + at_once][None],
            size=size,
            mode=mode,
            align_corners=False,
            antialias=antialias,
        )[0]
        if scales is not None:
            chunk *= scales[start : start + at_once].view(-1, 1, 1)
        yield chunk


def _argmax_resized(
    maps: torch.Tensor,
    size: tuple[int, int],
    mode: str,
    antialias: bool = False,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(best value, index of the first best map) per pixel of `maps` resized to `size`,
    updated in place chunk by chunk (the photo-sized buffers exist once)."""
    best_value = torch.full(size, -torch.inf)
    best_index = torch.zeros(size, dtype=torch.int32)
    start = 0
    for chunk in _resized(maps, size, mode, antialias, scales=scales):
        if chunk.shape[0] == 1:
            value, index = chunk[0], None
        else:
            value, index = chunk.max(0)
        better = value > best_value  # strictly: ties keep the earlier map, as argmax does
        torch.where(better, value, best_value, out=best_value)
        if index is None:
            best_index.masked_fill_(better, start)
        else:
            torch.where(better, index.to(torch.int32) + start, best_index, out=best_index)
        start += chunk.shape[0]
        del chunk, value, index, better
    return best_value, best_index
