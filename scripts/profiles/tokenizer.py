"""A small CLIP BPE tokenizer built in code: no download, real CLIPTokenizer code path.

CLIP's tokenizer is byte-level BPE over a 256-symbol alphabet; with the alphabet, its end-of-word
variants and a handful of merges it tokenizes any text (character-level where no merge applies).
Its ids stay below CLIP's real vocabulary size, so the same tokenizer also drives the
full-size ``arch`` text encoders.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

from .sizes import TINY_TOWER, tower

_COMMON_WORDS = ("a", "the", "of", "photo", "and", "in", "on", "with", "cat", "dog", "person", "car")


def _byte_alphabet() -> list[str]:
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that assemble ``word</w>`` from its characters."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    merges = []
    while len(symbols) > 1:
        merges.append((symbols[0], symbols[1]))
        symbols = [symbols[0] + symbols[1]] + symbols[2:]
    return merges


def build_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    vocab: dict[str, int] = {}
    for symbol in _byte_alphabet():
        vocab[symbol] = len(vocab)
    for symbol in _byte_alphabet():
        vocab[symbol + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _COMMON_WORDS:
        for left, right in _word_merges(word):
            if left + right not in vocab:
                vocab[left + right] = len(vocab)
                merges.append((left, right))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = max_length
    return tokenizer


def special_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    """The ids a CLIP text config shares with its tokenizer: the text model pools at the end-of-text token."""
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def tiny_text_tower(tokenizer: CLIPTokenizer) -> dict:
    """The tiny profile's CLIP text tower (clip's, and sd's and the upscaler's text encoders)."""
    return {"vocab_size": len(tokenizer), **special_ids(tokenizer), **TINY_TOWER, "max_position_embeddings": 77}


def full_text_tower(
    tokenizer: CLIPTokenizer, *, width: int, layers: int, heads: int, projection_dim: int, hidden_act: str
) -> dict:
    """A full-size CLIP text tower: CLIP's 49408-token vocabulary, 77 positions, an MLP 4x the width."""
    return {
        "vocab_size": 49408,
        **special_ids(tokenizer),
        **tower(width=width, layers=layers, heads=heads, mlp=4 * width),
        "max_position_embeddings": 77,
        "projection_dim": projection_dim,
        "hidden_act": hidden_act,
    }
