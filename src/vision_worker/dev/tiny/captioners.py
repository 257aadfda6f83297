"""Captioners: ViT-GPT2, TrOCR, GIT and BLIP."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    GitConfig,
    GitForCausalLM,
    GPT2Config,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
)

from .common import (
    GPT2_SPECIAL,
    TINY_INIT,
    Builder,
    bert_tokenizer,
    gpt2_tokenizer,
    processor_class,
    save,
    sized,
    vision_config,
)


def build_vit_gpt2(out: Path, full: bool) -> None:
    tokenizer = gpt2_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(GPT2_SPECIAL)
    decoder = GPT2Config(
        vocab_size=50257 if full else len(tokenizer),
        bos_token_id=eos,
        eos_token_id=eos,
        add_cross_attention=True,
        **sized(
            full,
            dict(n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=TINY_INIT),
            dict(n_positions=1024, n_embd=768, n_layer=12, n_head=12),
        ),
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(**vision_config(full)), decoder
    )
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = eos
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = eos
    size = 224 if full else 32
    processor = processor_class("ViTImageProcessor")(size={"height": size, "width": size})
    save(out, model, tokenizer, processor)


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
        **sized(
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
        ViTConfig(**vision_config(full, size)), decoder
    )
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = eos
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = eos
    image_processor = processor_class("ViTImageProcessor")(size={"height": size, "width": size})
    TrOCRProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    save(out, model, None, None)


def build_git(out: Path, full: bool) -> None:
    tokenizer = bert_tokenizer()
    ids = dict(
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text = sized(
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
        vision_config=vision_config(full),
        vocab_size=30522 if full else len(tokenizer),
        **text,
        **ids,
    )
    model = GitForCausalLM(config)
    model.generation_config.update(**ids)
    size = 224 if full else 32
    processor = processor_class("CLIPImageProcessor")(size={"shortest_edge": size}, crop_size=size)
    save(out, model, tokenizer, processor)


def build_blip(out: Path, full: bool) -> None:
    tokenizer = bert_tokenizer()
    text = dict(
        vocab_size=30524 if full else len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sep_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sized(
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
        text_config=text,
        vision_config=vision_config(full, size),
        projection_dim=32 if not full else 512,
    )
    model = BlipForConditionalGeneration(config)
    model.generation_config.update(
        bos_token_id=text["bos_token_id"],
        eos_token_id=text["eos_token_id"],
        pad_token_id=text["pad_token_id"],
    )
    processor = processor_class("BlipImageProcessor")(size={"height": size, "width": size})
    save(out, model, tokenizer, processor)


# This family's architectures, by the names `--arch` and the tests use.
BUILDERS: dict[str, Builder] = {
    "vit-gpt2": build_vit_gpt2,
    "git": build_git,
    "blip": build_blip,
    "trocr": build_trocr,
}
