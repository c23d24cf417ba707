"""Pre-tokenization: the regex split patterns that cut text into chunks before BPE.

BPE never merges across chunk boundaries, so the split pattern decides which byte sequences can
ever become one token (a word with its leading space, a run of digits, a run of punctuation...).

Named patterns
--------------
``"gpt2"``  GPT-2's pattern, exactly as in OpenAI's ``encoder.py`` (contractions, optional space +
            letters, optional space + digits, optional space + other symbols, whitespace runs).
``"gpt4"``  The cl100k_base pattern of GPT-3.5/GPT-4, exactly as in tiktoken: case-insensitive
            contractions, a letter run with at most one leading non-letter, numbers in groups of
            at most three digits, punctuation runs with trailing newlines, newline runs.
``None``    No split: every text is one chunk (BPE over raw bytes).

Any other string is compiled with the ``regex`` package (``\\p{L}`` etc. need it) and used as a
custom pattern. A custom pattern must match every character of the text, otherwise text would be
silently dropped; ``Splitter.split`` checks that and raises.

Safe cut points
---------------
Large texts are pre-tokenized block by block to bound memory, and ``encode_iterable`` streams. For
the named patterns there is a place where cutting the text provably changes no chunk: right after
a ``"\\n"`` that sits between two non-whitespace characters (``"x\\ny"``). No match of either
pattern extends past that newline into the next character (letter and number runs stop before
whitespace, GPT-4's punctuation run may take the newline but stops after it, and the whitespace
run there is the single ``"\\n"``), and the end-of-text sensitive pieces (``(?!\\S)``, ``$``) give
that ``"\\n"`` the same span whether text follows or not. The tests check blockwise == whole
splitting on random texts.
"""
from __future__ import annotations

import re
from typing import Iterator

import regex

GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
NAMED_PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}

# ASCII-only twins of the named patterns, for the stdlib ``re`` engine, which splits ASCII text
# about 3x faster than ``regex`` (and the split dominates encoding time). Restricted to ASCII,
# \p{L} is [A-Za-z], \p{N} is [0-9] and \s (Unicode White_Space) is [\t\n\x0b\x0c\r ]; spelled out
# because stdlib \s would also match \x1c-\x1f. Used only on text for which str.isascii() holds,
# where they give exactly the same chunks (tested on random and real text).
_WS = r"\t\n\x0b\x0c\r "
_ASCII_TWINS = {
    GPT2_SPLIT_PATTERN: (
        rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
    ),
    GPT4_SPLIT_PATTERN: (
        rf"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?+[A-Za-z]++|[0-9]{{1,3}}+| ?[^{_WS}A-Za-z0-9]++[\r\n]*+"""
        rf"""|[{_WS}]++$|[{_WS}]*[\r\n]|[{_WS}]+(?![^{_WS}])|[{_WS}]"""
    ),
}

# A newline between two non-whitespace characters: cutting right after it is safe (see above).
_SAFE_CUT = regex.compile(r"(?<=\S\n)(?=\S)")


def resolve_pattern(pattern: str | None) -> tuple[str | None, str | None]:
    """Map the ``pattern`` argument to ``(name, pattern_string)``.

    ``"gpt2"``/``"gpt4"`` -> (name, its string); ``None`` -> (None, None); any other string is a
    custom pattern -> (None, string), compiled once here so a bad pattern fails early.
    """
    if pattern is None:
        return None, None
    if not isinstance(pattern, str):
        raise TypeError(
            f"pattern={pattern!r} has type {type(pattern).__name__}; expected 'gpt2', 'gpt4', "
            "a regex pattern string, or None (no pre-tokenization)"
        )
    if pattern in NAMED_PATTERNS:
        return pattern, NAMED_PATTERNS[pattern]
    for name, pattern_string in NAMED_PATTERNS.items():
        if pattern == pattern_string:  # a named pattern spelled out (e.g. read back from a file)
            return name, pattern_string
    if pattern == "":
        raise ValueError("pattern='' is empty; expected 'gpt2', 'gpt4', a regex pattern string, or None")
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"pattern={pattern!r} is not a valid regex ({exc}); expected 'gpt2', 'gpt4', "
                         "a regex pattern string, or None") from None
    return None, pattern


class Splitter:
    """Cuts text into pre-tokenization chunks with one compiled pattern.

    ``split(text)`` returns the chunks (``regex.findall``); for a custom pattern it also checks that
    the chunks cover the whole text. ``blocks(text)`` yields pieces of a long text cut at safe
    points, so that splitting the pieces gives exactly the chunks of the whole.
    """

    def __init__(self, pattern_string: str | None, named: bool):
        self.pattern_string = pattern_string
        self.named = named
        self._compiled = regex.compile(pattern_string) if pattern_string is not None else None
        self._findall_ascii = None
        ascii_twin = _ASCII_TWINS.get(pattern_string) if named else None
        if ascii_twin is not None:
            try:
                self._findall_ascii = re.compile(ascii_twin).findall
            except re.error:  # Python < 3.11: stdlib re has no possessive quantifiers; use regex only
                pass

    def split(self, text: str) -> list[str]:
        if self._compiled is None:
            return [text] if text else []
        if self._findall_ascii is not None and text.isascii():  # isascii() is O(1) for str
            return self._findall_ascii(text)
        if self._compiled.groups:  # findall would return the groups, not the whole matches
            chunks = [match.group() for match in self._compiled.finditer(text)]
        else:
            chunks = self._compiled.findall(text)
        if not self.named:
            self._check_coverage(text, chunks)
        return chunks

    def _check_coverage(self, text: str, chunks: list[str]) -> None:
        # A custom pattern that skips characters would make decode(encode(s)) != s. findall's
        # matches are in order and disjoint, so they cover the text iff the lengths add up.
        if sum(map(len, chunks)) == len(text):
            return
        position = 0
        for chunk in chunks:
            found = text.find(chunk, position)
            if found != position:
                break
            position += len(chunk)
        raise ValueError(
            f"pattern={self.pattern_string!r} does not match the text at index {position} "
            f"(character {text[position:position + 1]!r}); a split pattern must match every "
            "character, otherwise that text would be lost. Add a fallback alternative such as '|\\s+|.'"
        )

    def blocks(self, text: str, block_chars: int = 1 << 20) -> Iterator[str]:
        """Yield consecutive pieces of ``text`` of about ``block_chars`` characters each.

        Pieces end at safe cut points (see the module docstring) when the pattern is a named one,
        so chunks never straddle two pieces. For custom patterns and ``None`` no cut is known to be
        safe, so the whole text is yielded as one piece.
        """
        if not self.named or len(text) <= block_chars:
            if text:
                yield text
            return
        start = 0
        while len(text) - start > block_chars:
            cut = find_safe_cut(text, start + block_chars)
            if cut is None:
                break
            yield text[start:cut]
            start = cut
        if start < len(text):
            yield text[start:]


def find_safe_cut(text: str, position: int, end: int | None = None) -> int | None:
    """The first safe cut point at or after ``position`` (and before ``end``), or None."""
    match = _SAFE_CUT.search(text, position, len(text) if end is None else end)
    return match.start() if match else None


def last_safe_cut(text: str) -> int | None:
    """The last safe cut point in ``text`` (an index where the text may be split), or None."""
    # Search backwards from the end in growing windows: the cut is usually within the last line.
    window = 4096
    while True:
        start = max(0, len(text) - window)
        # (The lookbehind sees the characters before ``start``, so no cut is missed at the edge.)
        cuts = list(_SAFE_CUT.finditer(text, start))
        if cuts:
            return cuts[-1].start()
        if start == 0:
            return None
        window *= 4
