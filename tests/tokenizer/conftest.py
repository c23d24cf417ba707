"""Shared fixtures for the tokenizer tests: a Shakespeare sample and small trained tokenizers."""
from __future__ import annotations

import pytest

from minillm.tokenizer import BPETokenizer

from .corpus_text import load_corpus_text

SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>"]


@pytest.fixture(scope="session")
def corpus() -> str:
    return load_corpus_text()


@pytest.fixture(scope="session")
def train_text(corpus) -> str:
    return corpus[:90_000]


@pytest.fixture(scope="session")
def heldout_text(corpus) -> str:
    return corpus[90_000:]


@pytest.fixture(scope="session")
def bpe_gpt4(train_text) -> BPETokenizer:
    """Trained with the GPT-4 pattern; 3 special tokens; do not mutate (shared by many tests)."""
    return BPETokenizer.train(train_text, vocab_size=700, pattern="gpt4", special_tokens=SPECIALS)


@pytest.fixture(scope="session")
def bpe_gpt2(train_text) -> BPETokenizer:
    return BPETokenizer.train(train_text, vocab_size=600, pattern="gpt2", special_tokens=["<|endoftext|>"])


@pytest.fixture(scope="session")
def bpe_unicode() -> BPETokenizer:
    """Trained on mixed scripts so merges inside multi-byte characters exist."""
    text = ("naïve café résumé 日本語のテキスト 中文文本 한국어 텍스트 Ελληνικά русский текст "
            "emoji 🤖🚀🎉👍🏽 e\u0301 combining a\u0308 \t\n\r\x00\x07 ") * 20
    return BPETokenizer.train(text, vocab_size=376, pattern="gpt4")


def reference_encode(text_bytes: bytes, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's byte-pair procedure, written plainly: start from single bytes; while some
    adjacent pair's concatenation is a token, merge the pair whose concatenation has the lowest
    rank (leftmost on ties); return the ranks of the parts."""
    parts = [bytes([b]) for b in text_bytes]
    while len(parts) > 1:
        best_rank, best_index = None, None
        for index in range(len(parts) - 1):
            rank = ranks.get(parts[index] + parts[index + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_index = rank, index
        if best_index is None:
            break
        parts[best_index:best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return [ranks[part] for part in parts]


from tests.chat_fixtures import bpe_chat, char_chat  # noqa: E402,F401  (the chat tokenizers, shared with tests/posttrain)
