"""What every task provides, and the one place models are fetched from a Hub id or a directory."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar
from urllib.parse import urlsplit

import torch
from PIL import Image

from ..config import Settings
from ..errors import JobError

T = TypeVar("T")


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the worker must not start."""


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from and where they go."""

    name: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype

    @property
    def is_local(self) -> bool:
        return Path(self.name).is_dir()

    def load(self, loader: Callable[..., T], **kwargs: Any) -> T:
        """Call a transformers `from_pretrained` on this source with a clear failure message."""
        if self.revision:
            kwargs["revision"] = self.revision
        if not self.is_local and not _hub_reachable():
            # Without this, huggingface_hub retries for ~30 s before saying it is offline.
            kwargs["local_files_only"] = True
        try:
            return loader(self.name, **kwargs)
        except (OSError, ValueError) as error:
            raise ModelLoadError(self._explain(error)) from error

    def _explain(self, error: Exception) -> str:
        if self.is_local:
            return f"cannot load model from directory {self.name}: {error}"
        if not _hub_reachable():
            return (
                f"model {self.name!r} is not in the local cache (HF_HOME="
                f"{os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the Hugging Face Hub "
                "is unreachable. Bake the weights into the image (builder/download_model.py) or "
                "set MODEL_NAME to a local directory saved with save_pretrained."
            )
        return f"cannot load model {self.name!r} (revision {self.revision or 'main'}): {error}"


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


class Task(Protocol):
    """A model behind one task. Tasks know nothing about RunPod; they see lists of images."""

    name: ClassVar[str]
    option_names: ClassVar[tuple[str, ...]]
    source: ModelSource

    @classmethod
    def supports(cls, model_type: str) -> bool: ...

    @classmethod
    def load(cls, source: ModelSource, settings: Settings) -> Task: ...

    def resolve_options(self, given: dict[str, int]) -> Any:
        """Defaults filled in and bounds checked; raises JobError."""

    def batch_key(self, options: Any) -> Hashable:
        """Images may share a forward pass only when their keys are equal."""

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image to model input (resize, normalise), on a CPU thread off the model's path."""

    def predict(self, pixels: Sequence[torch.Tensor], options: Any) -> list[Any]:
        """One forward pass over a batch of preprocessed images; one raw output each, in order."""

    def encode(self, output: Any, options: Any) -> dict:
        """A raw output to the JSON result of one image."""


def prepare_model(model: Any, source: ModelSource, settings: Settings) -> Any:
    """On the device, in eval mode, compiled when TORCH_COMPILE asks for it."""
    model = model.to(source.device).eval()
    if settings.TORCH_COMPILE:
        model.compile()  # in place; the first batch of each shape pays the compile
    return model


def preprocess_image(processor: Any, image: Image.Image) -> torch.Tensor:
    """The processor's pixel tensor for one image, shape (channels, height, width)."""
    return processor(images=[image], return_tensors="pt").pixel_values[0]


def stack_on_device(pixels: Sequence[torch.Tensor], source: ModelSource) -> torch.Tensor:
    """One batch tensor on the model's device; pinned host memory lets the copy overlap on CUDA."""
    batch = torch.stack(list(pixels))
    if source.device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(source.device, dtype=source.dtype, non_blocking=True)


def check_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise JobError(f'"{name}" must be between {low} and {high}, got {value}')
    return value
