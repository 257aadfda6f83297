"""Classifiers and embedding towers: ResNet, ViT, CLIP, SigLIP (2), DINOv2, a ViT backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from .common import (
    LABELS,
    TINY_INIT,
    Builder,
    bert_tokenizer,
    clip_tokenizer,
    label_config,
    processor_class,
    save,
    sized,
    vision_config,
)


def build_resnet(out: Path, full: bool) -> None:
    dims = sized(
        full,
        dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
        dict(
            embedding_size=64,
            hidden_sizes=[256, 512, 1024, 2048],
            depths=[3, 4, 6, 3],
            layer_type="bottleneck",
        ),
    )
    model = ResNetForImageClassification(
        ResNetConfig(num_labels=len(LABELS), **dims, **label_config())
    )
    size = 224 if full else 32
    processor = processor_class("ConvNextImageProcessor")(
        size={"shortest_edge": size}, crop_pct=224 / 256
    )
    save(out, model, None, processor)


def build_vit(out: Path, full: bool) -> None:
    model = ViTForImageClassification(ViTConfig(**vision_config(full), **label_config()))
    size = 224 if full else 32
    save(
        out, model, None, processor_class("ViTImageProcessor")(size={"height": size, "width": size})
    )


def text_tower(full: bool, vocab_size: int, positions: int, **ids: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        max_position_embeddings=positions,
        **ids,
        **sized(
            full,
            dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                initializer_range=TINY_INIT,
            ),
            dict(
                hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048
            ),
        ),
    )


def build_clip(out: Path, full: bool) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer()
    text = text_tower(
        full,
        len(tokenizer),
        77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = {**vision_config(full), "patch_size": 8 if not full else 32}
    model = CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=512 if full else 16)
    )
    size = 224 if full else 32
    clip = processor_class("CLIPImageProcessor")
    image_processor = clip(size={"shortest_edge": size}, crop_size=size)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    save(out, model, None, None)


def _siglip_text_tower(full: bool, tokenizer: Any) -> dict:
    # SigLIP's pipeline pads every text to 64 tokens, so 64 positions.
    return text_tower(
        full,
        len(tokenizer),
        64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )


def build_siglip(out: Path, full: bool) -> None:
    from transformers import SiglipConfig, SiglipModel

    tokenizer = bert_tokenizer()
    text = _siglip_text_tower(full, tokenizer)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision_config(full)))
    size = 224 if full else 32
    processor = processor_class("SiglipImageProcessor")(size={"height": size, "width": size})
    save(out, model, tokenizer, processor)


def build_siglip2(out: Path, full: bool) -> None:
    from transformers import Siglip2Config, Siglip2Model

    tokenizer = bert_tokenizer()
    text = _siglip_text_tower(full, tokenizer)
    # SigLIP2 (NaFlex) keeps each image's aspect ratio and pads to a fixed number of patches.
    vision = {key: value for key, value in vision_config(full).items() if key != "image_size"}
    patches = 256 if full else 16
    model = Siglip2Model(
        Siglip2Config(text_config=text, vision_config={**vision, "num_patches": patches})
    )
    processor = processor_class("Siglip2ImageProcessor")(
        patch_size=vision["patch_size"], max_num_patches=patches
    )
    save(out, model, tokenizer, processor)


def build_dinov2(out: Path, full: bool) -> None:
    from transformers import Dinov2Config, Dinov2Model

    dims = vision_config(full)
    dims["patch_size"] = 14 if full else 8
    model = Dinov2Model(Dinov2Config(**dims))
    size = 224 if full else 32
    processor = processor_class("BitImageProcessor")(
        size={"shortest_edge": 256 if full else 40},
        crop_size={"height": size, "width": size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    save(out, model, None, processor)


def build_vit_backbone(out: Path, full: bool) -> None:
    """A headless ViT (ViTModel, with its pooler): serves embed, must refuse classify."""
    from transformers import ViTModel

    model = ViTModel(ViTConfig(**vision_config(full)))
    size = 224 if full else 32
    save(
        out, model, None, processor_class("ViTImageProcessor")(size={"height": size, "width": size})
    )


# This family's architectures, by the names `--arch` and the tests use.
BUILDERS: dict[str, Builder] = {
    "resnet": build_resnet,
    "vit": build_vit,
    "clip": build_clip,
    "siglip": build_siglip,
    "siglip2": build_siglip2,
    "dinov2": build_dinov2,
    "vit-backbone": build_vit_backbone,
}
