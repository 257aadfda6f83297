"""Build real model directories offline: random weights, a tokenizer trained here, save_pretrained.

They load through exactly the production path (`from_pretrained` on a directory), so tests and
smoke runs need no Hub. `--size full` keeps the real architecture dimensions (ViT-base + GPT-2,
ResNet-50, ...) for benchmarks with true compute costs; the weights are random either way.

    python -m vision_worker.dev.tiny_models models/tiny-vit-gpt2 --arch vit-gpt2
    MODEL_NAME=models/tiny-vit-gpt2 python handler.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .tiny import captioners, dense, detectors, ocr, towers, vlms
from .tiny.common import LABELS, Builder, processor_class

__all__ = ["BUILDERS", "LABELS", "build", "main", "processor_class"]

BUILDERS: dict[str, Builder] = {
    **captioners.BUILDERS,
    **towers.BUILDERS,
    **detectors.BUILDERS,
    **vlms.BUILDERS,
    **dense.BUILDERS,
    **ocr.BUILDERS,
}


def build(arch: str, out: str | Path, *, full: bool = False, seed: int = 0) -> Path:
    """Write a random-weight model of `arch` to `out` and return the directory."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Writing model shards" on every save
    # SigLIP's top-level config validates the default text config's token ids (for a 32,000
    # token vocabulary) before ours replaces it; the warning is about a config never used.
    transformers_logging.set_verbosity_error()
    torch.manual_seed(seed)
    path = Path(out)
    BUILDERS[arch](path, full)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="directory to write the model to")
    parser.add_argument("--arch", choices=sorted(BUILDERS), default="vit-gpt2")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build(args.arch, args.out, full=args.size == "full", seed=args.seed)
    print(f"wrote {args.size} {args.arch} model to {path}; run: {run_command(args.arch, path)}")


# What a first job on each task needs beyond images (test_input.json has images only).
_REQUIRED_OPTIONS = {
    "clip": """-o 'labels=["a cat", "a dog"]'""",
    "siglip": """-o 'labels=["a cat", "a dog"]'""",
    "siglip2": """-o 'labels=["a cat", "a dog"]'""",
    "owlvit": """-o 'labels=["a cat", "a remote"]'""",
    "owlv2": """-o 'labels=["a cat", "a remote"]'""",
    "grounding-dino": """-o 'labels=["a cat", "a remote"]'""",
    "mm-grounding-dino": """-o 'labels=["a cat", "a remote"]'""",
    "llava": """-o 'question="What is in the image?"'""",
    "llava-next": """-o 'question="What is in the image?"'""",
    "qwen2-vl": """-o 'question="What is in the image?"'""",
    "qwen2.5-vl": """-o 'question="What is in the image?"'""",
    "smolvlm": """-o 'question="What is in the image?"'""",
    "paligemma": """-o 'question="answer en what is in the image?"'""",
    "sam": """-o 'prompts=[{"points": [[100, 100]]}]'""",
}


def run_command(arch: str, path: Path) -> str:
    """A command that runs a first job on the model just written, as printed after a build."""
    if arch in _REQUIRED_OPTIONS:
        return f"MODEL_NAME={path} python handler.py --image examples/ {_REQUIRED_OPTIONS[arch]}"
    return f"MODEL_NAME={path} python handler.py"


if __name__ == "__main__":
    main()
