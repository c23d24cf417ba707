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
"""
from __future__ import annotations

import errno
import os

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
