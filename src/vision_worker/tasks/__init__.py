"""The task registry. Adding a task is adding its module and one entry in TASKS.

TASKS is in priority order: with TASK unset, a checkpoint serves the first task that `serves` it,
so a checkpoint saved with a trained head (a captioner, a classifier) serves that head, a
CLIP/SigLIP pair defaults to zero-shot, and a bare backbone to embeddings.
"""

from __future__ import annotations

import torch
import transformers
from pydantic import ValidationError
from transformers import AutoConfig

from ..config import ConfigError, Settings, TaskLimits
from ..device import resolve_device, resolve_dtype
from .ask import AskTask
from .base import (
    Checkpoint,
    JobItem,
    MissingWeightsError,
    ModelLoadError,
    ModelSource,
    Task,
    TaskOptions,
)
from .caption import CaptionTask
from .classify import ClassifyTask
from .depth import DepthTask
from .detect import DetectTask
from .embed import EmbedTask
from .florence import FlorenceTask
from .mask import MaskTask
from .ocr import OcrTask
from .segment import SegmentTask
from .sources import resolve_model
from .upscale import UpscaleTask
from .zero_shot import ZeroShotTask
from .zero_shot_detect import ZeroShotDetectTask

# In priority order (see the module docstring).
_REGISTERED = (
    # Before caption and ask, which would take Donut (a VisionEncoderDecoderModel) and
    # GOT-OCR2 (an image-text-to-text model) for captions and questions.
    OcrTask,
    CaptionTask,
    # Before ask, which claims every image-text-to-text architecture, Florence-2 included.
    FlorenceTask,
    AskTask,
    ClassifyTask,
    DetectTask,
    SegmentTask,
    DepthTask,
    UpscaleTask,
    MaskTask,
    ZeroShotDetectTask,
    ZeroShotTask,
    EmbedTask,
)
TASKS: dict[str, type[Task]] = {task.name: task for task in _REGISTERED}

__all__ = [
    "TASKS",
    "Checkpoint",
    "JobItem",
    "ModelLoadError",
    "ModelSource",
    "Task",
    "TaskOptions",
    "load_task",
    "tasks_serving",
]


def load_task(settings: Settings) -> Task:
    """Load MODEL_NAME for its task (from the checkpoint unless TASK names one)."""
    # Progress bars and per-call advice would flood the worker's log on every cold start.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if settings.TASK and settings.TASK not in TASKS:
        raise ModelLoadError(f"TASK={settings.TASK} is not a task; known tasks: {', '.join(TASKS)}")
    try:
        device = resolve_device(settings.DEVICE)
    except (RuntimeError, ValueError) as error:
        raise ModelLoadError(f"DEVICE={settings.DEVICE}: {error}") from None
    if device.type == "cuda":
        # Vision inputs have fixed shapes after preprocessing, so cuDNN's one-time autotuning
        # per shape pays for itself from the second batch on.
        torch.backends.cudnn.benchmark = True
    model = resolve_model(
        settings.MODEL_NAME, settings.MODEL_REVISION, settings.RUNPOD_MODEL_CACHE_DIR
    )
    processor = (
        settings.PROCESSOR_NAME
        and resolve_model(settings.PROCESSOR_NAME, None, settings.RUNPOD_MODEL_CACHE_DIR).location
    )
    source = ModelSource(
        model.location,
        None if model.on_disk else settings.MODEL_REVISION,
        device,
        resolve_dtype(settings.DTYPE, device),
        processor or None,
        compile=settings.TORCH_COMPILE,
    )
    checkpoint = Checkpoint.from_config(
        settings.MODEL_NAME, source.load(AutoConfig.from_pretrained)
    )
    task_cls = choose_task(checkpoint, settings.TASK)
    try:
        return task_cls.load(source, checkpoint, limits_of(task_cls, settings))
    except MissingWeightsError as error:
        others = [name for name in tasks_serving(checkpoint) if name != task_cls.name]
        advice = (
            f"it serves {' and '.join(others)}: set TASK={others[0]}"
            if others
            else "no task can serve it as saved"
        )
        raise ModelLoadError(f"{error}; {advice}") from None


def limits_of(task: type[Task], settings: Settings) -> TaskLimits:
    """The task's own limits out of the validated settings (the task sees nothing else), with
    the task's own defaults where the environment set none."""
    values = {name: getattr(settings, name) for name in task.Limits.model_fields}
    own = {k: v for k, v in task.limit_defaults.items() if k not in settings.model_fields_set}
    try:
        return task.Limits.model_validate(values | own)
    except ValidationError as error:
        raise ConfigError(
            f"{task.name}'s own defaults ({', '.join(f'{k}={v}' for k, v in own.items())}) "
            f"do not fit the environment's settings: set them too ({error.errors()[0]['msg']})"
        ) from None


def tasks_serving(checkpoint: Checkpoint) -> list[str]:
    """The tasks this checkpoint can serve, in priority order (the first is the default)."""
    return [name for name, task in TASKS.items() if task.serves(checkpoint)]


def choose_task(checkpoint: Checkpoint, requested: str = "") -> type[Task]:
    candidates = tasks_serving(checkpoint)
    described = (
        f"{checkpoint.name} ({', '.join(checkpoint.architectures) or checkpoint.model_type})"
    )
    if requested:
        if requested in candidates:
            return TASKS[requested]
        serves = f"it serves {', '.join(candidates)}" if candidates else "it fits no task"
        raise ModelLoadError(f"TASK={requested} does not fit {described}; {serves}")
    if not candidates:
        raise ModelLoadError(
            f"{described} fits no supported task. Supported: "
            + "; ".join(f"{name}: {task.architectures_doc}" for name, task in TASKS.items())
        )
    return TASKS[candidates[0]]
