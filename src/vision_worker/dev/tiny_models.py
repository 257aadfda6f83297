"""Build real model directories offline: random weights, a tokenizer trained here, save_pretrained.

They load through exactly the production path (`from_pretrained` on a directory), so tests and
smoke runs need no Hub. `--size full` keeps the real architecture dimensions (ViT-base + GPT-2,
ResNet-50, ...) for benchmarks with true compute costs; the weights are random either way.

    python -m vision_worker.dev.tiny_models models/tiny-vit-gpt2 --arch vit-gpt2
    MODEL_NAME=models/tiny-vit-gpt2 python handler.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    GitConfig,
    GitForCausalLM,
    GPT2Config,
    PreTrainedTokenizerFast,
    ResNetConfig,
    ResNetForImageClassification,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTForImageClassification,
)

# Words the captioning tokenizer learns; random weights make any caption of them possible.
_CORPUS = [
    "a cat sitting on a couch next to a remote",
    "an astronaut in a white space suit holding a flag",
    "a cup of coffee on a saucer on a wooden table",
    "a rocket launching into a blue sky with smoke",
    "a red motorcycle parked on the side of a street",
    "two dogs playing with a ball in the grass",
    "a man riding a bike down a city road at night",
]
LABELS = [
    "tabby cat",
    "astronaut",
    "coffee mug",
    "space shuttle",
    "motor scooter",
    "golden retriever",
    "bicycle",
    "pizza",
    "sailboat",
    "teddy bear",
]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
GPT2_SPECIAL = "<|endoftext|>"
# Far wider than the usual 0.02: with near-zero weights every image gets the same caption, and
# tests that compare per-image with batched output need outputs that depend on the image.
TINY_INIT = 0.5


def processor_class(name: str) -> Any:
    """An image processor class: the torchvision-backed one where torchvision is installed, the
    PIL one otherwise (named directly, so transformers prints no fallback warning)."""
    import transformers

    return getattr(transformers, name if importlib.util.find_spec("torchvision") else name + "Pil")


def _train_tokenizer(
    specials: list[str], vocab_size: int, corpus: list[str] | None = None
) -> Tokenizer:
    """A WordPiece tokenizer over `corpus` (_CORPUS): the specials, every character (word-initial
    and "##" continuation) and every corpus word, in sorted order. Built rather than trained:
    tokenizers' WordPieceTrainer breaks ties in hash order, so each build had a different
    vocabulary, hence different random answers (a tiny VLM answered "" in 1 CI run of 3)."""
    from tokenizers import decoders

    whitespace = pre_tokenizers.Whitespace()
    lines = _CORPUS if corpus is None else corpus
    words = sorted({word for line in lines for word, _ in whitespace.pre_tokenize_str(line)})
    characters = sorted({character for word in words for character in word})
    pieces = characters + ["##" + c for c in characters] + [w for w in words if len(w) > 1]
    vocab = list(dict.fromkeys(specials + pieces))
    assert len(vocab) <= vocab_size, f"{len(vocab)} tokens exceed {vocab_size}"
    unk = specials[1] if len(specials) > 1 else specials[0]
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=unk))
    tokenizer.pre_tokenizer = whitespace
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def bert_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import processors

    trained = _train_tokenizer(BERT_SPECIALS, 200)
    # "[CLS] text [SEP]", as bert-base-uncased (GIT, BLIP) tokenizes.
    trained.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(t, trained.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=trained,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[DEC]",
    )


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer([GPT2_SPECIAL, "<unk>"], 200),
        bos_token=GPT2_SPECIAL,
        eos_token=GPT2_SPECIAL,
        pad_token=GPT2_SPECIAL,
        unk_token="<unk>",
    )


CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def clip_tokenizer() -> Any:
    """A CLIPTokenizer (BPE over bytes, "</w>" word ends) whose merges are learned here."""
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _learn_bpe_merges([s.lower() for s in _CORPUS + LABELS], 142)
    ordinary = [*alphabet, *(a + "</w>" for a in alphabet), *("".join(m) for m in merges)]
    # Special tokens last, as in CLIP's vocabulary: OWL-ViT reads a query whose first id is 0
    # as padding, and CLIP pools at the highest id when its config predates eos_token_id.
    tokens = list(dict.fromkeys([*ordinary, *CLIP_SPECIALS]))
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def _learn_bpe_merges(lines: list[str], count: int) -> list[tuple[str, str]]:
    """BPE merges over the lines' words, each word ending in "</w>" as CLIP's do: the most
    frequent adjacent pair is merged first, ties broken by the pair itself (tokenizers'
    BpeTrainer breaks them in hash order: every build learned different merges)."""
    import collections
    import itertools

    words = collections.Counter(word for line in lines for word in line.split())
    spelled = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, symbols in spelled.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += words[word]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in spelled.items():
            spelled[word] = _merge_pair(symbols, best)
    return merges


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def _dims(full: bool, tiny: dict, real: dict) -> dict:
    return real if full else tiny


def _vision(full: bool, image_size: int = 224) -> dict:
    return _dims(
        full,
        dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            initializer_range=TINY_INIT,
        ),
        dict(
            image_size=image_size,
            patch_size=16,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
        ),
    )


def build_vit_gpt2(out: Path, full: bool) -> None:
    tokenizer = gpt2_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(GPT2_SPECIAL)
    decoder = GPT2Config(
        vocab_size=50257 if full else len(tokenizer),
        bos_token_id=eos,
        eos_token_id=eos,
        add_cross_attention=True,
        **_dims(
            full,
            dict(n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=TINY_INIT),
            dict(n_positions=1024, n_embd=768, n_layer=12, n_head=12),
        ),
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(**_vision(full)), decoder
    )
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = eos
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = eos
    size = 224 if full else 32
    processor = processor_class("ViTImageProcessor")(size={"height": size, "width": size})
    _save(out, model, tokenizer, processor)


def build_trocr(out: Path, full: bool) -> None:
    """TrOCR: a vision encoder-decoder whose decoder reads text lines out of the image (OCR),
    served by caption as ViT-GPT2 is. Full size: TrOCR-base's decoder over a ViT-B/16 at 384 px."""
    from transformers import TrOCRConfig, TrOCRProcessor

    tokenizer = gpt2_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(GPT2_SPECIAL)
    decoder = TrOCRConfig(
        vocab_size=50265 if full else len(tokenizer),
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        decoder_start_token_id=eos,
        use_learned_position_embeddings=True,
        layernorm_embedding=True,
        **_dims(
            full,
            dict(
                d_model=32,
                decoder_layers=2,
                decoder_attention_heads=2,
                decoder_ffn_dim=64,
                max_position_embeddings=64,
                cross_attention_hidden_size=32,
                init_std=TINY_INIT,
            ),
            dict(
                d_model=1024,
                decoder_layers=12,
                decoder_attention_heads=16,
                decoder_ffn_dim=4096,
                max_position_embeddings=512,
                cross_attention_hidden_size=768,
            ),
        ),
    )
    size = 384 if full else 32
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(**_vision(full, size)), decoder
    )
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = eos
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = eos
    image_processor = processor_class("ViTImageProcessor")(size={"height": size, "width": size})
    TrOCRProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    _save(out, model, None, None)


# GOT-OCR2's prompt (its processor writes it: ChatML around "<img>" + image tokens and an
# "OCR: " query) and what OCR reads: its words, digits, a box's brackets, LaTeX and markdown.
GOT_OCR2_SPECIALS = [
    "<|endoftext|>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<imgpad>",
]
_OCR_CORPUS = [
    *_CORPUS,
    "system You should follow the instructions carefully and explain your answers in detail.",
    "user assistant OCR with format across multi pages upon the patch reference red green blue",
    "TOTAL Total Cash Change Price Qty Item Invoice Date No. Receipt Tax Subtotal",
    "0 1 2 3 4 5 6 7 8 9 [ ] ( ) , : ; . ! ? % $ & @ / \\ { } ^ _ = + - * # | ~ ' \"",
    "\\frac \\sum \\int \\begin \\end \\section \\title",
]


def build_got_ocr2(out: Path, full: bool) -> None:
    """GOT-OCR2 (stepfun-ai/GOT-OCR-2.0-hf at full size): a SAM-style ViT at 1024 px whose
    64x64 patch grid two strided convolutions bring to 256 image tokens, and a Qwen2 decoder.
    The tiny one keeps the 1024 px input and 256 tokens (the processor writes 256 per image
    whatever the model), with 16-wide layers; its tokenizer knows the prompt's words and
    special tokens, digits and punctuation, so a box or a color changes the prompt's tokens."""
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration, GotOcr2Processor

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(GOT_OCR2_SPECIALS, 400, _OCR_CORPUS),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
    # Whole tokens wherever they appear: the processor writes 256 "<imgpad>" with no space.
    tokenizer.add_special_tokens({"additional_special_tokens": GOT_OCR2_SPECIALS[2:]})
    ids = dict(
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = _dims(
        full,
        dict(
            hidden_size=16,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=32,
            global_attn_indexes=[],
            initializer_range=TINY_INIT,
        ),
        {},  # the defaults: ViT-B, 12 layers, global attention every third
    )
    text = _dims(
        full,
        dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            initializer_range=TINY_INIT,
        ),
        dict(
            vocab_size=151860,
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
        ),
    )
    side = 1024 if full else 512  # either way a 64x64 patch grid: 256 image tokens
    config = GotOcr2Config(
        vision_config=dict(image_size=side, patch_size=side // 64, **vision),
        text_config=dict(model_type="qwen2", tie_word_embeddings=True, **text, **ids),
        image_token_index=tokenizer.convert_tokens_to_ids("<imgpad>"),
        image_seq_length=256,
        **ids,
    )
    model = GotOcr2ForConditionalGeneration(config)
    model.generation_config.update(**ids)
    processor = GotOcr2Processor(
        image_processor=processor_class("GotOcr2ImageProcessor")(
            size={"height": side, "width": side}
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(out)
    _save(out, model, None, None)


# Donut's tokens: the task start token a fine-tuned checkpoint adds (CORD-v2 receipts), the
# fields it reads (each opened and closed: token2json nests them), DocVQA's question and
# answer, and <sep/> between a field's values.
DONUT_TASK = "<s_cord-v2>"
_DONUT_FIELDS = ["menu", "nm", "cnt", "price", "total", "total_price", "question", "answer"]
DONUT_SPECIALS = [
    "<s>",
    "<unk>",
    "<pad>",
    "</s>",
    "<sep/>",
    DONUT_TASK,
    *(tag for field in _DONUT_FIELDS for tag in (f"<s_{field}>", f"</s_{field}>")),
]


def build_donut(out: Path, full: bool) -> None:
    """Donut: a Swin encoder (DonutSwin) over the page and an MBart decoder that writes the
    document as field tokens, started by a task prompt (naver-clova-ix/donut-base's shape at
    full size: 2560x1920 pages, Swin-B with 10 px windows, a 4-layer 1024-wide decoder)."""
    from transformers import DonutProcessor, DonutSwinConfig, MBartConfig

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(DONUT_SPECIALS, 400, _OCR_CORPUS),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    # Added as Donut's training adds them: special, so each is one token anywhere.
    tokenizer.add_special_tokens({"additional_special_tokens": DONUT_SPECIALS[4:]})
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    height, width = (2560, 1920) if full else (128, 96)
    encoder = DonutSwinConfig(
        image_size=[height, width],
        patch_size=4,
        **_dims(
            full,
            dict(
                embed_dim=8,
                depths=[1, 1, 1, 1],
                num_heads=[1, 1, 2, 2],
                window_size=3,
                initializer_range=TINY_INIT,
            ),
            dict(embed_dim=128, depths=[2, 2, 14, 2], num_heads=[4, 8, 16, 32], window_size=10),
        ),
    )
    decoder = MBartConfig(
        is_decoder=True,
        add_cross_attention=True,
        scale_embedding=True,
        # MBart's default (2) is XLM-R's </s>; here it would force <pad>.
        forced_eos_token_id=tokenizer.eos_token_id,
        **ids,
        **_dims(
            full,
            dict(
                vocab_size=len(tokenizer),
                d_model=64,
                decoder_layers=2,
                decoder_attention_heads=2,
                decoder_ffn_dim=128,
                max_position_embeddings=128,
                init_std=TINY_INIT,
            ),
            dict(
                vocab_size=57525,
                d_model=1024,
                decoder_layers=4,
                decoder_attention_heads=16,
                decoder_ffn_dim=4096,
                max_position_embeddings=1536,
            ),
        ),
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.update(ids)
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.update(**ids)
    image_processor = processor_class("DonutImageProcessor")(
        size={"height": height, "width": width}, do_align_long_axis=False
    )
    DonutProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    _save(out, model, None, None)


def build_git(out: Path, full: bool) -> None:
    tokenizer = bert_tokenizer()
    ids = dict(
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text = _dims(
        full,
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=TINY_INIT,
        ),
        dict(
            hidden_size=768,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=1024,
        ),
    )
    config = GitConfig(
        vision_config=_vision(full), vocab_size=30522 if full else len(tokenizer), **text, **ids
    )
    model = GitForCausalLM(config)
    model.generation_config.update(**ids)
    size = 224 if full else 32
    processor = processor_class("CLIPImageProcessor")(size={"shortest_edge": size}, crop_size=size)
    _save(out, model, tokenizer, processor)


def build_blip(out: Path, full: bool) -> None:
    tokenizer = bert_tokenizer()
    text = dict(
        vocab_size=30524 if full else len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sep_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_dims(
            full,
            dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
                initializer_range=TINY_INIT,
            ),
            dict(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                intermediate_size=3072,
                max_position_embeddings=512,
            ),
        ),
    )
    size = 384 if full else 32
    config = BlipConfig(
        text_config=text, vision_config=_vision(full, size), projection_dim=32 if not full else 512
    )
    model = BlipForConditionalGeneration(config)
    model.generation_config.update(
        bos_token_id=text["bos_token_id"],
        eos_token_id=text["eos_token_id"],
        pad_token_id=text["pad_token_id"],
    )
    processor = processor_class("BlipImageProcessor")(size={"height": size, "width": size})
    _save(out, model, tokenizer, processor)


def _labels() -> dict:
    return {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}


def build_resnet(out: Path, full: bool) -> None:
    dims = _dims(
        full,
        dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
        dict(
            embedding_size=64,
            hidden_sizes=[256, 512, 1024, 2048],
            depths=[3, 4, 6, 3],
            layer_type="bottleneck",
        ),
    )
    model = ResNetForImageClassification(ResNetConfig(num_labels=len(LABELS), **dims, **_labels()))
    size = 224 if full else 32
    processor = processor_class("ConvNextImageProcessor")(
        size={"shortest_edge": size}, crop_pct=224 / 256
    )
    _save(out, model, None, processor)


def build_vit(out: Path, full: bool) -> None:
    model = ViTForImageClassification(ViTConfig(**_vision(full), **_labels()))
    size = 224 if full else 32
    _save(
        out, model, None, processor_class("ViTImageProcessor")(size={"height": size, "width": size})
    )


def _text_tower(full: bool, vocab_size: int, positions: int, **ids: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        max_position_embeddings=positions,
        **ids,
        **_dims(
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
    text = _text_tower(
        full,
        len(tokenizer),
        77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = {**_vision(full), "patch_size": 8 if not full else 32}
    model = CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=512 if full else 16)
    )
    size = 224 if full else 32
    clip = processor_class("CLIPImageProcessor")
    image_processor = clip(size={"shortest_edge": size}, crop_size=size)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    _save(out, model, None, None)


def _siglip_text_tower(full: bool, tokenizer: Any) -> dict:
    # SigLIP's pipeline pads every text to 64 tokens, so 64 positions.
    return _text_tower(
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
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=_vision(full)))
    size = 224 if full else 32
    processor = processor_class("SiglipImageProcessor")(size={"height": size, "width": size})
    _save(out, model, tokenizer, processor)


def build_siglip2(out: Path, full: bool) -> None:
    from transformers import Siglip2Config, Siglip2Model

    tokenizer = bert_tokenizer()
    text = _siglip_text_tower(full, tokenizer)
    # SigLIP2 (NaFlex) keeps each image's aspect ratio and pads to a fixed number of patches.
    vision = {key: value for key, value in _vision(full).items() if key != "image_size"}
    patches = 256 if full else 16
    model = Siglip2Model(
        Siglip2Config(text_config=text, vision_config={**vision, "num_patches": patches})
    )
    processor = processor_class("Siglip2ImageProcessor")(
        patch_size=vision["patch_size"], max_num_patches=patches
    )
    _save(out, model, tokenizer, processor)


def build_dinov2(out: Path, full: bool) -> None:
    from transformers import Dinov2Config, Dinov2Model

    dims = _vision(full)
    dims["patch_size"] = 14 if full else 8
    model = Dinov2Model(Dinov2Config(**dims))
    size = 224 if full else 32
    processor = processor_class("BitImageProcessor")(
        size={"shortest_edge": 256 if full else 40},
        crop_size={"height": size, "width": size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    _save(out, model, None, processor)


def build_yolos(out: Path, full: bool) -> None:
    """A YOLOS detector (a ViT with detection tokens): no CNN backbone to build offline."""
    from transformers import YolosConfig, YolosForObjectDetection

    dims = _vision(full)
    # Its position embeddings are interpolated from this (height, width) to each image's size.
    dims["image_size"] = [800, 1344] if full else [64, 96]
    model = YolosForObjectDetection(
        YolosConfig(**dims, num_detection_tokens=100 if full else 10, **_labels())
    )
    size = (
        {"shortest_edge": 512, "longest_edge": 864}
        if full
        else {"shortest_edge": 64, "longest_edge": 96}
    )
    _save(out, model, None, processor_class("YolosImageProcessor")(size=size))


def build_detr(out: Path, full: bool) -> None:
    """DETR with a transformers ResNet backbone (no timm): a CNN, a transformer encoder-decoder
    over its features, and a mask over the padding that lets images of any size share a batch."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(
        **_dims(
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
    transformer = _dims(
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
        **_labels(),
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
    _save(out, model, None, processor_class("DetrImageProcessor")(size=size))


def _owl(out: Path, full: bool, version: str) -> None:
    """OWL-ViT (base patch32, 768 px) or OWLv2 (base patch16, 960 px): open-vocabulary detectors
    on a CLIP pair; their text tower has 16 positions."""
    import transformers

    tokenizer = clip_tokenizer()
    text = _text_tower(
        full,
        len(tokenizer),
        16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    size = (768 if version == "OwlViT" else 960) if full else 32
    patch = (32 if version == "OwlViT" else 16) if full else 8
    vision = {**_vision(full, size), "patch_size": patch}
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
    _save(out, model, None, None)


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
    lines = [line.lower() for line in _CORPUS + LABELS]
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
    swin = _dims(
        full,
        dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4),
        dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    )
    backbone = SwinConfig(**swin, image_size=224 if full else 64, out_indices=[2, 3, 4])
    text = BertConfig(
        **_dims(
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
    transformer = _dims(
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
    _save(out, model, None, None)


def build_grounding_dino(out: Path, full: bool) -> None:
    _grounding_dino(out, full, "GroundingDino")


def build_mm_grounding_dino(out: Path, full: bool) -> None:
    _grounding_dino(out, full, "MMGroundingDino")


# LLaVA-1.5's conversation format, as its processors' chat template renders it.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def llama_tokenizer() -> PreTrainedTokenizerFast:
    """A decoder's tokenizer: <s> before the text, and <image> as one special token."""
    from tokenizers import processors

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    trained = _train_tokenizer(specials, 260)
    trained.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", trained.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=trained,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )


def _llava(out: Path, full: bool, family: str, pinpoints: list[list[int]] | None) -> None:
    """A LLaVA-family VLM: a CLIP vision tower, a projector and a Llama decoder, with the
    LLaVA-1.5 chat template. Full size: ViT-B/14 at 336 px and a 0.5B decoder shaped like
    Qwen2-0.5B (LLaVA-Interleave 0.5B's language model)."""
    import transformers
    from transformers import CLIPVisionConfig, LlamaConfig

    tokenizer = llama_tokenizer()
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text = _dims(
        full,
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            initializer_range=TINY_INIT,
        ),
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        ),
    )
    size, patch = (336, 14) if full else (32, 8)
    tiling = {"image_grid_pinpoints": pinpoints} if pinpoints else {}
    config = getattr(transformers, f"{family}Config")(
        vision_config=CLIPVisionConfig(**{**_vision(full, size), "patch_size": patch}),
        text_config=LlamaConfig(vocab_size=len(tokenizer), **text, **ids),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(size // patch) ** 2,
        **tiling,
    )
    model = getattr(transformers, f"{family}ForConditionalGeneration")(config)
    model.generation_config.update(**ids)
    image_processor = processor_class(
        "LlavaNextImageProcessor" if pinpoints else "CLIPImageProcessor"
    )(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **tiling)
    processor = getattr(transformers, f"{family}Processor")(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    _save(out, model, None, None)


# Qwen2-VL's ChatML, with its vision markers around each image's patch tokens.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_vl_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2-VL's and Qwen2.5-VL's special tokens (ChatML and the vision markers) over the
    deterministic WordPiece vocabulary."""
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    return PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(specials, 260),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
        padding_side="left",
    )


def build_qwen2_vl(out: Path, full: bool) -> None:
    """Qwen2-VL: dynamic resolution (each photo becomes as many 14 px patches as its size
    gives, merged 2x2 into image tokens, between min and max pixels), M-RoPE positions and a
    per-token mm_token_type_ids. Full size: the 2B's vision tower and a 1.5B-shaped decoder."""
    import transformers

    tokenizer = _qwen_vl_tokenizer()
    token = tokenizer.convert_tokens_to_ids
    ids = dict(eos_token_id=token("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    text = _dims(
        full,
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            initializer_range=TINY_INIT,
        ),
        dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
    )
    vision = _dims(
        full,
        dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2),
        dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4),
    )
    config = transformers.Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=4096,
            bos_token_id=None,
            **text,
            **ids,
        ),
        vision_config=dict(**vision, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
        **ids,
    )
    model = transformers.Qwen2VLForConditionalGeneration(config)
    model.generation_config.update(**ids)
    # Tiny: 2 to 16 image tokens a photo; full: the 2B's own bounds (4 to 16384 tokens).
    pixels = (4 * 28 * 28, 16384 * 28 * 28) if full else (56 * 56, 112 * 112)
    processor = transformers.Qwen2VLProcessor(
        image_processor=processor_class("Qwen2VLImageProcessor")(
            min_pixels=pixels[0], max_pixels=pixels[1]
        ),
        video_processor=transformers.Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    _save(out, model, None, None)


def build_qwen2_5_vl(out: Path, full: bool) -> None:
    """Qwen2.5-VL: Qwen2-VL's dynamic resolution and M-RoPE, a vision tower of windowed
    attention (full attention in a few blocks), RMSNorm and SwiGLU, and a merger to the
    decoder's width. Full size: Qwen2.5-VL-3B's vision tower and decoder."""
    import transformers

    tokenizer = _qwen_vl_tokenizer()
    token = tokenizer.convert_tokens_to_ids
    ids = dict(eos_token_id=token("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    text = _dims(
        full,
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            initializer_range=TINY_INIT,
        ),
        dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
    )
    # Windows of 56 px (2x2 image tokens) in the tiny tower, so its photos (2 to 16 tokens)
    # span several windows and the window reordering is exercised; the 3B's are 112 px.
    vision = _dims(
        full,
        dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            window_size=56,
            fullatt_block_indexes=[1],
            initializer_range=TINY_INIT,
        ),
        dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        ),
    )
    config = transformers.Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=4096,
            bos_token_id=None,
            **text,
            **ids,
        ),
        vision_config=dict(
            **vision,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            tokens_per_second=2,
        ),
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
        tie_word_embeddings=full,  # the 3B ties its embeddings
        **ids,
    )
    model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.update(**ids)
    # Tiny: 2 to 16 image tokens a photo; full: the 3B's own bounds (4 to 16384 tokens).
    pixels = (4 * 28 * 28, 16384 * 28 * 28) if full else (56 * 56, 112 * 112)
    processor = transformers.Qwen2_5_VLProcessor(
        image_processor=processor_class("Qwen2VLImageProcessor")(
            min_pixels=pixels[0], max_pixels=pixels[1]
        ),
        video_processor=transformers.Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    _save(out, model, None, None)


# SmolVLM's own template: "User:<image>question<end_of_utterance>\nAssistant:".
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_smolvlm(out: Path, full: bool) -> None:
    """SmolVLM (Idefics3's architecture): a SigLIP-style vision tower, pixel shuffle and a Llama
    decoder; each photo is split into tiles of the tower's size plus a downscaled global view,
    so photos of different shapes become different token counts. Full size: SmolVLM-256M's."""
    from transformers import (
        LlamaConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
        SmolVLMVisionConfig,
    )

    grid = [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
    specials = [
        "<pad>",
        "<unk>",
        "<|im_start|>",
        "<end_of_utterance>",
        "<image>",
        "<fake_token_around_image>",
        "<global-img>",
        *grid,
    ]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(specials, 400),
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
        },
        padding_side="left",
    )
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    tile, patch = (512, 16) if full else (32, 8)
    vision = _dims(
        full,
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            initializer_range=TINY_INIT,
        ),
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    )
    text = _dims(
        full,
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            initializer_range=TINY_INIT,
        ),
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
        ),
    )
    scale = 4 if full else 2
    config = SmolVLMConfig(
        vision_config=SmolVLMVisionConfig(image_size=tile, patch_size=patch, **vision).to_dict(),
        text_config=LlamaConfig(vocab_size=len(tokenizer), **text, **ids).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = SmolVLMForConditionalGeneration(config)
    model.generation_config.update(**ids)
    image_processor = SmolVLMImageProcessor(
        size={"longest_edge": tile * (4 if full else 2)}, max_image_size={"longest_edge": tile}
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=(tile // patch // scale) ** 2,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    _save(out, model, None, None)


# PaliGemma is prompted, not chatted: its mix checkpoints take a task prefix ("answer en ...",
# "caption en"); this template renders a user turn's text as that prompt, the image tokens and
# <bos> are the processor's.
PALIGEMMA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endfor %}"
)


def build_paligemma(out: Path, full: bool) -> None:
    """PaliGemma: a SigLIP vision tower, a linear projector and a Gemma decoder attending to the
    image and the prompt as one prefix (its processor's token_type_ids). Full size: PaliGemma
    3B at 224 px."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], 400),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    size, patch = (224, 14) if full else (32, 8)
    image_processor = SiglipImageProcessor(size={"height": size, "width": size})
    image_processor.image_seq_length = (size // patch) ** 2
    # The processor adds PaliGemma's 1,024 location and 128 segmentation tokens to the vocabulary.
    processor = PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=PALIGEMMA_CHAT_TEMPLATE
    )
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = _dims(
        full,
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            initializer_range=TINY_INIT,
        ),
        dict(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16
        ),
    )
    text = _dims(
        full,
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=512,
            initializer_range=TINY_INIT,
        ),
        dict(
            hidden_size=2048,
            intermediate_size=16384,
            num_hidden_layers=18,
            num_attention_heads=8,
            num_key_value_heads=1,
            head_dim=256,
            max_position_embeddings=8192,
        ),
    )
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(image_size=size, patch_size=patch, **vision).to_dict(),
        text_config=GemmaConfig(vocab_size=len(processor.tokenizer), **text, **ids).to_dict(),
        image_token_id=processor.image_token_id,
        projection_dim=text["hidden_size"],
        pad_token_id=tokenizer.pad_token_id,
    )
    model = PaliGemmaForConditionalGeneration(config)
    model.generation_config.update(**ids)
    processor.save_pretrained(out)
    _save(out, model, None, None)


# The tokens Florence-2 adds to BART's vocabulary (its original processor's list, in its order):
# the location bins its answers give coordinates in, and the task markers.
FLORENCE2_TOKENS = [
    "<od>",
    "</od>",
    "<ocr>",
    "</ocr>",
    *(f"<loc_{i}>" for i in range(1000)),
    *("<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>"),
    *("<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>"),
    *("</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>"),
]
# Words of the prompts Florence2Processor writes for its task tokens, so they tokenize as words.
_FLORENCE2_PROMPT_WORDS = [
    "What is the text in the image, with regions? What does the image describe?",
    "Describe in detail what is shown in the image with a paragraph.",
    "Locate the objects with category name in the image, with their descriptions.",
    "Locate the region proposals; the phrases in the caption: mask polygon of region",
]


def florence2_tokenizer() -> Any:
    """A BART tokenizer (byte-level BPE, <s> <pad> </s> <unk> first, <mask> last) whose merges
    are learned here, with Florence-2's location and task tokens and its <image> token."""
    from transformers import BartTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _learn_byte_level_merges(_CORPUS + LABELS + _FLORENCE2_PROMPT_WORDS)
    ordinary = [*alphabet, *("".join(pair) for pair in merges)]
    tokens = list(dict.fromkeys(["<s>", "<pad>", "</s>", "<unk>", *ordinary, "<mask>"]))
    tokenizer = BartTokenizer(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=merges,
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": FLORENCE2_TOKENS}, replace_extra_special_tokens=False
    )
    return tokenizer


def _learn_byte_level_merges(lines: list[str]) -> list[tuple[str, str]]:
    """BPE merges over the lines' byte-level words ("Ġcat" after a space), as GPT-2 and BART
    spell them, until every word is one token: the most frequent pair first, ties broken by
    the pair itself (deterministic, unlike tokenizers' BpeTrainer)."""
    import collections
    import itertools

    split = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = collections.Counter(w for line in lines for w, _ in split.pre_tokenize_str(line))
    spelled = {word: list(word) for word in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, symbols in spelled.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += words[word]
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in spelled.items():
            spelled[word] = _merge_pair(symbols, best)


def build_florence2(out: Path, full: bool) -> None:
    """Florence-2: a DaViT vision tower whose image tokens lead a BART encoder-decoder's prompt;
    a task token in the prompt picks the task, and answers give coordinates as <loc_N> tokens
    that its processor parses. Full size: Florence-2-base (768 px, 577 image tokens)."""
    from transformers import (
        BartConfig,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
    )

    tokenizer = florence2_tokenizer()
    stages = _dims(
        full,
        dict(
            depths=(1, 1),
            patch_size=(7, 3),
            patch_stride=(4, 2),
            patch_padding=(3, 1),
            patch_prenorm=(False, True),
            embed_dim=(16, 32),
            num_heads=(1, 2),
            num_groups=(1, 2),
            window_size=4,
            projection_dim=32,
            initializer_range=TINY_INIT,
        ),
        dict(
            depths=(1, 1, 9, 1),
            embed_dim=(128, 256, 512, 1024),
            num_heads=(4, 8, 16, 32),
            num_groups=(4, 8, 16, 32),
            window_size=12,
            projection_dim=768,
        ),
    )
    vision = Florence2VisionConfig(**stages)
    size = 768 if full else 64
    stride = 1
    for step in vision.patch_stride:
        stride *= step
    # The image's tokens: one per cell of the last stage's grid, plus their mean.
    image_tokens = (size // stride) ** 2 + 1
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    text = BartConfig(
        # Florence-2-base's 51,289 tokens and <image>, padded to a multiple of 64.
        vocab_size=51328 if full else len(tokenizer),
        max_position_embeddings=1024,
        **ids,
        **_dims(
            full,
            dict(
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                init_std=TINY_INIT,
            ),
            dict(
                d_model=768,
                encoder_layers=6,
                decoder_layers=6,
                encoder_attention_heads=12,
                decoder_attention_heads=12,
                encoder_ffn_dim=3072,
                decoder_ffn_dim=3072,
            ),
        ),
    )
    config = Florence2Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=tokenizer.image_token_id,
    )
    model = Florence2ForConditionalGeneration(config)
    model.generation_config.update(**ids)
    # Florence-2's image processor: stretched to a square (no crop), ImageNet statistics.
    image_processor = processor_class("CLIPImageProcessor")(
        size={"height": size, "width": size},
        crop_size={"height": size, "width": size},
        do_center_crop=False,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    image_processor.image_seq_length = image_tokens
    # What post_process_generation parses each kind of answer with (the converted checkpoints').
    parsing = {
        kind: {}
        for kind in (
            "pure_text",
            "description_with_bboxes",
            "description_with_polygons",
            "polygons",
            "bboxes",
            "description_with_bboxes_or_polygons",
        )
    }
    parsing["ocr"] = {"area_threshold": 0.0}
    parsing["phrase_grounding"] = {"banned_grounding_tokens": ["the image", "image", "the", "a"]}
    processor = Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer, post_processor_config=parsing
    )
    processor.save_pretrained(out)
    _save(out, model, None, None)


def build_llava(out: Path, full: bool) -> None:
    """LLaVA-1.5: each image becomes a fixed number of <image> tokens (one per patch)."""
    _llava(out, full, "Llava", None)


def build_llava_next(out: Path, full: bool) -> None:
    """LLaVA-NeXT ("anyres"): each image is tiled on the best-fitting grid of its aspect ratio,
    so images of different shapes become different numbers of <image> tokens."""
    size = 336 if full else 32
    _llava(
        out,
        full,
        "LlavaNext",
        [[size, size], [size, 2 * size], [2 * size, size], [2 * size, 2 * size]],
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
        **_dims(
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
    head = _dims(
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
    _save(out, model, None, processor)


def build_dpt(out: Path, full: bool) -> None:
    """DPT (ViT-based, not hybrid) with a depth head at a fixed square input."""
    from transformers import DPTConfig, DPTForDepthEstimation

    vision = _vision(full, image_size=384)
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
    _save(out, DPTForDepthEstimation(config), None, processor)


def build_segformer(out: Path, full: bool) -> None:
    """SegFormer (B0 shape at full size): a semantic head over ten labels at a fixed input."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    dims = _dims(
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
    model = SegformerForSemanticSegmentation(SegformerConfig(**dims, **_labels()))
    side = 512 if full else 64
    processor = processor_class("SegformerImageProcessor")(size={"height": side, "width": side})
    _save(out, model, None, processor)


def build_mask2former(out: Path, full: bool) -> None:
    """Mask2Former over a Swin backbone (Swin-T at full size): queries, each a class and a mask;
    the processor keeps the aspect ratio, so photo shapes differ."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = _dims(
        full,
        dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4),
        dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    )
    backbone = SwinConfig(
        **swin,
        image_size=384 if full else 64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    decoder = _dims(
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
        Mask2FormerConfig(backbone_config=backbone, **decoder, **_labels())
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
    _save(out, model, None, processor)


def build_oneformer(out: Path, full: bool) -> None:
    """OneFormer over a Swin backbone (Swin-T at full size): Mask2Former-like queries
    conditioned on a task token ("the task is panoptic"), so its processor has a CLIP tokenizer;
    its class list is a JSON file beside the processor (the Hub's checkpoints name
    shi-labs/oneformer_demo, a dataset the processor downloads at load)."""
    from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, SwinConfig

    swin = _dims(
        full,
        dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4),
        dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    )
    stages = ["stage1", "stage2", "stage3", "stage4"]
    backbone = SwinConfig(**swin, image_size=384 if full else 64, out_features=stages)
    decoder = _dims(
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
        OneFormerConfig(backbone_config=backbone, **decoder, **_labels())
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
    _save(out, model, None, processor)


def build_detr_panoptic(out: Path, full: bool) -> None:
    """DETR for segmentation (facebook/detr-resnet-50-panoptic's shape at full size): the
    detector plus a mask head over four backbone stages; panoptic by default."""
    from transformers import DetrConfig, DetrForSegmentation, ResNetConfig

    backbone = ResNetConfig(
        **_dims(
            full,
            dict(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1]),
            dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3]),
        ),
        layer_type="basic" if not full else "bottleneck",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    transformer = _dims(
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
        **_labels(),
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
    _save(out, model, None, processor)


def build_swin2sr(out: Path, full: bool) -> None:
    """Swin2SR x2 (classical, pixel-shuffle upsampler; caidas/swin2SR-classical-sr-x2-64 at
    full size): every photo keeps its size, padded to a multiple of the window."""
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution

    dims = _dims(
        full,
        dict(embed_dim=16, depths=[2], num_heads=[2], window_size=4, image_size=32),
        dict(embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, window_size=8, image_size=64),
    )
    model = Swin2SRForImageSuperResolution(
        Swin2SRConfig(**dims, upscale=2, upsampler="pixelshuffle", patch_size=1)
    )
    processor = processor_class("Swin2SRImageProcessor")(size_divisor=dims["window_size"])
    _save(out, model, None, processor)


def build_sam(out: Path, full: bool) -> None:
    """SAM (ViT-B at full size, 1024 px): an image encoder, a prompt encoder and a mask decoder;
    every photo is resized to the longest edge and padded square."""
    from transformers import SamConfig, SamModel, SamProcessor

    config = SamConfig() if full else SamConfig(**_tiny_sam_parts())  # defaults: ViT-B
    _save(out, SamModel(config), None, SamProcessor(image_processor=_sam_processor(full)))


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
    _save(out, SamHQModel(config), None, SamHQProcessor(image_processor=_sam_processor(full)))


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
    _save(out, Sam2Model(config), None, processor)


def build_vit_backbone(out: Path, full: bool) -> None:
    """A headless ViT (ViTModel, with its pooler): serves embed, must refuse classify."""
    from transformers import ViTModel

    model = ViTModel(ViTConfig(**_vision(full)))
    size = 224 if full else 32
    _save(
        out, model, None, processor_class("ViTImageProcessor")(size={"height": size, "width": size})
    )


BUILDERS: dict[str, Callable[[Path, bool], None]] = {
    "vit-gpt2": build_vit_gpt2,
    "git": build_git,
    "blip": build_blip,
    "resnet": build_resnet,
    "vit": build_vit,
    "clip": build_clip,
    "siglip": build_siglip,
    "siglip2": build_siglip2,
    "dinov2": build_dinov2,
    "vit-backbone": build_vit_backbone,
    "yolos": build_yolos,
    "detr": build_detr,
    "owlvit": build_owlvit,
    "owlv2": build_owlv2,
    "grounding-dino": build_grounding_dino,
    "mm-grounding-dino": build_mm_grounding_dino,
    "llava": build_llava,
    "llava-next": build_llava_next,
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
    "qwen2-vl": build_qwen2_vl,
    "qwen2.5-vl": build_qwen2_5_vl,
    "smolvlm": build_smolvlm,
    "paligemma": build_paligemma,
    "florence2": build_florence2,
    "trocr": build_trocr,
    "got-ocr2": build_got_ocr2,
    "donut": build_donut,
}


def _save(out: Path, model, tokenizer, processor) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


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
