"""Document models: GOT-OCR2 and Donut."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    PreTrainedTokenizerFast,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)

from .common import CORPUS, TINY_INIT, Builder, corpus_tokenizer, processor_class, save, sized

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
    *CORPUS,
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
        tokenizer_object=corpus_tokenizer(GOT_OCR2_SPECIALS, 400, _OCR_CORPUS),
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
    vision = sized(
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
    text = sized(
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
    save(out, model, None, None)


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
        tokenizer_object=corpus_tokenizer(DONUT_SPECIALS, 400, _OCR_CORPUS),
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
        **sized(
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
        **sized(
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
    save(out, model, None, None)


# This family's architectures, by the names `--arch` and the tests use.
BUILDERS: dict[str, Builder] = {
    "got-ocr2": build_got_ocr2,
    "donut": build_donut,
}
