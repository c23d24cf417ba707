"""Tokenizers: byte-level BPE (GPT-2/GPT-4 style) and a character-level tokenizer.

Modules, one concept each:
    patterns   the regex split patterns (pre-tokenization) and safe cut points
    training   BPE training (chunk counts, incremental pair counts, heap) and its naive twin
    merge      applying merges to a chunk; recovering merges from tiktoken ranks
    special    special tokens in text and the ``allowed_special`` policy
    base       what both tokenizers share (special-token bookkeeping, batches, display, files)
    bpe        BPETokenizer
    char       CharTokenizer
    formats    minillm JSON, tiktoken rank files, GPT-2's encoder.json + vocab.bpe
    huggingface  Hugging Face tokenizer.json (and vocab.json + merges.txt): from_pretrained, save_pretrained
    display    visualize(), compression_report()
    cli        the ``minillm tokenizer`` command
"""
from __future__ import annotations

import os

from .bpe import BPETokenizer
from .char import CharTokenizer
from .display import format_compression_report
from .formats import bytes_to_unicode, read_tokenizer_json
from .patterns import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN
from .special import END_OF_TEXT
from .training import train_bpe_naive

__all__ = [
    "END_OF_TEXT",
    "BPETokenizer",
    "CharTokenizer",
    "GPT2_SPLIT_PATTERN",
    "GPT4_SPLIT_PATTERN",
    "bytes_to_unicode",
    "format_compression_report",
    "load_tokenizer",
    "tokenizer_from_dict",
    "train_bpe_naive",
]


def tokenizer_from_dict(data: dict) -> BPETokenizer | CharTokenizer:
    """Rebuild a tokenizer from ``to_dict()`` output, choosing the class by its ``"type"`` field."""
    if not isinstance(data, dict):
        raise TypeError(f"data has type {type(data).__name__}; expected the dict made by to_dict()")
    kind = data.get("type")
    if kind == "bpe":
        return BPETokenizer.from_dict(data)
    if kind == "char":
        return CharTokenizer.from_dict(data)
    raise ValueError(f"tokenizer dict has type={kind!r}; expected 'bpe' or 'char'")


def load_tokenizer(path: str | os.PathLike) -> BPETokenizer | CharTokenizer:
    """Load a tokenizer saved by ``BPETokenizer.save`` or ``CharTokenizer.save``."""
    data = read_tokenizer_json(path)
    source = f"tokenizer file {os.fspath(path)!r}"
    kind = data.get("type")
    if kind == "bpe":
        return BPETokenizer._from_dict(data, source)
    if kind == "char":
        return CharTokenizer._from_dict(data, source)
    raise ValueError(f"{source}: 'type' is {kind!r}; expected 'bpe' or 'char'")
