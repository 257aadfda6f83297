"""What a command line names, as a job carries it: image files, folders and URLs, and task
options as KEY=VALUE. Shared by the client and local runs (`python handler.py --image ...`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}


class InputError(ValueError):
    """A command-line input that cannot become a job (missing file, empty folder, bad option)."""


@dataclass(frozen=True)
class ImageSource:
    label: str  # what the caller named: a path or URL
    value: str  # what the job carries: base64 or the URL


def collect_sources(items: Iterable[str]) -> list[ImageSource]:
    """URLs as they are; files base64-encoded; folders walked for image files, sorted.

    Raises InputError naming the first path that does not exist or a folder with no images, so
    nothing is sent when the command line is wrong.
    """
    sources = []
    for item in items:
        if item.startswith(("http://", "https://")):
            sources.append(ImageSource(item, item))
            continue
        path = Path(item)
        if not path.exists():
            raise InputError(f"no such file or folder: {item}")
        files = (
            sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if path.is_dir()
            else [path]
        )
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise InputError(f"folder {item} has no image files ({suffixes})")
        for file in files:
            sources.append(ImageSource(str(file), base64.b64encode(file.read_bytes()).decode()))
    if not sources:
        raise InputError("no images given")
    return sources


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
    """KEY=VALUE pairs to job options; VALUE is read as JSON when it parses (3, true, ["a"])."""
    options: dict[str, Any] = {}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise InputError(f"an option is KEY=VALUE, got {text!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options
