"""Tokenizer files: minillm's own JSON format, tiktoken rank files, GPT-2's encoder.json + vocab.bpe.

minillm JSON (``save``/``load``, version 1)
-------------------------------------------
One UTF-8 JSON object, written atomically, one merge per line so that it reads (and diffs) well::

    {
      "format": "minillm-tokenizer",
      "version": 1,
      "type": "bpe",                       # or "char" (CharTokenizer)
      "pattern_name": "gpt4",              # "gpt2", "gpt4" or null (custom pattern / no split)
      "pattern": "'(?i:[sdmt]|ll|...",     # the split regex itself, or null for no split
      "byte_ids": [0, 1, ..., 255],        # byte_ids[b] = token id of the single byte b
      "merges": [                          # merge k makes token id 256 + k
        [116, 104, "th"],                  # [left id, right id, the new token shown as text]
        ...
      ],
      "special_tokens": {"<|endoftext|>": 4095}
    }

The shown text is the token's bytes decoded as UTF-8 with ``\\xNN`` escapes for bytes that are not
valid UTF-8 on their own; it is for people and is checked on load (a mismatch means the file
was edited or damaged).

tiktoken rank files (``save_tiktoken``/``load_tiktoken``)
---------------------------------------------------------
One line per token, ``<base64 of the token's bytes> <rank>``, ranks 0..N-1 (the rank is the
token id). Special tokens are not part of this format; pass them when loading.

GPT-2's published files (``from_gpt2``)
---------------------------------------
``encoder.json`` maps token strings to ids and ``vocab.bpe`` lists the merges (``#version`` line,
then ``left right`` per line, in merge order). Token strings are bytes spelled with GPT-2's
byte-to-unicode table (``bytes_to_unicode``), which maps every byte to a printable character so
that the files hold no spaces or control characters (the space byte is ``Ġ``).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import stat

from ..fileio import atomic_write_text
from ..serialization import JSONTooDeepError, _reject_duplicate_keys, loads_json_bounded

FORMAT_NAME = "minillm-tokenizer"
FORMAT_VERSION = 1
# The largest tokenizer file read (each of the formats below). A real one is far smaller: ~25 bytes
# per merge in minillm's format, so ~6 MB for a 256k vocabulary (the same 16 MiB bounds a checkpoint's
# header, which holds the tokenizer too); GPT-2's encoder.json is 1 MB, cl100k_base.tiktoken 1.7 MB.
# Parsed JSON takes many times its text in Python objects, so a hostile file is refused before that.
MAX_TOKENIZER_FILE_BYTES = 16 * 2 ** 20
# How deep the brackets of each JSON format nest: {"merges": [[l, r, "text"], ...]} is 3 levels,
# GPT-2's encoder.json ({"token": id, ...}) 1.
TOKENIZER_JSON_DEPTH = 3
GPT2_ENCODER_JSON_DEPTH = 1


def read_file_bounded(path: str, source: str, max_bytes: int = MAX_TOKENIZER_FILE_BYTES) -> bytes:
    """The bytes of ``path``, refusing (ValueError naming ``source``) a file over ``max_bytes``
    before reading it (and never reading more than ``max_bytes + 1`` bytes of anything)."""
    with open(path, "rb") as handle:
        status = os.fstat(handle.fileno())
        regular = stat.S_ISREG(status.st_mode)
        if regular and status.st_size > max_bytes:
            raise ValueError(f"{source} is {status.st_size:,} bytes, more than the {max_bytes:,}-byte limit for "
                             "tokenizer files (minillm.tokenizer.formats.MAX_TOKENIZER_FILE_BYTES); it is not a "
                             "tokenizer, or a hostile or broken one")
        # read(n) allocates n bytes first: ask a regular file for what it holds (plus one, were it to grow).
        raw = handle.read((status.st_size if regular else max_bytes) + 1)
    if len(raw) > max_bytes:
        raise ValueError(f"{source} holds more than {max_bytes:,} bytes, the limit for tokenizer files "
                         "(minillm.tokenizer.formats.MAX_TOKENIZER_FILE_BYTES)")
    return raw


def loads_file_json(raw: bytes, source: str, max_depth: int, shape: str, label: str = "JSON"):
    """JSON ``raw`` parsed with its nesting bounded to ``max_depth`` and duplicate keys refused;
    every fault a ValueError naming ``source`` (``shape`` says what the format looks like)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source} is not UTF-8 text (byte {exc.start}); corrupt file?") from None
    try:
        return loads_json_bounded(text, max_depth, object_pairs_hook=_reject_duplicate_keys)
    except JSONTooDeepError as exc:
        raise ValueError(f"{source} nests JSON arrays or objects too deeply to read ({exc}; the format is {shape}: "
                         f"{max_depth} levels at most); the file is corrupt or not a tokenizer") from None
    except ValueError as exc:
        raise ValueError(f"{source} is not valid {label} ({exc}); the file is truncated or corrupt") from None


def render_token(data: bytes) -> str:
    """A token's bytes as readable text: UTF-8 where valid, ``\\xNN`` escapes for other bytes."""
    return data.decode("utf-8", errors="backslashreplace")


# ----------------------------------------------------------------------------------------------
# minillm JSON
# ----------------------------------------------------------------------------------------------

def dumps_tokenizer_json(data: dict) -> str:
    """JSON text with one element per line for lists of lists (the merges), the rest compact."""
    lines = ["{"]
    items = list(data.items())
    for position, (key, value) in enumerate(items):
        comma = "," if position < len(items) - 1 else ""
        if isinstance(value, list) and value and isinstance(value[0], list):
            inner = ",\n".join("    " + json.dumps(element, ensure_ascii=False) for element in value)
            lines.append(f"  {json.dumps(key)}: [\n{inner}\n  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_tokenizer_json(path: str | os.PathLike, data: dict) -> None:
    atomic_write_text(path, dumps_tokenizer_json(data))


def read_tokenizer_json(path: str | os.PathLike) -> dict:
    """Read a minillm tokenizer file; a damaged file raises ValueError naming it."""
    path = os.fspath(path)
    source = f"tokenizer file {path!r}"
    raw = read_file_bounded(path, source)
    data = loads_file_json(raw, source, TOKENIZER_JSON_DEPTH, "one object; lists of [left, right, text] in merges")
    check_header(data, source=f"tokenizer file {path!r}")
    return data


def check_header(data: object, source: str, expected_type: str | None = None) -> None:
    """``data`` must be a dict with our format name, a supported version and (optionally) the type."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object (dict), got {type(data).__name__}")
    if data.get("format") != FORMAT_NAME:
        raise ValueError(f"{source}: 'format' is {data.get('format')!r}; expected {FORMAT_NAME!r}")
    if type(data.get("version")) is not int or data.get("version") != FORMAT_VERSION:
        raise ValueError(f"{source}: 'version' is {data.get('version')!r}; this minillm reads version "
                         f"{FORMAT_VERSION}")
    if expected_type is not None and data.get("type") != expected_type:
        raise ValueError(f"{source}: 'type' is {data.get('type')!r}; expected {expected_type!r}")


def require_field(data: dict, key: str, types: type | tuple, source: str, allow_none: bool = False):
    """``data[key]``, which must exist and have one of ``types`` (or be None if ``allow_none``)."""
    if key not in data:
        raise ValueError(f"{source}: missing the field {key!r}")
    value = data[key]
    if value is None and allow_none:
        return None
    if not isinstance(value, types) or isinstance(value, bool):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise ValueError(f"{source}: field {key!r} is {type(value).__name__} {value!r:.80}; expected {names}")
    return value


def check_int_list(values: object, source: str, what: str) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{source}: {what} must be a list of int, got {values!r:.80}")
    return values


# ----------------------------------------------------------------------------------------------
# tiktoken rank files
# ----------------------------------------------------------------------------------------------

def write_tiktoken_ranks(path: str | os.PathLike, tokens: list[bytes]) -> None:
    """Write ``tokens`` (token ``i`` has rank ``i``) as ``base64 rank`` lines, atomically."""
    lines = [f"{base64.b64encode(token).decode('ascii')} {rank}\n" for rank, token in enumerate(tokens)]
    atomic_write_text(path, "".join(lines))


def read_tiktoken_ranks(path: str | os.PathLike) -> list[bytes]:
    """Read a tiktoken rank file; returns the tokens in rank order (ranks must be 0..N-1)."""
    path = os.fspath(path)
    source = f"tiktoken file {path!r}"
    raw = read_file_bounded(path, source)
    by_rank: dict[int, bytes] = {}
    rank_of: dict[bytes, int] = {}
    for line_number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        shown = line[:80].decode("ascii", errors="backslashreplace")
        if len(fields) != 2:
            raise ValueError(f"{source}, line {line_number}: expected '<base64 token> <rank>', got "
                             f"{shown!r}; the file is truncated or corrupt")
        try:
            token = base64.b64decode(fields[0], validate=True)
            rank = int(fields[1])
        except (binascii.Error, ValueError):
            raise ValueError(f"{source}, line {line_number}: {shown!r} is not '<base64 token> "
                             "<int rank>'; the file is truncated or corrupt") from None
        if not token:
            raise ValueError(f"{source}, line {line_number}: the token is empty")
        if rank in by_rank:
            raise ValueError(f"{source}, line {line_number}: rank {rank} appears twice")
        if token in rank_of:
            raise ValueError(f"{source}, line {line_number}: token {token!r} appears twice (ranks "
                             f"{rank_of[token]} and {rank})")
        by_rank[rank] = token
        rank_of[token] = rank
    if not by_rank:
        raise ValueError(f"{source}: holds no tokens; the file is empty or truncated")
    missing = [rank for rank in range(len(by_rank)) if rank not in by_rank]
    if missing:
        raise ValueError(f"{source}: ranks must be 0..{len(by_rank) - 1} without gaps, but rank {missing[0]} "
                         "is missing")
    return [by_rank[rank] for rank in range(len(by_rank))]


# ----------------------------------------------------------------------------------------------
# GPT-2's encoder.json + vocab.bpe
# ----------------------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table.

    The 188 bytes that are printable Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``)
    stand for themselves; the other 68 (control characters, space, ``\\xad``...) are mapped, in
    byte order, to the characters U+0100, U+0101, ... (so the space byte 0x20 becomes ``Ġ``).
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def read_gpt2_files(encoder_json_path: str | os.PathLike, vocab_bpe_path: str | os.PathLike
                    ) -> tuple[list[int], list[tuple[int, int]], dict[str, int]]:
    """Parse GPT-2's pair of files into ``(byte_ids, merges, special_tokens)``.

    Checks that the byte tokens have ids 0..255, that merge k makes the token with id 256 + k
    (true for GPT-2's files: ids follow merge order), and treats every encoder entry with a
    larger id (``<|endoftext|>`` = 50256) as a special token.
    """
    encoder_path, vocab_path = os.fspath(encoder_json_path), os.fspath(vocab_bpe_path)
    encoder_source, vocab_source = f"GPT-2 encoder file {encoder_path!r}", f"GPT-2 merges file {vocab_path!r}"
    encoder = loads_file_json(read_file_bounded(encoder_path, encoder_source), encoder_source,
                              GPT2_ENCODER_JSON_DEPTH, "one object of token string -> id", "UTF-8 JSON")
    if not isinstance(encoder, dict) or not all(
            isinstance(key, str) and isinstance(value, int) and not isinstance(value, bool)
            for key, value in encoder.items()):
        raise ValueError(f"{encoder_source}: expected a JSON object mapping token strings to int ids")

    def lookup(token: str, source: str) -> int:
        if token not in encoder:
            raise ValueError(f"{source}: the token {token!r} is not in {encoder_source}")
        return encoder[token]

    byte_ids = [0] * 256
    for byte, char in bytes_to_unicode().items():
        byte_ids[byte] = lookup(char, encoder_source)
    if sorted(byte_ids) != list(range(256)):
        raise ValueError(f"{encoder_source}: the 256 byte tokens must have ids 0..255")

    raw_merges = read_file_bounded(vocab_path, vocab_source)
    try:
        merge_lines = raw_merges.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{vocab_source} is not UTF-8 text (byte {exc.start}); truncated or corrupt?") from None
    merges: list[tuple[int, int]] = []
    for line_number, line in enumerate(merge_lines, start=1):
        line = line.rstrip("\r")
        if not line or (line_number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(f"{vocab_source}, line {line_number}: expected 'left right' (two tokens separated "
                             f"by one space), got {line[:80]!r}")
        where = f"{vocab_source}, line {line_number}"
        left, right, merged = lookup(parts[0], where), lookup(parts[1], where), lookup(parts[0] + parts[1], where)
        expected = 256 + len(merges)
        if merged != expected:
            raise ValueError(f"{where}: the merge {line!r} makes {parts[0] + parts[1]!r}, whose id in "
                             f"{encoder_source} is {merged}; expected {expected} (ids must follow merge order)")
        if left >= expected or right >= expected:
            raise ValueError(f"{where}: the merge {line!r} uses a token that is not made by an earlier merge")
        merges.append((left, right))

    num_tokens = 256 + len(merges)
    special_tokens: dict[str, int] = {}
    for token, token_id in encoder.items():
        if token_id >= num_tokens:
            _check_not_a_missing_merge(token, token_id, encoder, num_tokens, encoder_source, vocab_source)
            special_tokens[token] = token_id
        elif token_id < 0:
            raise ValueError(f"{encoder_source}: the token {token!r} has the negative id {token_id}")
    if len(encoder) - len(special_tokens) != num_tokens:
        raise ValueError(f"{encoder_source}: has {len(encoder) - len(special_tokens)} tokens with ids below "
                         f"{num_tokens}; expected exactly the 256 bytes and the {len(merges)} merges of "
                         f"{vocab_source}")
    return byte_ids, merges, special_tokens


def _check_not_a_missing_merge(token: str, token_id: int, encoder: dict[str, int], num_tokens: int,
                               encoder_source: str, vocab_source: str) -> None:
    """Entries past the merges are special tokens (``<|endoftext|>``), unless the entry is two
    tokens glued together: then it is a merge that the merges file lacks (cut short at a line end,
    which leaves no other trace). Real special tokens are never such a pair: GPT-2's tokens never
    span two pre-tokenization chunks, and ``<|endoftext|>`` spans three."""
    for cut in range(1, len(token)):
        left, right = encoder.get(token[:cut]), encoder.get(token[cut:])
        if left is not None and right is not None and left < num_tokens and right < num_tokens:
            raise ValueError(
                f"{encoder_source} has the token {token!r} (id {token_id}), which is {token[:cut]!r} + "
                f"{token[cut:]!r}, but {vocab_source} has only {num_tokens - 256} merges and no such merge; "
                "the merges file looks truncated"
            )

