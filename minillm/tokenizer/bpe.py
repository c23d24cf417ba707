"""Byte-level BPE tokenizer (GPT-2/GPT-4 style): train, encode, decode, save, load.

Vocabulary
----------
- ids 0..255: the 256 single bytes, so every Unicode string can be encoded (its UTF-8 bytes) and
  ``decode(encode(s)) == s`` always holds. Trained tokenizers use id = byte value.
- ids 256..256+M-1: the M merges, in the order they were learned; the id is the merge's rank.
- then the special tokens (``<|endoftext|>``...), so ``vocab_size`` = 256 + M + number of special
  tokens when they are numbered consecutively (files from elsewhere may leave gaps: then
  ``vocab_size`` is the largest id + 1, the size an embedding table needs).

Text -> ids: special token strings are handled first (see ``special``), the rest is cut into
chunks by the split pattern (``patterns``), and each chunk's bytes are merged (``merge``). Chunk
results are cached in a bounded dict: natural text repeats a few tens of thousands of words, so
after warm-up most chunks cost one dict lookup.

Lone surrogates (U+D800..U+DFFF, possible in a Python str but not valid Unicode text) have no
UTF-8 encoding: ``encode`` and ``train`` reject them with a ValueError naming the position.
"""
from __future__ import annotations

import os
import threading
from itertools import chain, islice
from typing import Iterable, Iterator

from . import formats, huggingface
from .base import TokenizerBase
from .checks import (
    assign_special_ids,
    check_byte_ids,
    check_ids,
    check_merges,
    check_special_token_list,
    check_text,
    short_repr,
    surrogate_error,
)
from .merge import apply_merges, merges_from_ranked_tokens
from .patterns import Splitter, last_safe_cut, resolve_pattern
from .special import SpecialTokenMatcher
from .training import count_chunks, learn_merges

BLOCK_CHARS = 1 << 20  # long texts are pre-tokenized in blocks of about this many characters
CACHEABLE_CHUNK_CHARS = 256  # longer chunks (rare except with pattern=None) are not cached


class BPETokenizer(TokenizerBase):
    """Byte-level BPE tokenizer; see the module docstring for the vocabulary layout.

    Build one with ``BPETokenizer.train``, ``load``, ``from_dict``, ``load_tiktoken`` or
    ``from_gpt2``; the constructor takes the learned parts directly: ``merges`` (list of
    ``(left_id, right_id)``; merge k makes id 256 + k), ``pattern`` (``"gpt2"``, ``"gpt4"``, a regex
    string or None), ``special_tokens`` (list of str, numbered after the merges, or dict str -> id)
    and ``byte_ids`` (``byte_ids[b]`` = id of byte ``b``; default: the byte value).

    ``cache_size`` bounds the chunk cache (entries); when full, the older half is dropped. One
    tokenizer may be shared by several threads.
    """

    cache_size = 1 << 17

    def __init__(self, merges: list[tuple[int, int]], pattern: str | None = "gpt4",
                 special_tokens: list[str] | dict[str, int] | None = None, byte_ids: list[int] | None = None):
        self._pattern_name, self._pattern = resolve_pattern(pattern)
        self._splitter = Splitter(self._pattern, named=self._pattern_name is not None)
        self._byte_ids = check_byte_ids(byte_ids)
        self._merge_list = check_merges(merges)
        vocab = [b""] * 256
        for byte, token_id in enumerate(self._byte_ids):
            vocab[token_id] = bytes([byte])
        for left, right in self._merge_list:
            vocab.append(vocab[left] + vocab[right])
        first_id = {}
        for token_id, token in enumerate(vocab):
            if token in first_id:
                raise ValueError(f"merges make the token {token!r} twice (ids {first_id[token]} and {token_id}); "
                                 "expected every token to have distinct bytes, as BPE training guarantees")
            first_id[token] = token_id
        self._vocab: list[bytes] = vocab
        self._merges = {pair: 256 + k for k, pair in enumerate(self._merge_list)}
        self._identity_bytes = self._byte_ids == list(range(256))
        self._special_tokens = assign_special_ids(special_tokens, len(vocab))
        self._rebuild_special_tables()
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_lock = threading.Lock()

    def _rebuild_special_tables(self) -> None:
        self._matcher = SpecialTokenMatcher(self._special_tokens)
        size = max([len(self._vocab)] + [token_id + 1 for token_id in self._special_tokens.values()])
        decoder: list[bytes | None] = list(self._vocab) + [None] * (size - len(self._vocab))
        for token, token_id in self._special_tokens.items():
            decoder[token_id] = token.encode("utf-8")
        self._decoder = decoder

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int, pattern: str | None = "gpt4",
              special_tokens: list[str] | None = None, verbose: bool = False) -> "BPETokenizer":
        """Learn a tokenizer of ``vocab_size`` tokens (bytes + merges + special tokens) from ``texts``.

        ``texts`` is one str or an iterable of str (documents, lines, files: each is pre-tokenized
        on its own; a generator is read once). Special token strings found in the texts are cut
        out and never merged. Training stops early, with a warning, if every chunk becomes a
        single token first. See ``training`` for the algorithm and the tie-break rule.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
            raise TypeError(f"texts={short_repr(texts)} has type {type(texts).__name__}; expected a str "
                            "or an iterable of str")
        specials = check_special_token_list(special_tokens)
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise TypeError(f"vocab_size={vocab_size!r} has type {type(vocab_size).__name__}; expected int")
        minimum = 256 + len(specials)
        if vocab_size < minimum:
            raise ValueError(f"vocab_size={vocab_size} is too small; expected at least 256 (byte tokens) + "
                             f"{len(specials)} (special tokens) = {minimum}")
        pattern_name, pattern_string = resolve_pattern(pattern)
        splitter = Splitter(pattern_string, named=pattern_name is not None)
        matcher = SpecialTokenMatcher({token: index for index, token in enumerate(specials)})
        chunk_counts = count_chunks(texts, splitter, matcher, verbose=verbose)
        merges = learn_merges(chunk_counts, vocab_size - minimum, verbose=verbose)
        return cls(merges, pattern=pattern_string, special_tokens=specials)

    # ------------------------------------------------------------------------------------------
    # properties
    # ------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids (bytes + merges + special tokens): the embedding table size."""
        return len(self._decoder)

    @property
    def pattern(self) -> str | None:
        """The split regex (None: no pre-tokenization)."""
        return self._pattern

    @property
    def pattern_name(self) -> str | None:
        """``"gpt2"``, ``"gpt4"``, or None for a custom pattern or no split."""
        return self._pattern_name

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The merges in learning order; merge k makes token id 256 + k."""
        return list(self._merge_list)

    @property
    def byte_ids(self) -> list[int]:
        return list(self._byte_ids)

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """``{token bytes: rank}`` for every non-special token, tiktoken's convention (rank = id)."""
        return {token: token_id for token_id, token in enumerate(self._vocab)}

    @property
    def vocab(self) -> dict[int, bytes]:
        """``{id: bytes}`` for every token, special tokens as their UTF-8 bytes."""
        return {token_id: token for token_id, token in enumerate(self._decoder) if token is not None}

    # ------------------------------------------------------------------------------------------
    # encoding
    # ------------------------------------------------------------------------------------------

    def encode(self, text: str, allowed_special: object = "none_raise") -> list[int]:
        """Token ids of ``text``. ``allowed_special``: ``"none_raise"`` (default: a special token
        string in the text raises ValueError), ``"none"`` (encode them as text), ``"all"``, or a set
        of the special tokens to allow (others raise). Overlapping special tokens: longest wins."""
        text = check_text(text)
        allowed = self._matcher.resolve_allowed(allowed_special)
        if allowed is None or not self._special_tokens:
            return self.encode_ordinary(text)
        ids: list[int] = []
        try:
            for piece, special_id in self._matcher.split(text, allowed, allowed_special):
                if special_id is None:
                    ids += self._encode_ordinary(piece)
                else:
                    ids.append(special_id)
        except UnicodeEncodeError:
            raise surrogate_error(text) from None
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text``, treating special token strings as ordinary text."""
        text = check_text(text)
        try:
            return self._encode_ordinary(text)
        except UnicodeEncodeError:
            raise surrogate_error(text) from None

    def encode_iterable(self, texts: Iterable[str], allowed_special: object = "none_raise",
                        buffer_chars: int = 1 << 16) -> Iterator[int]:
        """Stream the ids of the concatenation of ``texts`` (e.g. the lines of an open file).

        Memory stays bounded by about ``buffer_chars`` plus one line: pieces are buffered and cut at
        safe points (after a newline between two non-space characters, see ``patterns``), so for
        the named patterns the ids equal ``encode("".join(texts))``. With a custom pattern or
        ``pattern=None`` the same cuts are used and each piece is encoded on its own (with no
        split, merges then never cross those cuts). A special token string that contains such a
        newline could be cut in two; special tokens without newlines are always found.
        """
        if isinstance(texts, (str, bytes, bytearray)):
            raise TypeError(f"texts={short_repr(texts)} is a single {type(texts).__name__}; expected an "
                            "iterable of str such as an open text file (use encode() for one text)")
        if not isinstance(buffer_chars, int) or buffer_chars < 1:
            raise ValueError(f"buffer_chars={buffer_chars!r}; expected a positive int")
        self._matcher.resolve_allowed(allowed_special)  # fail now, not at the first next()
        return self._encode_stream(iter(texts), allowed_special, buffer_chars)

    def _encode_stream(self, texts: Iterator[str], allowed_special: object, buffer_chars: int) -> Iterator[int]:
        pending: list[str] = []
        pending_chars = 0
        threshold = buffer_chars
        for index, piece in enumerate(texts):
            pending.append(check_text(piece, f"texts[{index}]"))
            pending_chars += len(piece)
            if pending_chars < threshold:
                continue
            buffer = "".join(pending)
            cut = last_safe_cut(buffer)
            if cut is None:  # no safe cut yet (one very long line): wait for more text
                pending, threshold = [buffer], 2 * pending_chars
                continue
            yield from self.encode(buffer[:cut], allowed_special)
            rest = buffer[cut:]
            pending, pending_chars = [rest], len(rest)
            threshold = max(buffer_chars, 2 * len(rest))
        if pending_chars:
            yield from self.encode("".join(pending), allowed_special)

    def _encode_ordinary(self, text: str) -> list[int]:
        if len(text) <= BLOCK_CHARS:
            return self._encode_block(text)
        ids: list[int] = []
        for block in self._splitter.blocks(text, BLOCK_CHARS):
            ids += self._encode_block(block)
        return ids

    def _encode_block(self, text: str) -> list[int]:
        """Split, look every chunk up in the cache; on a miss, BPE-encode all new chunks first.

        The lookups (``map``) and the search for misses (a set difference) run in C, so with a
        warm cache encoding costs the regex split plus one dict lookup per chunk.
        """
        chunks = self._splitter.split(text)
        cache = self._cache
        # The lock keeps another thread from trimming the cache between filling and reading it.
        with self._cache_lock:
            try:
                return list(chain.from_iterable(map(cache.__getitem__, chunks)))
            except KeyError:
                pass  # some chunks are new
            missing = set(chunks).difference(cache)
            # sorted: the cache's order (which decides what is trimmed) does not depend on hashing
            cache.update({chunk: self._bpe_chunk(chunk) for chunk in sorted(missing)})
            encoded = list(chain.from_iterable(map(cache.__getitem__, chunks)))
            self._trim_cache(missing)
        return encoded

    def _bpe_chunk(self, chunk: str) -> tuple[int, ...]:
        """BPE-encode one chunk (no cache). Raises UnicodeEncodeError on lone surrogates."""
        data = chunk.encode("utf-8")
        byte_ids = list(data) if self._identity_bytes else [self._byte_ids[byte] for byte in data]
        return tuple(apply_merges(byte_ids, self._merges))

    def _trim_cache(self, added: set[str]) -> None:
        cache = self._cache
        for chunk in added:
            if len(chunk) > CACHEABLE_CHUNK_CHARS:  # long chunks (pattern=None) are not worth keeping
                del cache[chunk]
        if len(cache) > self.cache_size:
            # Drop the older half (dicts keep insertion order): frequent chunks come back quickly.
            for chunk in list(islice(cache, len(cache) - self.cache_size // 2)):
                del cache[chunk]

    # ------------------------------------------------------------------------------------------
    # decoding
    # ------------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of the tokens ``ids`` (any iterable of int, e.g. a list or a NumPy array)."""
        return b"".join(check_ids(ids, self._decoder, self.vocab_size))

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------------------------------
    # special tokens, inspection
    # ------------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        pattern = self._pattern_name or ("custom" if self._pattern is not None else None)
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merge_list)}, "
                f"pattern={pattern!r}, special_tokens={list(self._special_tokens)})")

    # ------------------------------------------------------------------------------------------
    # files and dicts
    # ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-serializable dict (the ``save`` format, see ``formats``)."""
        return {
            "format": formats.FORMAT_NAME,
            "version": formats.FORMAT_VERSION,
            "type": "bpe",
            "pattern_name": self._pattern_name,
            "pattern": self._pattern,
            "byte_ids": list(self._byte_ids),
            "merges": [[left, right, formats.render_token(self._vocab[256 + k])]
                       for k, (left, right) in enumerate(self._merge_list)],
            "special_tokens": dict(self._special_tokens),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "BPETokenizer":
        return cls._from_dict(data, "tokenizer dict")

    @classmethod
    def _from_dict(cls, data: dict, source: str) -> "BPETokenizer":
        formats.check_header(data, source, expected_type="bpe")
        pattern = formats.require_field(data, "pattern", str, source, allow_none=True)
        pattern_name = formats.require_field(data, "pattern_name", str, source, allow_none=True)
        byte_ids = formats.check_int_list(formats.require_field(data, "byte_ids", list, source), source, "byte_ids")
        raw_merges = formats.require_field(data, "merges", list, source)
        special_tokens = formats.require_field(data, "special_tokens", dict, source)
        merges, shown = [], []
        for k, entry in enumerate(raw_merges):
            if (not isinstance(entry, list) or len(entry) not in (2, 3)
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry[:2])
                    or (len(entry) == 3 and not isinstance(entry[2], str))):
                raise ValueError(f"{source}: merges[{k}]={entry!r:.80} is not [left_id, right_id, text]")
            merges.append((entry[0], entry[1]))
            shown.append(entry[2] if len(entry) == 3 else None)
        try:
            tokenizer = cls(merges, pattern=pattern, special_tokens=special_tokens, byte_ids=byte_ids)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}: {exc}") from None
        if pattern_name != tokenizer.pattern_name:
            raise ValueError(f"{source}: pattern_name is {pattern_name!r} but the pattern is "
                             f"{short_repr(pattern)}; the file is inconsistent")
        for k, text in enumerate(shown):
            if text is not None and text != formats.render_token(tokenizer._vocab[256 + k]):
                raise ValueError(f"{source}: merges[{k}] shows {text!r} but makes "
                                 f"{formats.render_token(tokenizer._vocab[256 + k])!r}; the file is corrupt")
        return tokenizer

    def save_tiktoken(self, path: str | os.PathLike) -> None:
        """Write tiktoken's rank file (``base64 rank`` lines; special tokens are not included)."""
        formats.write_tiktoken_ranks(path, self._vocab)

    @classmethod
    def load_tiktoken(cls, path: str | os.PathLike, pattern: str | None = "gpt4",
                      special_tokens: list[str] | dict[str, int] | None = None) -> "BPETokenizer":
        """Read a tiktoken rank file; the merges are recovered from the ranks (see ``merge``)."""
        tokens = formats.read_tiktoken_ranks(path)
        byte_ids, merges = merges_from_ranked_tokens(tokens, f"tiktoken file {os.fspath(path)!r}")
        return cls(merges, pattern=pattern, special_tokens=special_tokens, byte_ids=byte_ids)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "BPETokenizer":
        """A Hugging Face byte-level BPE tokenizer: a folder with ``tokenizer.json`` (GPT-2, Llama 3,
        Qwen2 style) or ``vocab.json`` + ``merges.txt`` (GPT-2's layout), or the ``tokenizer.json``
        file itself. Ids equal HF's ``encode(text, add_special_tokens=False)`` with the added tokens
        allowed (``encode(text, allowed_special="all")``). What minillm cannot reproduce (another
        model type, a normalizer, byte fallback...) is refused naming the field; see ``huggingface``."""
        byte_ids, merges, special_tokens, pattern = huggingface.read_pretrained(path)
        try:
            return cls(merges, pattern=pattern, special_tokens=special_tokens, byte_ids=byte_ids)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"tokenizer {os.fspath(path)!r}: {exc}") from None

    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False) -> list[str]:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into
        ``directory`` so that ``transformers.AutoTokenizer.from_pretrained(directory)`` gives these
        ids; existing files are kept unless ``overwrite``. Returns the paths written."""
        return huggingface.save_pretrained(self, directory, overwrite=overwrite)

    @classmethod
    def from_gpt2(cls, encoder_json_path: str | os.PathLike, vocab_bpe_path: str | os.PathLike,
                  pattern: str | None = "gpt2") -> "BPETokenizer":
        """GPT-2's tokenizer from its published ``encoder.json`` and ``vocab.bpe``: same ids, same
        splits (``<|endoftext|>`` and any other id past the merges become special tokens)."""
        byte_ids, merges, special_tokens = formats.read_gpt2_files(encoder_json_path, vocab_bpe_path)
        return cls(merges, pattern=pattern, special_tokens=special_tokens, byte_ids=byte_ids)
