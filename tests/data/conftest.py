"""Shared fixtures for the data-pipeline tests."""
import pytest


class ByteTokenizer:
    """A stand-in tokenizer: ids are the text's UTF-8 bytes, plus one special token (id 256)."""

    def __init__(self, vocab_size: int = 257):
        self.vocab_size = vocab_size
        self.special_tokens = {"<|endoftext|>": 256}

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if i < 256).decode("utf-8")

    def to_dict(self) -> dict:
        return {"type": "bytes", "vocab_size": self.vocab_size, "special_tokens": self.special_tokens}


@pytest.fixture
def byte_tokenizer():
    return ByteTokenizer()
