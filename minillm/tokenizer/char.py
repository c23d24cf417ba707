"""Character-level tokenizer: one id per character (the classic char-level Shakespeare demo).

The vocabulary is the sorted set of characters of the training text (ids 0..n-1 in code point
order), then the special tokens (ids n, n+1, ...). It has the same interface as ``BPETokenizer``
(``encode``/``encode_ordinary``/``decode``/``decode_bytes``/``save``/``load``/``to_dict``...), so
the rest of minillm can use either. A character that is not in the vocabulary raises ValueError
naming it and its position: there is no byte fallback.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from . import formats
from .base import TokenizerBase
from .checks import check_ids, check_no_surrogates, check_special_token_list, check_text, short_repr
from .special import SpecialTokenMatcher


class CharTokenizer(TokenizerBase):
    """Maps each character of ``chars`` to its index; ``special_tokens`` follow (list of str)."""

    def __init__(self, chars: list[str] | str, special_tokens: list[str] | None = None):
        if isinstance(chars, str):
            chars = list(chars)
        if not isinstance(chars, (list, tuple)):
            raise TypeError(f"chars={short_repr(chars)} has type {type(chars).__name__}; expected a list of "
                            "single characters")
        seen: set[str] = set()
        for index, char in enumerate(chars):
            if not isinstance(char, str) or len(char) != 1:
                raise ValueError(f"chars[{index}]={char!r}; expected a single character (str of length 1)")
            check_no_surrogates(char, f"chars[{index}]")
            if char in seen:
                raise ValueError(f"chars[{index}]={char!r} is listed twice; expected distinct characters")
            seen.add(char)
        self._chars = list(chars)
        self._char_to_id = {char: index for index, char in enumerate(self._chars)}
        specials = check_special_token_list(special_tokens)
        self._special_tokens = {token: len(self._chars) + index for index, token in enumerate(specials)}
        self._rebuild_special_tables()

    def _rebuild_special_tables(self) -> None:
        self._matcher = SpecialTokenMatcher(self._special_tokens)
        self._id_to_text = self._chars + list(self._special_tokens)

    @classmethod
    def train(cls, text: str, special_tokens: list[str] | None = None) -> "CharTokenizer":
        """The vocabulary is the sorted set of characters in ``text`` (special token strings in the
        text are not counted as characters)."""
        text = check_text(text)
        check_no_surrogates(text)
        specials = check_special_token_list(special_tokens)
        pieces = SpecialTokenMatcher({token: index for index, token in enumerate(specials)}).strip(text)
        chars = sorted(set().union(*map(set, pieces)))
        if not chars:
            raise ValueError("text has no characters (besides special tokens); expected a non-empty training text")
        return cls(chars, special_tokens=specials)

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_text)

    @property
    def chars(self) -> list[str]:
        return list(self._chars)

    def encode(self, text: str, allowed_special: object = "none_raise") -> list[int]:
        """Ids of ``text``; ``allowed_special`` works as in ``BPETokenizer.encode``."""
        text = check_text(text)
        allowed = self._matcher.resolve_allowed(allowed_special)
        if allowed is None or not self._special_tokens:
            return self._encode_ordinary(text, 0)
        ids: list[int] = []
        offset = 0
        for piece, special_id in self._matcher.split(text, allowed, allowed_special):
            if special_id is None:
                ids += self._encode_ordinary(piece, offset)
            else:
                ids.append(special_id)
            offset += len(piece)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of ``text``, special token strings encoded character by character."""
        return self._encode_ordinary(check_text(text), 0)

    def _encode_ordinary(self, text: str, offset: int) -> list[int]:
        try:
            return [self._char_to_id[char] for char in text]
        except KeyError as exc:
            char = exc.args[0]
            position = text.index(char)
            raise ValueError(
                f"text contains the character {char!r} (U+{ord(char):04X}) at index {offset + position}, which "
                f"is not in this tokenizer's {len(self._chars)}-character vocabulary; train on text that "
                "includes it, or use BPETokenizer (byte-level, encodes any text)"
            ) from None

    def encode_iterable(self, texts: Iterable[str], allowed_special: object = "none_raise") -> Iterator[int]:
        """Stream the ids of the concatenation of ``texts`` (e.g. the lines of an open file).
        Characters are independent, so each piece is encoded on its own; a special token string
        split across two pieces is not recognized."""
        if isinstance(texts, (str, bytes, bytearray)):
            raise TypeError(f"texts={short_repr(texts)} is a single {type(texts).__name__}; expected an "
                            "iterable of str such as an open text file (use encode() for one text)")
        self._matcher.resolve_allowed(allowed_special)  # fail now, not at the first next()
        return self._encode_stream(texts, allowed_special)

    def _encode_stream(self, texts: Iterable[str], allowed_special: object) -> Iterator[int]:
        for index, piece in enumerate(texts):
            yield from self.encode(check_text(piece, f"texts[{index}]"), allowed_special)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(check_ids(ids, self._id_to_text, self.vocab_size))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """UTF-8 bytes of ``decode(ids)``."""
        return self.decode(ids).encode("utf-8")

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, special_tokens={list(self._special_tokens)})"

    def to_dict(self) -> dict:
        return {
            "format": formats.FORMAT_NAME,
            "version": formats.FORMAT_VERSION,
            "type": "char",
            "chars": "".join(self._chars),
            "special_tokens": dict(self._special_tokens),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        return cls._from_dict(data, "tokenizer dict")

    @classmethod
    def _from_dict(cls, data: dict, source: str) -> "CharTokenizer":
        formats.check_header(data, source, expected_type="char")
        chars = formats.require_field(data, "chars", str, source)
        special_tokens = formats.require_field(data, "special_tokens", dict, source)
        expected_ids = {token: len(chars) + index for index, token in enumerate(special_tokens)}
        if special_tokens != expected_ids:
            raise ValueError(f"{source}: special_tokens={special_tokens!r:.200}; expected ids numbered from "
                             f"{len(chars)} in order")
        try:
            return cls(list(chars), special_tokens=list(special_tokens))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}: {exc}") from None

