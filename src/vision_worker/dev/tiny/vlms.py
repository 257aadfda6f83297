"""Vision-language models: LLaVA (-NeXT), Qwen2-VL, Qwen2.5-VL, SmolVLM, PaliGemma, Florence-2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
)

from .common import (
    CORPUS,
    LABELS,
    TINY_INIT,
    Builder,
    corpus_tokenizer,
    merge_pair,
    processor_class,
    save,
    sized,
    vision_config,
)

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
    trained = corpus_tokenizer(specials, 260)
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
    text = sized(
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
        vision_config=CLIPVisionConfig(**{**vision_config(full, size), "patch_size": patch}),
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
    save(out, model, None, None)


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
        tokenizer_object=corpus_tokenizer(specials, 260),
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
    text = sized(
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
    vision = sized(
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
    save(out, model, None, None)


def build_qwen2_5_vl(out: Path, full: bool) -> None:
    """Qwen2.5-VL: Qwen2-VL's dynamic resolution and M-RoPE, a vision tower of windowed
    attention (full attention in a few blocks), RMSNorm and SwiGLU, and a merger to the
    decoder's width. Full size: Qwen2.5-VL-3B's vision tower and decoder."""
    import transformers

    tokenizer = _qwen_vl_tokenizer()
    token = tokenizer.convert_tokens_to_ids
    ids = dict(eos_token_id=token("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    text = sized(
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
    vision = sized(
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
    save(out, model, None, None)


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
        tokenizer_object=corpus_tokenizer(specials, 400),
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
    vision = sized(
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
    text = sized(
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
    save(out, model, None, None)


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
        tokenizer_object=corpus_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], 400),
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
    vision = sized(
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
    text = sized(
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
    save(out, model, None, None)


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
    merges = _learn_byte_level_merges(CORPUS + LABELS + _FLORENCE2_PROMPT_WORDS)
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
            spelled[word] = merge_pair(symbols, best)


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
    stages = sized(
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
        **sized(
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
    save(out, model, None, None)


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


# This family's architectures, by the names `--arch` and the tests use.
BUILDERS: dict[str, Builder] = {
    "llava": build_llava,
    "llava-next": build_llava_next,
    "qwen2-vl": build_qwen2_vl,
    "qwen2.5-vl": build_qwen2_5_vl,
    "smolvlm": build_smolvlm,
    "paligemma": build_paligemma,
    "florence2": build_florence2,
}
