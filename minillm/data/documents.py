"""Reading a text corpus from disk as a list of documents.

What a document is (the unit that cleaning filters, de-duplication compares, and the token
stream separates with an end-of-text token):

- a **file** is one document, unless ``doc_separator`` is given, in which case the file's text is
  split on that exact string and every non-empty piece is a document;
- a **folder** contributes every ``*.txt`` file directly inside it (not recursively), in sorted
  file-name order, each file handled as above.

The embedded Shakespeare corpus is one file and therefore one document by default. Its plays
are not separated by a reliable marker (blank-line runs occur inside plays too), so we do not
guess: de-duplication of a single document is a no-op, which is the honest answer for one text.

Files must be UTF-8. A leading byte-order mark (U+FEFF) is dropped. Invalid UTF-8 raises a
``ValueError`` naming the file and the byte offset of the first bad byte; an empty file, a file of
only whitespace (nothing to learn from), a folder without ``*.txt`` files, or a path that is
neither a file nor a folder (a pipe such as ``/dev/stdin``, a device) raises ``ValueError``; a
missing path raises ``FileNotFoundError``.

``read_corpus`` returns the whole corpus as a list. ``expand_inputs`` + ``iter_documents`` are the
streaming side (``minillm prepare``): many inputs (files, folders, glob patterns), JSON-lines files
with a text field, and documents yielded one at a time with where their bytes lie.
"""
from __future__ import annotations

import errno
import glob
import json
import os
from typing import Iterator

from minillm import fileio

_CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
DEFAULT_CORPUS_FILE = "shakespeare_tragedies.txt"


def default_corpus_path() -> str:
    """Absolute path of the embedded default corpus (Shakespeare's tragedies, ~1.16 MB)."""
    path = os.path.join(_CORPUS_DIR, DEFAULT_CORPUS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            errno.ENOENT,
            "the embedded corpus is missing from the installed package (package data not installed?)",
            path,
        )
    return path


def read_text_file(path: str | os.PathLike) -> str:
    """Read one corpus file: :func:`minillm.fileio.read_text_file` (UTF-8, BOM dropped), which
    must hold more than whitespace."""
    text = fileio.read_text_file(path, what="corpus file", allow_empty=False)
    if not text.strip():
        raise ValueError(f"corpus file {os.fspath(path)!r} holds only whitespace ({len(text)} characters); expected "
                         "some text")
    return text


def split_documents(text: str, doc_separator: str) -> list[str]:
    """Split ``text`` on the exact string ``doc_separator``; empty pieces are dropped."""
    if not isinstance(text, str):
        raise TypeError(f"split_documents: text must be str, got {type(text).__name__}")
    if not isinstance(doc_separator, str) or not doc_separator:
        raise ValueError(f"split_documents: doc_separator must be a non-empty str, got {doc_separator!r}")
    return [piece for piece in text.split(doc_separator) if piece.strip()]


def corpus_files(path: str | os.PathLike) -> list[str]:
    """The files that make up a corpus: ``[path]`` for a file, sorted ``*.txt`` files for a folder."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_corpus: path must be str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "corpus path not found", path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ValueError(f"corpus path {path!r} is neither a file nor a folder (a pipe or a device?); expected a "
                         "UTF-8 text file or a folder of *.txt files: save the text to a file first")
    names = sorted(name for name in os.listdir(path)
                   if name.endswith(".txt") and os.path.isfile(os.path.join(path, name)))
    if not names:
        raise ValueError(f"corpus folder {path!r} contains no *.txt files")
    return [os.path.join(path, name) for name in names]


def read_corpus(path: str | os.PathLike, doc_separator: str | None = None) -> list[str]:
    """Read a corpus file or folder into a list of documents (see the module docstring)."""
    documents: list[str] = []
    for file_path in corpus_files(path):
        text = read_text_file(file_path)
        if doc_separator is None:
            documents.append(text)
        else:
            documents.extend(split_documents(text, doc_separator))
    if not documents:
        raise ValueError(f"corpus {os.fspath(path)!r} contains no documents (separator {doc_separator!r})")
    return documents


# ---------------------------------------------------------------------------------------------
# Streaming: many inputs (globs, folders, JSONL), one document at a time
# ---------------------------------------------------------------------------------------------
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_FOLDER_SUFFIXES = (".txt",) + JSONL_SUFFIXES
_GLOB_CHARACTERS = frozenset("*?[")
_BOM = b"\xef\xbb\xbf"
READ_BLOCK_BYTES = 1 << 22


def is_jsonl(path: str) -> bool:
    """Whether a corpus file is read as JSON lines (by its name: ``*.jsonl`` or ``*.ndjson``)."""
    return path.lower().endswith(JSONL_SUFFIXES)


def expand_inputs(inputs: list[str]) -> list[str]:
    """The files of a corpus given as several inputs, in order, each file once.

    Each input is a file; a folder (its ``*.txt``, ``*.jsonl`` and ``*.ndjson`` files directly
    inside, sorted by name); or, when no such path exists and it holds ``*``, ``?`` or ``[``, a glob
    pattern (its matching files, sorted; ``**`` matches folders recursively). A file listed again
    by a later input is skipped. Raises ``ValueError`` naming the input when it matches no file.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[str] = []
    seen: set[str] = set()
    for entry in inputs:
        entry = os.fspath(entry)
        if os.path.isdir(entry):
            matched = [os.path.join(entry, name) for name in sorted(os.listdir(entry))
                       if name.lower().endswith(_FOLDER_SUFFIXES) and os.path.isfile(os.path.join(entry, name))]
            if not matched:
                raise ValueError(f"--input {entry!r} is a folder without *.txt or *.jsonl files; expected text or "
                                 "JSON-lines files")
        elif os.path.exists(entry):
            if not os.path.isfile(entry):
                raise ValueError(f"--input {entry!r} is neither a file nor a folder (a pipe or a device?); expected "
                                 "a UTF-8 text file, a JSON-lines file, a folder or a glob pattern")
            matched = [entry]
        elif _GLOB_CHARACTERS.intersection(entry):
            matched = sorted(path for path in glob.glob(entry, recursive=True) if os.path.isfile(path))
            if not matched:
                raise ValueError(f"--input {entry!r}: the glob pattern matches no files; expected a pattern such as "
                                 "'data/*.jsonl' that names existing files")
        else:
            raise FileNotFoundError(errno.ENOENT, "corpus path not found", entry)
        for path in matched:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                files.append(path)
    if not files:
        raise ValueError("--input: no corpus files given; expected at least one file, folder or glob pattern")
    return files


def _decode(data: bytes, path: str, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"corpus file {path!r} is not UTF-8 text (invalid byte at offset {offset + error.start}: "
                         f"0x{data[error.start]:02x}, {error.reason}); expected UTF-8 encoded text") from None


def _json_text(line: str, path: str, line_number: int, text_field: str) -> str:
    where = f"corpus file {path!r} line {line_number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON ({error.msg} at column {error.colno}); expected one JSON object "
                         f"per line with a {text_field!r} string field") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a JSON {type(record).__name__}, not an object; expected one JSON object per "
                         f"line with a {text_field!r} string field")
    if text_field not in record:
        keys = ", ".join(repr(key) for key in list(record)[:6])
        raise ValueError(f"{where} has no {text_field!r} field (its keys: {keys or 'none'}); expected a "
                         f"{text_field!r} string field, or name the field with --text_field")
    text = record[text_field]
    if not isinstance(text, str):
        raise ValueError(f"{where}: field {text_field!r} is a JSON {type(text).__name__}, expected a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{where}: field {text_field!r} holds a lone surrogate (\\u{ord(text[error.start]):04x} at "
                         f"character {error.start}), which is not Unicode text; expected valid text") from None
    return text


def _iter_jsonl(path: str, file_index: int, text_field: str) -> Iterator[tuple[str, int, int, int]]:
    offset = 0
    found = False
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            start, length = offset, len(raw)
            offset += length
            if line_number == 1 and raw.startswith(_BOM):
                raw, start, length = raw[3:], start + 3, length - 3
            line = _decode(raw, path, start)
            if not line.strip():
                continue                                     # blank lines (a trailing one, say) carry nothing
            found = True
            yield _json_text(line, path, line_number, text_field), file_index, start, length
    if not found:
        what = "is empty" if offset == 0 else "holds only blank lines"
        raise ValueError(f"corpus file {path!r} {what}; expected JSON lines with a {text_field!r} field")


def _iter_separated(path: str, file_index: int, separator: str,
                    block_bytes: int) -> Iterator[tuple[str, int, int, int]]:
    """Pieces of a text file between exact ``separator`` matches, read in blocks of bytes.

    Splitting the UTF-8 bytes on the separator's UTF-8 bytes finds exactly the matches a split of
    the decoded text finds (UTF-8 is self-synchronising), so the pieces are decoded one by one."""
    marker = separator.encode("utf-8")
    buffer = b""
    buffer_start = 0        # file offset of buffer[0]
    searched = 0            # buffer[:searched] holds no complete match
    found = False
    total = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(max(block_bytes, 3))
            at_end = not block
            if total == 0 and block.startswith(_BOM):
                total, block, buffer_start = 3, block[3:], 3
            else:
                total += len(block)
            buffer += block
            while True:
                match = buffer.find(marker, searched)
                if match == -1:
                    break
                piece = _decode(buffer[:match], path, buffer_start)
                if piece.strip():
                    found = True
                    yield piece, file_index, buffer_start, match
                consumed = match + len(marker)
                buffer, buffer_start, searched = buffer[consumed:], buffer_start + consumed, 0
            searched = max(0, len(buffer) - len(marker) + 1)
            if at_end:
                break
    if buffer:
        piece = _decode(buffer, path, buffer_start)
        if piece.strip():
            found = True
            yield piece, file_index, buffer_start, len(buffer)
    if not found:
        what = "is empty" if total == 0 else "holds only whitespace and separators"
        raise ValueError(f"corpus file {path!r} {what}; expected some text")


def iter_documents(files: list[str], doc_separator: str | None = None, text_field: str = "text",
                   block_bytes: int = READ_BLOCK_BYTES) -> Iterator[tuple[str, int, int, int]]:
    """Stream the documents of ``files`` (from :func:`expand_inputs`) one at a time, in order.

    Yields ``(text, file index, byte offset, byte length)``: where the document's bytes lie, so
    that :func:`read_document_at` can read it again. A ``*.jsonl``/``*.ndjson`` file gives one
    document per non-blank line, the string field ``text_field`` of the JSON object on it (a line
    that is not JSON, not an object, or lacks the field is an error naming the file and the
    line). A text file is one document, or with ``doc_separator`` its pieces between separators
    (pieces of only whitespace dropped), read in blocks of ``block_bytes``. Memory: one document
    plus one block; the corpus as a whole is never held.
    """
    if doc_separator is not None and (not isinstance(doc_separator, str) or not doc_separator):
        raise ValueError(f"doc_separator must be a non-empty str or None, got {doc_separator!r}")
    if not isinstance(text_field, str) or not text_field:
        raise ValueError(f"--text_field must be a non-empty field name, got {text_field!r}")
    for file_index, path in enumerate(files):
        if is_jsonl(path):
            yield from _iter_jsonl(path, file_index, text_field)
        elif doc_separator is not None:
            yield from _iter_separated(path, file_index, doc_separator, block_bytes)
        else:
            size = os.path.getsize(path)
            text = read_text_file(path)
            bom = 3 if size >= 3 and len(text.encode("utf-8")) == size - 3 else 0
            yield text, file_index, bom, size - bom


def read_document_at(path: str, offset: int, length: int, text_field: str = "text") -> str:
    """The document :func:`iter_documents` yielded from ``path`` at ``offset`` (``length`` bytes)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    text = _decode(data, path, offset)
    if is_jsonl(path):
        return _json_text(text, path, 0, text_field)
    return text
