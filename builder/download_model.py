"""Bake a model into the Docker image at build time: only the files inference needs.

    python builder/download_model.py nlpconnect/vit-gpt2-image-captioning [--revision REV]

Downloads into the Hugging Face cache (HF_HOME), so at run time the worker loads the same Hub id
with HF_HUB_OFFLINE=1 and cold start never touches the network. A local directory (a fine-tuned
checkpoint that a derived Dockerfile COPYs in) is checked for config and weights instead.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

# Configs, processor and tokenizer files, and weights; never training state, ONNX/TF/Flax
# exports, or sample images, which can triple the image size.
INFERENCE_FILES = (
    "*.json",
    "*.txt",  # vocab / merges
    "*.model",  # sentencepiece
    "*.tiktoken",
    "*.py",  # custom code of trust_remote_code repos (never executed unless enabled)
)
SAFETENSORS = ("*.safetensors", "*.safetensors.index.json")
PYTORCH_BIN = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
REQUIRED_FILES = ("config.json",)


def inference_patterns(repo_files: Iterable[str]) -> list[str]:
    """File patterns to fetch: safetensors weights when the repo has them, else pytorch .bin."""
    files = list(repo_files)
    weights = SAFETENSORS if _matches_any(files, SAFETENSORS) else PYTORCH_BIN
    if not _matches_any(files, weights):
        raise SystemExit(f"no safetensors or pytorch weights among {len(files)} repository files")
    return [*INFERENCE_FILES, *weights]


def check_local_model(path: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    weights = [p for p in path.iterdir() if _matches_any([p.name], SAFETENSORS + PYTORCH_BIN)]
    if missing or not weights:
        raise SystemExit(
            f"{path} is not a model saved with save_pretrained: missing "
            f"{', '.join(missing) or 'weights (*.safetensors or pytorch_model.bin)'}"
        )


def bake(
    model_name: str,
    revision: str | None,
    *,
    list_files: Callable[..., list[str]] | None = None,
    download: Callable[..., str] | None = None,
) -> str:
    """Fetch what inference needs into the HF cache, or check a local directory; return its path."""
    local = Path(model_name)
    if local.is_dir():
        check_local_model(local)
        return str(local)
    if list_files is None or download is None:
        from huggingface_hub import list_repo_files, snapshot_download

        list_files, download = list_files or list_repo_files, download or snapshot_download
    patterns = inference_patterns(list_files(model_name, revision=revision))
    return download(model_name, revision=revision, allow_patterns=patterns)


def _matches_any(names: Iterable[str], patterns: Iterable[str]) -> bool:
    patterns = tuple(patterns)
    return any(fnmatch.fnmatch(name.rsplit("/", 1)[-1], p) for name in names for p in patterns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_name", help="Hugging Face Hub id or a local directory")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (Hub only)")
    args = parser.parse_args(argv)
    if not args.model_name:
        print("no MODEL_NAME given: nothing baked; the model loads at cold start instead")
        return 0
    path = bake(args.model_name, args.revision or None)
    print(f"baked {args.model_name} ({args.revision or 'default revision'}) at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
