"""Dense prediction: depth (Depth Anything, DPT), segmentation (SegFormer, Mask2Former,
OneFormer, DETR panoptic), Swin2SR and SAM / SAM-HQ / SAM 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    ResNetConfig,
)

from .common import (
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

# Depth Anything's and DPT's processor: ImageNet statistics, bicubic, sides kept to a multiple.
_DEPTH_PROCESSOR = dict(
    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=3
)


def build_depth_anything(out: Path, full: bool) -> None:
    """Depth Anything (V2 small shape): a DINOv2 backbone, a DPT neck and a relative-depth head;
    its processor keeps the aspect ratio (sides a multiple of 14), so photo shapes differ."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        **sized(
            full,
            dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64),
            dict(
                hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536
            ),
        ),
        image_size=518 if full else 56,
        patch_size=14,
        out_features=["stage3", "stage6", "stage9", "stage12"]
        if full
        else ["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    head = sized(
        full,
        dict(
            fusion_hidden_size=16,
            neck_hidden_sizes=[8, 16, 32, 32],
            reassemble_hidden_size=32,
            head_hidden_size=8,
        ),
        dict(
            fusion_hidden_size=64,
            neck_hidden_sizes=[48, 96, 192, 384],
            reassemble_hidden_size=384,
            head_hidden_size=32,
        ),
    )
    model = DepthAnythingForDepthEstimation(
        DepthAnythingConfig(backbone_config=backbone, patch_size=14, **head)
    )
    side = 518 if full else 56
    processor = processor_class("DPTImageProcessor")(
        size={"height": side, "width": side},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        **_DEPTH_PROCESSOR,
    )
    save(out, model, None, processor)


def build_dpt(out: Path, full: bool) -> None:
    """DPT (ViT-based, not hybrid) with a depth head at a fixed square input."""
    from transformers import DPTConfig, DPTForDepthEstimation

    vision = vision_config(full, image_size=384)
    if not full:
        vision["num_hidden_layers"] = 4  # the neck reads four layers
    config = DPTConfig(
        **vision,
        backbone_out_indices=[2, 5, 8, 11] if full else [0, 1, 2, 3],
        neck_hidden_sizes=[96, 192, 384, 768] if full else [8, 16, 32, 32],
        fusion_hidden_size=256 if full else 16,
        is_hybrid=False,
    )
    side = vision["image_size"]
    processor = processor_class("DPTImageProcessor")(
        size={"height": side, "width": side}, **_DEPTH_PROCESSOR
    )
    save(out, DPTForDepthEstimation(config), None, processor)


def build_segformer(out: Path, full: bool) -> None:
    """SegFormer (B0 shape at full size): a semantic head over ten labels at a fixed input."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    dims = sized(
        full,
        dict(
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[8, 16],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
            decoder_hidden_size=16,
            initializer_range=TINY_INIT,
        ),
        dict(hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=256),
    )
    model = SegformerForSemanticSegmentation(SegformerConfig(**dims, **label_config()))
    side = 512 if full else 64
    processor = processor_class("SegformerImageProcessor")(size={"height": side, "width": side})
    save(out, model, None, processor)


def build_mask2former(out: Path, full: bool) -> None:
    """Mask2Former over a Swin backbone (Swin-T at full size): queries, each a class and a mask;
    the processor keeps the aspect ratio, so photo shapes differ."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = sized(
        full,
        dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4),
        dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    )
    backbone = SwinConfig(
        **swin,
        image_size=384 if full else 64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    decoder = sized(
        full,
        dict(
            feature_size=32,
            mask_feature_size=32,
            hidden_dim=32,
            encoder_feedforward_dim=32,
            dim_feedforward=32,
            encoder_layers=1,
            decoder_layers=2,
            num_attention_heads=2,
            num_queries=10,
        ),
        dict(num_queries=100),
    )
    model = Mask2FormerForUniversalSegmentation(
        Mask2FormerConfig(backbone_config=backbone, **decoder, **label_config())
    )
    if not full:
        with torch.no_grad():  # queries apart and confident, so they claim different regions
            model.model.transformer_module.queries_features.weight.normal_(0, 2.0)
            model.class_predictor.weight.normal_(0, 1.0)
            for name, weight in model.named_parameters():
                if "mask_embedder" in name and name.endswith("weight"):
                    weight.normal_(0, 0.5)  # masks of several queries, not one everywhere
    size = (
        {"shortest_edge": 384, "longest_edge": 1536}
        if full
        else {"shortest_edge": 64, "longest_edge": 128}
    )
    processor = processor_class("Mask2FormerImageProcessor")(size=size, size_divisor=32)
    save(out, model, None, processor)


def build_oneformer(out: Path, full: bool) -> None:
    """OneFormer over a Swin backbone (Swin-T at full size): Mask2Former-like queries
    conditioned on a task token ("the task is panoptic"), so its processor has a CLIP tokenizer;
    its class list is a JSON file beside the processor (the Hub's checkpoints name
    shi-labs/oneformer_demo, a dataset the processor downloads at load)."""
    from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, SwinConfig

    swin = sized(
        full,
        dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4),
        dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    )
    stages = ["stage1", "stage2", "stage3", "stage4"]
    backbone = SwinConfig(**swin, image_size=384 if full else 64, out_features=stages)
    decoder = sized(
        full,
        dict(
            num_queries=10,
            hidden_dim=32,
            conv_dim=32,
            mask_dim=32,
            encoder_feedforward_dim=32,
            dim_feedforward=32,
            encoder_layers=1,
            decoder_layers=2,
            num_attention_heads=2,
            query_dec_layers=1,
            text_encoder_width=32,
            text_encoder_num_layers=1,
            text_encoder_proj_layers=1,
            text_encoder_n_ctx=4,
        ),
        dict(num_queries=150),
    )
    model = OneFormerForUniversalSegmentation(
        OneFormerConfig(backbone_config=backbone, **decoder, **label_config())
    )
    if not full:
        with torch.no_grad():  # classes and masks spread, so queries claim different regions
            for name, weight in model.named_parameters():
                if name.endswith("weight") and ("class_embed" in name or "mask_embed" in name):
                    weight.normal_(0, 1.0)
    out.mkdir(parents=True, exist_ok=True)
    classes = {str(i): {"name": name, "isthing": int(i % 2 == 0)} for i, name in enumerate(LABELS)}
    (out / "class_info.json").write_text(json.dumps(classes))
    size = (
        {"shortest_edge": 512, "longest_edge": 2048}
        if full
        else {"shortest_edge": 64, "longest_edge": 128}
    )
    image_processor = processor_class("OneFormerImageProcessor")(
        size=size, class_info_file="class_info.json", repo_path=str(out), num_text=4
    )
    from transformers import OneFormerProcessor

    processor = OneFormerProcessor(image_processor=image_processor, tokenizer=clip_tokenizer())
    save(out, model, None, processor)


def build_detr_panoptic(out: Path, full: bool) -> None:
    """DETR for segmentation (facebook/detr-resnet-50-panoptic's shape at full size): the
    detector plus a mask head over four backbone stages; panoptic by default."""
    from transformers import DetrConfig, DetrForSegmentation

    backbone = ResNetConfig(
        **sized(
            full,
            dict(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1]),
            dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3]),
        ),
        layer_type="basic" if not full else "bottleneck",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    transformer = sized(
        full,
        # The mask head takes d_model + heads channels in groups of 8, down to d_model / 16.
        dict(
            d_model=128,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=8,
            decoder_attention_heads=8,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_queries=10,
            init_std=TINY_INIT / 10,
        ),
        dict(num_queries=100),
    )
    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        **transformer,
        **label_config(),
    )
    model = DetrForSegmentation(config)
    if not full:
        with torch.no_grad():  # queries apart and confident, so they claim different regions
            model.detr.model.query_position_embeddings.weight.normal_(0, 1.0)
            model.detr.class_labels_classifier.weight.normal_(0, 1.0)
    size = (
        {"shortest_edge": 800, "longest_edge": 1333}
        if full
        else {"shortest_edge": 64, "longest_edge": 96}
    )
    processor = processor_class("DetrImageProcessor")(size=size, format="coco_panoptic")
    save(out, model, None, processor)


def build_swin2sr(out: Path, full: bool) -> None:
    """Swin2SR x2 (classical, pixel-shuffle upsampler; caidas/swin2SR-classical-sr-x2-64 at
    full size): every photo keeps its size, padded to a multiple of the window."""
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution

    dims = sized(
        full,
        dict(embed_dim=16, depths=[2], num_heads=[2], window_size=4, image_size=32),
        dict(embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, window_size=8, image_size=64),
    )
    model = Swin2SRForImageSuperResolution(
        Swin2SRConfig(**dims, upscale=2, upsampler="pixelshuffle", patch_size=1)
    )
    processor = processor_class("Swin2SRImageProcessor")(size_divisor=dims["window_size"])
    save(out, model, None, processor)


def build_sam(out: Path, full: bool) -> None:
    """SAM (ViT-B at full size, 1024 px): an image encoder, a prompt encoder and a mask decoder;
    every photo is resized to the longest edge and padded square."""
    from transformers import SamConfig, SamModel, SamProcessor

    config = SamConfig() if full else SamConfig(**_tiny_sam_parts())  # defaults: ViT-B
    save(out, SamModel(config), None, SamProcessor(image_processor=_sam_processor(full)))


# The tiny SAM's input side (the full one's is 1024).
_TINY_SAM_SIDE = 64


def _tiny_sam_parts(**decoder: Any) -> dict:
    """The three sub-configs of a tiny SAM (SAM-HQ's decoder also takes the ViT's width)."""
    side = _TINY_SAM_SIDE
    vision = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=side,
        patch_size=8,
        output_channels=16,
        mlp_dim=64,
        global_attn_indexes=[1],
        window_size=4,
        num_pos_feats=8,
    )
    return dict(
        vision_config=vision,
        prompt_encoder_config=dict(
            hidden_size=16, image_size=side, patch_size=8, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=32,
            iou_head_hidden_dim=16,
            **decoder,
        ),
    )


def _sam_processor(full: bool) -> Any:
    side = 1024 if full else _TINY_SAM_SIDE
    return processor_class("SamImageProcessor")(
        size={"longest_edge": side}, pad_size={"height": side, "width": side}
    )


def build_sam_hq(out: Path, full: bool) -> None:
    """SAM-HQ (syscv-community/sam-hq-vit-base's shape at full size): SAM with a high-quality
    output token that also reads the ViT's early features; SAM's processor."""
    from transformers import SamHQConfig, SamHQModel, SamHQProcessor

    config = SamHQConfig() if full else SamHQConfig(**_tiny_sam_parts(vit_dim=32))
    save(out, SamHQModel(config), None, SamHQProcessor(image_processor=_sam_processor(full)))


def build_sam2(out: Path, full: bool) -> None:
    """SAM 2 (the defaults, SAM 2.1 Hiera-T's shape, at full size): a Hiera image encoder with
    a feature pyramid, SAM's prompt encoder and mask decoder; photos resized to a square (its
    image processor exists only in the torchvision backend)."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    side = 1024 if full else 128
    if full:
        config = Sam2Config()
    else:
        hiera = Sam2HieraDetConfig(
            hidden_size=16,
            image_size=[side, side],
            # A global-attention block must not open a stage (its window would be pooled to 0).
            blocks_per_stage=[1, 1, 2, 1],
            embed_dim_per_stage=[16, 32, 64, 128],
            num_attention_heads_per_stage=[1, 1, 2, 2],
            window_size_per_stage=[4, 4, 4, 4],
            global_attention_blocks=[3],
            window_positional_embedding_background_size=[4, 4],
        )
        vision = Sam2VisionConfig(
            backbone_config=hiera,
            backbone_channel_list=[128, 64, 32, 16],
            backbone_feature_sizes=[[side // s, side // s] for s in (4, 8, 16)],
            fpn_hidden_size=32,
        )
        config = Sam2Config(
            vision_config=vision,
            prompt_encoder_config=dict(
                hidden_size=32, image_size=side, patch_size=16, mask_input_channels=4
            ),
            mask_decoder_config=dict(
                hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32
            ),
        )
    processor = Sam2Processor(
        image_processor=Sam2ImageProcessor(size={"height": side, "width": side})
    )
    save(out, Sam2Model(config), None, processor)


# This family's architectures, by the names `--arch` and the tests use.
BUILDERS: dict[str, Builder] = {
    "depth-anything": build_depth_anything,
    "dpt": build_dpt,
    "segformer": build_segformer,
    "mask2former": build_mask2former,
    "oneformer": build_oneformer,
    "detr-panoptic": build_detr_panoptic,
    "swin2sr": build_swin2sr,
    "sam": build_sam,
    "sam-hq": build_sam_hq,
    "sam2": build_sam2,
}
