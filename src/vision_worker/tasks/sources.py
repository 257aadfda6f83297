"""Where MODEL_NAME's files come from, in a fixed order, so a model on disk never touches the Hub.

1. a local directory (`save_pretrained` output);
2. RunPod's cached models: the platform mounts Hub snapshots at
   `RUNPOD_MODEL_CACHE_DIR/models--{org}--{name}/snapshots/{hash}`, `refs/{revision}` naming one;
3. the Hugging Face cache under HF_HOME: baked into the image by builder/download_model.py, or on
   a network volume (HF_HOME=/runpod-volume/...);
4. the Hub.
The first three load from a directory, offline; the log line says which one won.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .base import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    location: str  # a directory, or the Hub id itself
    origin: str  # which of the four places, for the log

    @property
    def on_disk(self) -> bool:
        return self.origin != "Hugging Face Hub"


def resolve_model(name: str, revision: str | None, runpod_cache: str) -> ResolvedModel:
    """The first place in the documented order that holds `name` at `revision`."""
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise ModelLoadError(
                f"{name} has no config.json: MODEL_NAME must be a directory save_pretrained "
                "wrote (config.json, the weights, the processor's files) or a Hub id"
            )
        found = ResolvedModel(name, "local directory")
    elif _looks_like_a_path(name):
        raise ModelLoadError(f"MODEL_NAME={name}: no such directory")
    elif (snapshot := _snapshot_in(Path(runpod_cache), name, revision)) is not None:
        found = ResolvedModel(str(snapshot), "RunPod cached model")
    elif (cached := _hugging_face_cache(name, revision)) is not None:
        found = ResolvedModel(cached, "Hugging Face cache (HF_HOME)")
    else:
        found = ResolvedModel(name, "Hugging Face Hub")
    log.info("model %s from the %s: %s", name, found.origin, found.location)
    return found


def _looks_like_a_path(name: str) -> bool:
    """Not a Hub id ("org/model"): a relative or absolute path, or one under an existing local
    folder ("models/tinyy" where ./models exists)."""
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    head = name.split("/")[0]
    return "/" in name and Path(head).is_dir()


def _snapshot_in(cache: Path, name: str, revision: str | None) -> Path | None:
    """A snapshot in a Hub cache layout: refs/<revision> names it, or <revision> is its hash."""
    if "/" not in name:
        return None
    repo = cache / f"models--{name.replace('/', '--')}"
    wanted = revision or "main"
    ref = repo / "refs" / wanted
    snapshot_id = ref.read_text().strip() if ref.is_file() else wanted
    snapshot = repo / "snapshots" / snapshot_id
    return snapshot if (snapshot / "config.json").is_file() else None


def _hugging_face_cache(name: str, revision: str | None) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # read at call time: HF_HOME may be set after huggingface_hub was imported
        path = snapshot_download(
            name, revision=revision, local_files_only=True, cache_dir=hugging_face_cache_dir()
        )
    except (LocalEntryNotFoundError, ValueError, OSError):  # ValueError: not a Hub id at all
        return None
    return path if (Path(path) / "config.json").is_file() else None


def hugging_face_cache_dir() -> Path:
    """HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub (huggingface_hub's order)."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache)
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
