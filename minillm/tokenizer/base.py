"""What every minillm tokenizer shares: special-token bookkeeping, batches, display, files.

A subclass keeps its special tokens in ``self._special_tokens`` (str -> id), rebuilds its
lookup tables in ``_rebuild_special_tables()``, and provides ``vocab_size``, ``encode``,
``to_dict`` and ``_from_dict(data, source)``; everything here follows from those.
"""
from __future__ import annotations

import os
from typing import Iterable

from . import display, formats
from .checks import check_special_token_list, check_text, short_repr


class TokenizerBase:
    """Methods shared by ``BPETokenizer`` and ``CharTokenizer``."""

    _special_tokens: dict[str, int]

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    def encode_batch(self, texts: Iterable[str], allowed_special: object = "none_raise") -> list[list[int]]:
        """``[encode(text) for text in texts]`` (a BPE tokenizer's chunk cache is shared across the batch)."""
        if isinstance(texts, (str, bytes, bytearray)):
            raise TypeError(f"texts={short_repr(texts)} is a single {type(texts).__name__}; expected a list "
                            "of str (use encode() for one text)")
        return [self.encode(check_text(text, f"texts[{index}]"), allowed_special)
                for index, text in enumerate(texts)]

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Append new special tokens with the next free ids; returns their ids."""
        tokens = check_special_token_list(tokens, "tokens")
        for token in tokens:
            if token in self._special_tokens:
                raise ValueError(f"tokens contains {token!r}, which is already the special token with id "
                                 f"{self._special_tokens[token]}; expected new special tokens")
        new_ids = [self.vocab_size + index for index in range(len(tokens))]
        self._special_tokens.update(zip(tokens, new_ids))
        self._rebuild_special_tables()
        return new_ids

    def visualize(self, text: str, allowed_special: object = "all") -> str:
        """``text`` with each token in brackets, e.g. ``"[To][ be][,][ or]"`` (see ``display``)."""
        return display.visualize(self, text, allowed_special)

    def compression_report(self, text: str) -> dict:
        """``{"characters", "bytes", "tokens", "bytes_per_token", "characters_per_token",
        "vocab_size"}`` for ``text``; ``format_compression_report`` prints it."""
        return display.compression_report(self, text)

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as minillm JSON (atomically; see ``formats``)."""
        formats.write_tokenizer_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a file written by ``save``; a damaged file raises ValueError naming it."""
        data = formats.read_tokenizer_json(path)
        return cls._from_dict(data, f"tokenizer file {os.fspath(path)!r}")
