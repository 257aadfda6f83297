"""Detectors: YOLOS, DETR, OWL-ViT / OWLv2, Grounding DINO and MM Grounding DINO."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import pre_tokenizers
from transformers import (
    ResNetConfig,
)

from .common import (
    CORPUS,
    LABELS,
    TINY_INIT,
    Builder,
    clip_tokenizer,
    label_config,
    processor_class,
    save,
    sized,
    vision_config,
)
from .towers import text_tower


def build_yolos(out: Path, full: bool) -> None:
    """A YOLOS detector (a ViT with detection tokens): no CNN backbone to build offline."""
    from transformers import YolosConfig, YolosForObjectDetection

    dims = vision_config(full)
    # Its position embeddings are interpolated from this (height, width) to each image's size.
    dims["image_size"] = [800, 1344] if full else [64, 96]
    model = YolosForObjectDetection(
        YolosConfig(**dims, num_detection_tokens=100 if full else 10, **label_config())
    )
    size = (
        {"shortest_edge": 512, "longest_edge": 864}
        if full
        else {"shortest_edge": 64, "longest_edge": 96}
    )
    save(out, model, None, processor_class("YolosImageProcessor")(size=size))


def build_detr(out: Path, full: bool) -> None:
    """DETR with a transformers ResNet backbone (no timm): a CNN, a transformer encoder-decoder
    over its features, and a mask over the padding that lets images of any size share a batch."""
    from transformers import DetrConfig, DetrForObjectDetection

    backbone = ResNetConfig(
        **sized(
            full,
            dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
            dict(
                embedding_size=64,
                hidden_sizes=[256, 512, 1024, 2048],
                depths=[3, 4, 6, 3],
                layer_type="bottleneck",
            ),
        ),
        out_features=["stage2"] if not full else ["stage4"],
    )
    transformer = sized(
        full,
        dict(
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_queries=10,
            init_std=TINY_INIT / 10,
        ),
        dict(
            d_model=256,
            encoder_layers=6,
            decoder_layers=6,
            encoder_attention_heads=8,
            decoder_attention_heads=8,
            encoder_ffn_dim=2048,
            decoder_ffn_dim=2048,
            num_queries=100,
        ),
    )
    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        **transformer,
        **label_config(),
    )
    size = (
        {"shortest_edge": 800, "longest_edge": 1333}
        if full
        else {"shortest_edge": 64, "longest_edge": 96}
    )
    model = DetrForObjectDetection(config)
    if not full:
        with torch.no_grad():  # queries initialised apart, so they find different boxes
            model.model.query_position_embeddings.weight.normal_(0, 1.0)
    save(out, model, None, processor_class("DetrImageProcessor")(size=size))


def _owl(out: Path, full: bool, version: str) -> None:
    """OWL-ViT (base patch32, 768 px) or OWLv2 (base patch16, 960 px): open-vocabulary detectors
    on a CLIP pair; their text tower has 16 positions."""
    import transformers

    tokenizer = clip_tokenizer()
    text = text_tower(
        full,
        len(tokenizer),
        16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    size = (768 if version == "OwlViT" else 960) if full else 32
    patch = (32 if version == "OwlViT" else 16) if full else 8
    vision = {**vision_config(full, size), "patch_size": patch}
    # The class head compares projected text with image features at the text width.
    config = getattr(transformers, f"{version}Config")(
        text_config=text, vision_config=vision, projection_dim=text["hidden_size"]
    )
    model = getattr(transformers, f"{version}ForObjectDetection")(config)
    if not full:
        # Heads initialised at unit scale saturate every score at 1.0 and collapse the boxes;
        # a tenth spreads scores over (0.4, 0.75), so rankings and thresholds mean something.
        with torch.no_grad():
            for weight in [*model.class_head.parameters(), *model.box_head.parameters()]:
                weight.mul_(0.1)
    image_processor = processor_class(f"{version}ImageProcessor")(
        size={"height": size, "width": size}
    )
    processor = getattr(transformers, f"{version}Processor")(
        image_processor=image_processor, tokenizer=tokenizer
    )
    processor.save_pretrained(out)
    save(out, model, None, None)


def build_owlvit(out: Path, full: bool) -> None:
    _owl(out, full, "OwlViT")


def build_owlv2(out: Path, full: bool) -> None:
    _owl(out, full, "Owlv2")


# bert-base-uncased's ids of the tokens Grounding DINO reads by id, whatever its tokenizer says:
# it splits the prompt into phrases at [CLS], [SEP], "." and "?" as 101, 102, 1012 and 1029.
_BERT_BASE_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


_BERT_BASE_IDS |= {".": 1012, "?": 1029}


def grounding_tokenizer() -> Any:
    """A BertTokenizer (uncased WordPiece, as grounding-dino-tiny's) over the corpus, the labels
    and every ASCII letter, digit and punctuation mark, with bert-base-uncased's ids where
    Grounding DINO expects them (`bert_tokenizer` numbers its specials from 0)."""
    import string

    from transformers import BertTokenizer

    split = pre_tokenizers.BertPreTokenizer()
    lines = [line.lower() for line in CORPUS + LABELS]
    words = sorted({word for line in lines for word, _ in split.pre_tokenize_str(line)})
    ascii_marks = string.ascii_lowercase + string.digits + string.punctuation
    marks = [c for c in ascii_marks if c not in ".?"]
    pieces = iter([*marks, *("##" + c for c in marks), *(w for w in words if len(w) > 1)])
    fixed = {index: token for token, index in _BERT_BASE_IDS.items()}
    vocab = [
        fixed.get(index) or (next(pieces, None) if index > 103 else None) or f"[unused{index}]"
        for index in range(max(fixed) + 1)
    ]
    vocab += list(pieces)
    return BertTokenizer(vocab={token: index for index, token in enumerate(vocab)})


def _grounding_dino(out: Path, full: bool, family: str) -> None:
    """Grounding DINO or MM Grounding DINO (IDEA-Research/grounding-dino-tiny's shape at full
    size: Swin-T, BERT-base, 900 queries, 800 px): a Swin backbone and a BERT text tower fused by
    deformable attention; each box is scored against each token of one prompt of all labels."""
    import transformers
    from transformers import BertConfig, GroundingDinoProcessor, SwinConfig

    tokenizer = grounding_tokenizer()
    swin = sized(
        full,
        dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4),
        dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    )
    backbone = SwinConfig(**swin, image_size=224 if full else 64, out_indices=[2, 3, 4])
    text = BertConfig(
        **sized(
            full,
            dict(
                vocab_size=len(tokenizer),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                initializer_range=TINY_INIT / 10,
            ),
            dict(vocab_size=30522),  # bert-base-uncased
        )
    )
    transformer = sized(
        full,
        dict(
            # 64 wide: the input projections' GroupNorm has 32 groups, which a 1x1 feature map
            # (a small photo's coarsest level) must fill with more than one value each.
            d_model=64,
            encoder_layers=1,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            encoder_n_points=2,
            decoder_n_points=2,
            num_queries=30,
            init_std=TINY_INIT / 10,
        ),
        {},  # the defaults are grounding-dino-tiny's: d_model 256, 6 + 6 layers, 900 queries
    )
    config = getattr(transformers, f"{family}Config")(
        backbone_config=backbone, text_config=text, **transformer
    )
    model = getattr(transformers, f"{family}ForObjectDetection")(config)
    if not full:
        with torch.no_grad():
            # The box heads' last layers start at zero (every box its anchor): random, so boxes
            # move with the image. Scores brought into (0.55, 0.95): Grounding DINO's raw dot
            # products saturate every one at 1.0, MM's prior bias holds every one at 0.01.
            for name, weight in model.named_parameters():
                if "bbox_embed" in name and ".layers.2." in name:
                    weight.normal_(0, 0.1)
                if family == "MMGroundingDino" and "class_embed" in name:
                    weight.zero_()
            if family == "GroundingDino":
                model.model.decoder.layer_norm.weight.mul_(0.1)
    size = (
        {"shortest_edge": 800, "longest_edge": 1333}
        if full
        else {"shortest_edge": 64, "longest_edge": 96}
    )
    image_processor = processor_class("GroundingDinoImageProcessor")(size=size)
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(out)
    save(out, model, None, None)


def build_grounding_dino(out: Path, full: bool) -> None:
    _grounding_dino(out, full, "GroundingDino")


def build_mm_grounding_dino(out: Path, full: bool) -> None:
    _grounding_dino(out, full, "MMGroundingDino")


# This family's architectures, by the names `--arch` and the tests use.
BUILDERS: dict[str, Builder] = {
    "yolos": build_yolos,
    "detr": build_detr,
    "owlvit": build_owlvit,
    "owlv2": build_owlv2,
    "grounding-dino": build_grounding_dino,
    "mm-grounding-dino": build_mm_grounding_dino,
}
