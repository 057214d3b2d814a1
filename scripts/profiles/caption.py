"""Captions (model ``caption``): BLIP image captioning (``BlipForConditionalGeneration``).

- ``tiny``: a 2-layer, 32-wide ViT at 32x32 and a 2-layer, 32-wide text decoder (seconds).
- ``arch``: Salesforce/blip-image-captioning-large's architecture at full size (ViT-L/16 at
  384x384, a BERT-base text decoder with cross-attention, 30,524 tokens), random weights.
Both save a ``BlipProcessor`` whose image processor is the PIL one (BLIP's default processor
imports torchvision, which does not import beside a CPU torch 2.13) and whose tokenizer is a
``BertTokenizer`` built in code from a vocabulary dict (no download).
"""

from __future__ import annotations

import string
from pathlib import Path

from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from .sizes import TINY_TOWER, TINY_VIT, tower

PRETRAINED = {"caption": "Salesforce/blip-image-captioning-large"}

# BLIP's text decoder starts every caption with [DEC] (its bos token) and stops at [SEP]; [ENC] is
# the encoder's start token. Both follow BERT's 30,522 tokens in the hub's vocabulary.
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BLIP_TOKENS = ("[DEC]", "[ENC]")
_WORDS = (
    "a",
    "an",
    "the",
    "of",
    "photo",
    "photograph",
    "picture",
    "and",
    "in",
    "on",
    "with",
    "cat",
    "dog",
    "person",
    "man",
    "woman",
    "sitting",
    "standing",
    "red",
    "blue",
    "car",
    "street",
    "table",
)
# Salesforce/blip-image-captioning-large: ids of [PAD], [UNK], [CLS], [SEP], [MASK] as in BERT's
# vocabulary, [DEC] = 30522, [ENC] = 30523, 30,524 in all
_HUB_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
_HUB_VOCAB_SIZE = 30524
# BLIP's vision initializer_range is 1e-10 (pretrained weights replace it); random weights that small
# make every image embed alike and every caption the same, so both random profiles use BERT's 0.02
_RANDOM_VISION_INIT = 0.02
# At tiny's width the decoder's cross-attention with 0.02 weights barely moves the logits: nearly
# every image gets the same caption, and a test could not tell one image's caption from another's.
# With 0.1 six test images get six captions.
_TINY_TEXT_INIT = 0.1


def vocabulary(full_size: bool) -> dict[str, int]:
    """Characters (and their ``##`` continuations) so any text tokenizes without [UNK], a few
    whole words, BERT's special tokens and BLIP's two. ``full_size`` places them at the hub's ids
    and fills the gaps with ``[unused<i>]`` (as BERT's own vocabulary does) up to 30,524 tokens."""
    pieces = list(
        dict.fromkeys(
            [
                *string.ascii_lowercase,
                *string.digits,
                *string.punctuation,
                *(f"##{c}" for c in string.ascii_lowercase + string.digits),
                *_WORDS,
            ]
        )
    )
    if not full_size:
        return {token: i for i, token in enumerate([*_SPECIAL, *pieces, *_BLIP_TOKENS])}
    by_id: dict[int, str] = {index: token for token, index in _HUB_IDS.items()}
    by_id[_HUB_VOCAB_SIZE - 2], by_id[_HUB_VOCAB_SIZE - 1] = _BLIP_TOKENS
    free = (i for i in range(_HUB_VOCAB_SIZE) if i not in by_id)
    for piece in pieces:
        by_id[next(free)] = piece
    for unused, index in enumerate(free):
        by_id[index] = f"[unused{unused}]"
    return {token: index for index, token in sorted(by_id.items())}


def build_tokenizer(full_size: bool) -> BertTokenizer:
    return BertTokenizer(vocab=vocabulary(full_size), bos_token="[DEC]", additional_special_tokens=["[ENC]"])


def config(profile: str, tokenizer: BertTokenizer) -> BlipConfig:
    # generate() starts from the bos token and stops at sep: both must be the tokenizer's ids
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    if profile == "tiny":
        text = dict(
            vocab_size=len(tokenizer),
            **special,
            **TINY_TOWER,
            projection_dim=32,
            max_position_embeddings=512,
            initializer_range=_TINY_TEXT_INIT,
        )
        vision = dict(**TINY_VIT, projection_dim=32, initializer_range=_RANDOM_VISION_INIT)
        return BlipConfig(text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32)
    # Salesforce/blip-image-captioning-large: ViT-L/16 at 384 and a BERT-base decoder
    bert_base = tower(width=768, layers=12, heads=12, mlp=3072)
    text = dict(vocab_size=_HUB_VOCAB_SIZE, **special, **bert_base, projection_dim=768, max_position_embeddings=512)
    vit_large = dict(image_size=384, patch_size=16, **tower(width=1024, layers=24, heads=16, mlp=4096))
    vision = dict(**vit_large, projection_dim=512, initializer_range=_RANDOM_VISION_INIT)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=512, image_text_hidden_size=256)


def build(profile: str, root: Path) -> None:
    out = root / "caption"
    tokenizer = build_tokenizer(full_size=profile != "tiny")
    cfg = config(profile, tokenizer)
    if len(tokenizer) != cfg.text_config.vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, the text decoder {cfg.text_config.vocab_size}")
    side = cfg.vision_config.image_size
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": side, "width": side}), tokenizer=tokenizer
    )
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    processor.save_pretrained(out)
