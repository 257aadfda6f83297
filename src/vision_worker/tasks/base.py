"""The task contract, and the one place models are fetched from a Hub id or a directory.

A task owns everything about its task and nothing about RunPod or HTTP:

- `Options`: a pydantic model of the job options it accepts (types, defaults, bounds,
  descriptions); the README tables, the pod server's form and `.runpod/hub.json` follow it.
- `serves(checkpoint)`: decided from the checkpoint's architectures, never by a first match.
- `Limits`: the task's own settings (bounds and defaults, environment variables like every
  setting); the task sees those and nothing else of the worker's configuration.
  `limit_defaults` gives a shared limit another default for this task alone (a page of OCR is
  longer than a caption); the environment still wins.
- `load(source, checkpoint, limits)`: once, at cold start; refuses checkpoints whose task
  weights are missing.
- `check(options)`: bounds that depend on limits or on the model (e.g. top_k <= labels).
- `job_items(sources, options) -> list[JobItem]`: what the job's work is, item by item, each
  with its own options: by default one item per image; a task may give each image its own
  options (one question per image), make one item of several images (one answer about all of
  them) or add texts (text embeddings in the images' space).
- `prepare(image, options) -> Prepared`: per image item, on an image thread
  (`prepare_together` for an item of several images, `prepare_text` for a text).
- `collate(items, options) -> batch`: the items' inputs joined for the model and on its device
  (stacked, padded, masked: a `Batch`), on a thread of its own while the model runs the batch
  before; by default the items themselves, for a `forward` that joins them itself. `items`
  share `batch_key`.
- `forward(batch, options)`: on the model thread, and nothing else runs there: the batch
  through the model, and what `split` needs back in host memory (only that: the copy waits for
  the device, so the batch's time is its true time and no device memory outlives the pass).
- `split(raw, items, options) -> list`: CPU work off the model thread, while the next batch's
  forward pass runs: post-processing, decoding; one output per item.
- `encode(output, meta, options) -> dict`: one image's JSON result, on an encode thread; an
  image in it is an `OutputImage` the worker delivers; `result_memory` says what it will hold.
Every item, image or text, flows through the same stages and answers in its section of the
output: "results" for images, "texts" for texts.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from ..config import TaskLimits

T = TypeVar("T")


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the worker must not start."""


class MissingWeightsError(ModelLoadError):
    """The checkpoint lacks weights the task's output depends on (they would be random)."""

    def __init__(self, model_name: str, task: str, what: str, missing: Iterable[str]) -> None:
        names = sorted(missing)
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        super().__init__(f"{model_name} has no {what} (weights missing: {shown})")
        self.model_name, self.task, self.missing = model_name, task, names


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from and where they go."""

    name: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype
    # Fine-tuning checkpoints often hold weights and config only; the processor and tokenizer
    # then come from the base model (PROCESSOR_NAME).
    processor_name: str | None = None
    # TORCH_COMPILE: compile the model at load.
    compile: bool = False

    @property
    def is_local(self) -> bool:
        return Path(self.name).is_dir()

    def load(self, loader: Callable[..., T], **kwargs: Any) -> T:
        """Call a transformers `from_pretrained` on this source with a clear failure message."""
        return _load(self.name, self.revision, loader, **kwargs)

    def load_image_processor(self) -> Any:
        from transformers import AutoImageProcessor

        return self.load_processor(
            AutoImageProcessor.from_pretrained, "image processor", backend=image_processor_backend()
        )

    def load_processor(self, loader: Callable[..., T], what: str, **kwargs: Any) -> T:
        """Load a processor or tokenizer from PROCESSOR_NAME when set, else from the model."""
        name = self.processor_name or self.name
        try:
            return _load(name, None if self.processor_name else self.revision, loader, **kwargs)
        except ModelLoadError as error:
            if self.processor_name:
                raise
            raise ModelLoadError(
                f"{error}. A training checkpoint often has no {what}: set PROCESSOR_NAME to the "
                "base model it was fine-tuned from (a Hub id or directory) to take it from there"
            ) from None


def image_processor_backend() -> str:
    """transformers' fast (torchvision) image processors where torchvision is installed, as in
    the Docker image; the PIL ones otherwise (chosen here, so no fallback warning per load)."""
    return "torchvision" if importlib.util.find_spec("torchvision") else "pil"


def _load(name: str, revision: str | None, loader: Callable[..., T], **kwargs: Any) -> T:
    if revision:
        kwargs["revision"] = revision
    is_local = Path(name).is_dir()
    if not is_local and not _hub_reachable():
        # Without this, huggingface_hub retries for ~30 s before saying it is offline.
        kwargs["local_files_only"] = True
    try:
        return loader(name, **kwargs)
    except ModelLoadError:
        raise
    except Exception as error:  # corrupt safetensors, shapes that do not match the config, ...
        raise ModelLoadError(_explain(name, revision, is_local, error)) from error


def _explain(name: str, revision: str | None, is_local: bool, error: Exception) -> str:
    reason = " ".join(str(error).split())[:300]
    if is_local:
        return f"cannot load from directory {name}: {reason}"
    if not _hub_reachable():
        return (
            f"model {name!r} is not in the local cache (HF_HOME="
            f"{os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the Hugging Face Hub "
            "is unreachable. Bake the weights into the image (builder/download_model.py) or "
            "set MODEL_NAME to a local directory saved with save_pretrained"
        )
    return f"cannot load {name!r} (revision {revision or 'main'}): {reason}"


@lru_cache(maxsize=1)
def _hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    host = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint says about itself before any weight is loaded."""

    name: str
    model_type: str
    # From config.json's "architectures": the class it was saved from, i.e. which heads it has.
    architectures: tuple[str, ...]
    # An encoder-decoder's encoder model type ("donut-swin", "vit"): one architecture
    # (VisionEncoderDecoderModel) is a captioner, TrOCR or Donut by its encoder.
    encoder_type: str = ""

    @classmethod
    def from_config(cls, name: str, config: Any) -> Checkpoint:
        encoder = getattr(getattr(config, "encoder", None), "model_type", "")
        return cls(name, config.model_type, tuple(config.architectures or ()), encoder or "")

    def saved_as(self, architectures: Iterable[str], model_types: Iterable[str]) -> bool:
        """Saved from one of `architectures`; a config naming none (old checkpoints) is judged
        by its model type, and the weight check at load still catches a missing head."""
        if self.architectures:
            return any(a in set(architectures) for a in self.architectures)
        return self.model_type in set(model_types)


def architectures_in(mapping: Mapping[str, str | Sequence[str]]) -> frozenset[str]:
    """The class names of a transformers auto mapping (model type -> one name or several)."""
    return frozenset(
        name
        for names in mapping.values()
        for name in ((names,) if isinstance(names, str) else names)
    )


class TaskOptions(BaseModel):
    """Base of every task's options: strict types ("5" is not an integer), no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@dataclass
class Prepared:
    """One batch item: model inputs for one image (or text), and what encoding its output needs."""

    inputs: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "image"
    # Set by the worker for a job that streams text: a generating task calls it from the model
    # thread with each new piece of the answer; the pieces join into a prefix of the answer.
    on_text: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    # Set by the worker: the inputs' bytes held from the image memory budget until the item's
    # forward pass is done (memory.Held), so items queued for a slow model are bounded too.
    held: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class JobItem:
    """One item of a job's work with its own options: one image (the usual case), several
    images with one answer about all of them (`together`), or a text. Each makes one batch
    item and one result."""

    options: Any
    images: tuple[str | bytes, ...] = ()
    together: bool = False
    text: str | None = None

    @property
    def section(self) -> str:
        """Where its result goes in the job's output."""
        return "texts" if self.text is not None else "results"


@dataclass
class Batch:
    """What a task's `collate` makes of a batch: the items' inputs joined on the model's device,
    and the items themselves (for what `forward` needs of each, e.g. a streaming listener)."""

    items: Sequence[Prepared]
    inputs: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.items)


# A limit's name in an option's description, e.g. "1 to MAX_LABELS".
_LIMIT_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")


def with_limit_values(text: str, values: Mapping[str, Any]) -> str:
    """`text` with each limit it names shown at its value, the name kept as the way to change
    it: "1 to MAX_LABELS" -> "1 to 64 (MAX_LABELS)". Help shows what a job may send now."""

    def shown(match: re.Match) -> str:
        name = match[0]
        return f"{values[name]} ({name})" if name in values else name

    return _LIMIT_NAME.sub(shown, text)


def self_contained(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with each "#/$defs/..." reference replaced by its definition: the /predict
    form's OpenAPI and the demo page read each option's schema alone, where such a reference
    (a Florence region, a mask prompt) resolves to nothing. Options models are not recursive."""
    definitions = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        reference = node.get("$ref", "")
        if reference.startswith("#/$defs/"):
            rest = {key: value for key, value in node.items() if key != "$ref"}
            return inline({**definitions[reference.removeprefix("#/$defs/")], **rest})
        return {key: inline(value) for key, value in node.items() if key != "$defs"}

    return inline(schema)


def default_limits(task: type[Task]) -> dict[str, Any]:
    """A task's limits at their defaults (what the README documents), whatever the environment."""
    return {name: info.default for name, info in task.Limits.model_fields.items()} | dict(
        task.limit_defaults
    )


class Task:
    """A loaded model behind one task. Subclasses fill in the contract described above."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type[TaskOptions]]
    Limits: ClassVar[type[TaskLimits]] = TaskLimits
    # This task's defaults for limits it shares with others, where the environment sets none.
    limit_defaults: ClassVar[Mapping[str, Any]] = {}
    # Shown in cold-start errors and the README's architecture table.
    architectures_doc: ClassVar[str]
    # The RunPod Hub listing (docs.py renders .runpod/hub.json): the TASK menu's label, and
    # (preset name, MODEL_NAME) pairs of checkpoints worth one click.
    hub_label: ClassVar[str]
    hub_presets: ClassVar[tuple[tuple[str, str], ...]] = ()
    # A job's "input" and the "results" it gets, for the README (docs.py renders them).
    example_input: ClassVar[dict]
    example_output: ClassVar[list]

    source: ModelSource
    limits: TaskLimits
    # The image processor (set by tasks that have one): its target size bounds decoding.
    image_processor: Any = None

    def options_schema(self) -> dict[str, Any]:
        """The JSON schema of `Options` with the limits in force written into the descriptions:
        what the /predict form, the OpenAPI document and the demo page show."""
        schema = self_contained(self.Options.model_json_schema())
        values = self.limits.model_dump()
        for field_schema in schema.get("properties", {}).values():
            if "description" in field_schema:
                field_schema["description"] = with_limit_values(field_schema["description"], values)
        return schema

    def input_size(self) -> dict | None:
        """The image processor's target `size` ({"shortest_edge": 224}, {"height": ..}, ...)."""
        size = getattr(self.image_processor, "size", None)
        return dict(size) if size else None

    def decode_target(self, options: Any) -> dict | None:
        """The size an image must keep when decoded (JPEG draft); the model's input size unless
        an option needs more of the image (e.g. a heatmap drawn over it)."""
        return self.input_size()

    @classmethod
    def serves(cls, checkpoint: Checkpoint) -> bool:
        raise NotImplementedError

    @classmethod
    def load(cls, source: ModelSource, checkpoint: Checkpoint, limits: Any) -> Task:
        raise NotImplementedError

    def check(self, options: Any) -> Any:
        """Bounds that depend on limits or the model; raises JobError. Returns the options."""
        return options

    def job_items(self, sources: Sequence[str | bytes], options: Any) -> list[JobItem]:
        """The job's items: one per image with the job's options, unless overridden; raises
        JobError when the job's per-item values do not fit its images."""
        return [JobItem(options, images=(source,)) for source in sources]

    def warmup_options(self) -> Any:
        """Options for the cold-start warm-up batch (tasks with required options override it)."""
        return self.check(self.Options())

    def batch_key(self, item: Prepared, options: Any) -> Hashable:
        """Items may share a forward pass only when their keys are equal."""
        return item.kind

    def prepare(self, image: Image.Image, options: Any) -> Prepared:
        raise NotImplementedError

    def prepare_together(self, images: list[Image.Image], options: Any) -> Prepared:
        """An item of several images (a `job_items` of this task made one)."""
        raise NotImplementedError

    def prepare_text(self, text: str, options: Any) -> Prepared:
        """A text item (a `job_items` of this task made one); its result is in "texts"."""
        raise NotImplementedError

    def collate(self, items: Sequence[Prepared], options: Sequence[Any]) -> Any:
        """The batch `forward` takes; the items themselves unless overridden."""
        return items

    def forward(self, batch: Any, options: Sequence[Any]) -> Any:
        raise NotImplementedError

    def split(self, raw: Any, items: Sequence[Prepared], options: Sequence[Any]) -> list[Any]:
        """One output per item from the batch's raw output; nothing to do unless overridden."""
        return raw

    def predict(self, items: Sequence[Prepared], options: Sequence[Any]) -> list[Any]:
        """The batch's stages on the calling thread (warm-up, fitness check, benchmarks)."""
        return self.split(self.forward(self.collate(items, options), options), items, options)

    def result_memory(self, output: Any, meta: dict[str, Any], options: Any) -> int:
        """Peak bytes `encode` holds for this output (dense outputs made at the photo's size);
        the worker reserves them from the image memory budget first."""
        return 0

    def encode(self, output: Any, meta: dict[str, Any], options: Any) -> dict:
        raise NotImplementedError


def load_weights(
    source: ModelSource,
    auto_class: Any,
    task: str,
    what: str,
    *,
    tolerate: Callable[[str], bool] = lambda key: False,
    **kwargs: Any,
) -> tuple[Any, set[str]]:
    """`from_pretrained` that refuses a checkpoint whose weights for `task` are missing.

    transformers fills missing weights with random values and only logs it; a worker that served
    them would answer every job with confident nonsense. Returns the model and the missing keys
    the task tolerates (e.g. an unused pooler).
    """
    model, info = source.load(
        auto_class.from_pretrained, dtype=source.dtype, output_loading_info=True, **kwargs
    )
    missing = set(info.get("missing_keys", ())) | {
        key[0] if isinstance(key, tuple) else key for key in info.get("mismatched_keys", ())
    }
    fatal = {key for key in missing if not tolerate(key)}
    if fatal:
        raise MissingWeightsError(source.name, task, what, fatal)
    return model, missing


def prepare_model(model: Any, source: ModelSource) -> Any:
    """On the device, in eval mode, compiled when TORCH_COMPILE asks for it."""
    model = model.to(source.device).eval()
    if source.compile:
        model.compile()  # in place; the first batch of each shape pays the compile
    return model


def pixel_inputs(processor: Any, image: Image.Image) -> dict[str, torch.Tensor]:
    """The processor's pixel tensor for one image, shape (channels, height, width)."""
    return {"pixel_values": processor(images=[image], return_tensors="pt").pixel_values[0]}


def stack_on_device(
    tensors: Sequence[torch.Tensor], source: ModelSource, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """One batch tensor on the model's device (see on_device)."""
    return on_device(torch.stack(list(tensors)), source, dtype)


def on_device(
    tensor: torch.Tensor, source: ModelSource, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`tensor` on the model's device; pinned host memory lets the copy overlap on CUDA.

    `dtype` defaults to the model's for floating point (pixels) and keeps integers (token ids).
    """
    if source.device.type == "cuda":
        tensor = tensor.pin_memory()
    target = dtype or (source.dtype if tensor.is_floating_point() else tensor.dtype)
    return tensor.to(source.device, dtype=target, non_blocking=True)


def stack_pixels(items: Sequence[Prepared], source: ModelSource) -> torch.Tensor:
    return stack_on_device([item.inputs["pixel_values"] for item in items], source)


def pixel_batch(items: Sequence[Prepared], source: ModelSource) -> Batch:
    """A `collate` for tasks whose model takes the items' pixels alone."""
    return Batch(items, {"pixel_values": stack_pixels(items, source)})


def pixel_box(corners: Iterable[Any]) -> dict[str, float]:
    """(xmin, ymin, xmax, ymax) in the photo's pixels as results give boxes: two decimals."""
    rounded = (round(float(value), 2) for value in corners)
    return dict(zip(("xmin", "ymin", "xmax", "ymax"), rounded, strict=True))


def features_of(output: Any) -> torch.Tensor:
    """`get_image_features` returns a tensor in transformers 4 and a model output in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
