"""What every tiny build shares: the corpus and labels, deterministic tokenizers, sizes, saving."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
)

# Words the captioning tokenizer learns; random weights make any caption of them possible.
CORPUS = [
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

# Writes one architecture's model directory: (out, full size?).
Builder = Callable[[Path, bool], None]


def processor_class(name: str) -> Any:
    """An image processor class: the torchvision-backed one where torchvision is installed, the
    PIL one otherwise (named directly, so transformers prints no fallback warning)."""
    import transformers

    return getattr(transformers, name if importlib.util.find_spec("torchvision") else name + "Pil")


def corpus_tokenizer(
    specials: list[str], vocab_size: int, corpus: list[str] | None = None
) -> Tokenizer:
    """A WordPiece tokenizer over `corpus` (CORPUS): the specials, every character (word-initial
    and "##" continuation) and every corpus word, in sorted order. Built rather than trained:
    tokenizers' WordPieceTrainer breaks ties in hash order, so each build had a different
    vocabulary, hence different random answers (a tiny VLM answered "" in 1 CI run of 3)."""
    from tokenizers import decoders

    whitespace = pre_tokenizers.Whitespace()
    lines = CORPUS if corpus is None else corpus
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

    trained = corpus_tokenizer(BERT_SPECIALS, 200)
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
        tokenizer_object=corpus_tokenizer([GPT2_SPECIAL, "<unk>"], 200),
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
    merges = _learn_bpe_merges([s.lower() for s in CORPUS + LABELS], 142)
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
            spelled[word] = merge_pair(symbols, best)
    return merges


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
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


def sized(full: bool, tiny: dict, real: dict) -> dict:
    return real if full else tiny


def vision_config(full: bool, image_size: int = 224) -> dict:
    return sized(
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


def label_config() -> dict:
    return {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}


def save(out: Path, model, tokenizer, processor) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
