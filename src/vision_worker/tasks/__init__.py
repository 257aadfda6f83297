"""One module per task. A task is found from the model's config, or named by TASK."""

from __future__ import annotations

import torch
import transformers
from transformers import AutoConfig

from ..config import Settings
from ..device import resolve_device, resolve_dtype
from .base import ModelLoadError, ModelSource, Task
from .caption import CaptionTask
from .classify import ClassifyTask

TASKS: dict[str, type[Task]] = {task.name: task for task in (CaptionTask, ClassifyTask)}

__all__ = ["TASKS", "ModelLoadError", "ModelSource", "Task", "load_task"]


def load_task(settings: Settings) -> Task:
    """Load MODEL_NAME for its task (inferred from its config unless TASK names one)."""
    # Progress bars and per-call advice would flood the worker's log on every cold start.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    device = resolve_device(settings.DEVICE)
    if device.type == "cuda":
        # Vision inputs have fixed shapes after preprocessing, so cuDNN's one-time autotuning
        # per shape pays for itself from the second batch on.
        torch.backends.cudnn.benchmark = True
    source = ModelSource(
        settings.MODEL_NAME, settings.MODEL_REVISION, device, resolve_dtype(settings.DTYPE, device)
    )
    model_type = source.load(AutoConfig.from_pretrained).model_type
    task_cls = _task_for(model_type, settings.TASK, settings.MODEL_NAME)
    return task_cls.load(source, settings)


def _task_for(model_type: str, requested: str, model_name: str) -> type[Task]:
    candidates = [t for t in TASKS.values() if t.supports(model_type)]
    if requested:
        chosen = TASKS[requested]
        if chosen in candidates:
            return chosen
        raise ModelLoadError(
            f"TASK={requested} does not fit model {model_name!r} (architecture {model_type!r}); "
            f"it supports: {_supported_list()}"
        )
    if not candidates:
        raise ModelLoadError(
            f"model {model_name!r} has architecture {model_type!r}, which fits no supported task. "
            f"Supported: {_supported_list()}"
        )
    return candidates[0]


def _supported_list() -> str:
    return (
        "caption: vision-encoder-decoder (e.g. ViT-GPT2), git, blip; "
        "classify: any image-classification model (resnet, vit, convnext, ...)"
    )
