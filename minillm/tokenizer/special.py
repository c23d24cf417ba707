"""Special tokens in text: finding them, and the ``allowed_special`` policy.

A special token (``<|endoftext|>``, chat markers...) is a string that maps to one reserved id
instead of being BPE-encoded. Text from users can contain those strings by accident or on
purpose, and silently turning them into control tokens is a prompt-injection hole, so (like
tiktoken) ``encode`` refuses them unless the caller says otherwise:

``allowed_special="none_raise"``  (default) any special token string in the text raises ValueError.
``allowed_special="none"``         special token strings are encoded as ordinary text.
``allowed_special="all"``          every special token string becomes its id.
``allowed_special={"<|a|>", ...}`` those become ids; any other special token string raises.

Matching: the text is scanned left to right; at each position the *longest* special token that
starts there wins (``<|endoftext|>`` beats ``<|end``), because the alternation is ordered by
decreasing length.
"""
from __future__ import annotations

import re
from typing import Iterator

from .checks import short_repr

ALLOWED_SPECIAL_HELP = "'none_raise', 'none', 'all', or a set of special token strings"
# The document separator of GPT-2 and of minillm's pretraining: put between documents, a natural
# first token for an unconditional sample, and a default stop for generation.
END_OF_TEXT = "<|endoftext|>"


class SpecialTokenMatcher:
    """Finds special token strings in text; ``special_tokens`` maps each string to its id."""

    def __init__(self, special_tokens: dict[str, int]):
        self.special_tokens = dict(special_tokens)
        # Longest first (ties in string order, for determinism) so the longest token wins.
        ordered = sorted(self.special_tokens, key=lambda token: (-len(token), token))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def resolve_allowed(self, allowed_special: object) -> frozenset[str] | None:
        """The set of allowed special strings, or None for "encode them as ordinary text"."""
        if isinstance(allowed_special, str):
            if allowed_special == "none_raise":
                return frozenset()
            if allowed_special == "none":
                return None
            if allowed_special == "all":
                return frozenset(self.special_tokens)
            raise ValueError(f"allowed_special={allowed_special!r} is not a known mode; expected "
                             f"{ALLOWED_SPECIAL_HELP}")
        if not isinstance(allowed_special, (set, frozenset, list, tuple)):
            raise TypeError(f"allowed_special={short_repr(allowed_special)} has type "
                            f"{type(allowed_special).__name__}; expected {ALLOWED_SPECIAL_HELP}")
        for token in allowed_special:
            if token not in self.special_tokens:
                raise ValueError(
                    f"allowed_special contains {token!r}, which is not a special token of this tokenizer; "
                    f"expected a subset of {sorted(self.special_tokens)}"
                )
        return frozenset(allowed_special)

    def split(self, text: str, allowed: frozenset[str], allowed_special: object) -> Iterator[tuple[str, int | None]]:
        """Yield ``(piece, None)`` for ordinary text and ``(token, id)`` for each special token.

        A special token string that is not in ``allowed`` raises ValueError (``allowed_special``
        is the caller's argument, quoted in the message).
        """
        if self._pattern is None:
            if text:
                yield text, None
            return
        start = 0
        for match in self._pattern.finditer(text):
            token = match.group()
            if token not in allowed:
                raise self.disallowed_error(token, match.start(), allowed_special)
            if match.start() > start:
                yield text[start:match.start()], None
            yield token, self.special_tokens[token]
            start = match.end()
        if start < len(text):
            yield text[start:], None

    def contains_any(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None

    def strip(self, text: str) -> list[str]:
        """The ordinary pieces of ``text`` between special token strings (used for training)."""
        if self._pattern is None:
            return [text]
        return [piece for piece in self._pattern.split(text) if piece]

    def disallowed_error(self, token: str, position: int, allowed_special: object) -> ValueError:
        return ValueError(
            f"text contains the special token {token!r} at index {position}, which "
            f"allowed_special={short_repr(allowed_special)} does not allow. To encode it as its special "
            f"token id {self.special_tokens[token]}, pass allowed_special={{{token!r}}} or "
            "allowed_special='all'; to encode it as ordinary text, pass allowed_special='none' "
            "or use encode_ordinary(text)."
        )
