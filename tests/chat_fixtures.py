"""Small tokenizers with the chat markers, shared by the chat-template and post-training tests (do not mutate them)."""
from __future__ import annotations

import warnings

import pytest

from minillm.tokenizer import BPETokenizer, CharTokenizer
from minillm.tokenizer.chat import CHAT_SPECIAL_TOKENS


@pytest.fixture(scope="session")
def bpe_chat() -> BPETokenizer:
    """Byte-level BPE trained on a tiny text; all four chat markers are special tokens."""
    with warnings.catch_warnings():   # the tiny text may run out of merges before vocab_size: harmless here
        warnings.simplefilter("ignore", UserWarning)
        return BPETokenizer.train("hello world " * 50, vocab_size=300, special_tokens=list(CHAT_SPECIAL_TOKENS))


@pytest.fixture(scope="session")
def char_chat() -> CharTokenizer:
    """Characters ' ', a, b, c, x, y, z -> ids 0..6; <|user|> 7, <|assistant|> 8, <|end|> 9, <|system|> 10."""
    return CharTokenizer.train("abc xyz", special_tokens=list(CHAT_SPECIAL_TOKENS))
