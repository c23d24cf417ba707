"""Text cleaning: make documents canonical before de-duplication and tokenization.

``clean_document`` applies, in this order:

1. Line endings: ``\\r\\n`` and lone ``\\r`` become ``\\n`` (so Windows/old-Mac files tokenize like
   Unix ones and the blank-line rules below see one kind of newline).
2. Control characters removed: every code point of Unicode category Cc (U+0000-U+001F,
   U+007F-U+009F) except ``\\n`` and ``\\t``. Format characters (category Cf: zero-width joiner,
   soft hyphen, ...) are kept, because ZWJ/ZWNJ carry meaning in emoji and several scripts.
   This runs before NFC so that a control character sitting between a letter and its
   combining mark cannot leave a non-NFC sequence behind once it is removed.
3. Unicode NFC normalisation: composed and decomposed spellings of the same character
   ("é" as U+00E9 or as "e" + U+0301) become the same code points, hence the same tokens and the
   same de-duplication hashes. NFC (not NFKC) keeps compatibility characters such as "ﬁ" or
   superscripts as written.
4. Whitespace: trailing spaces and tabs at the end of every line are removed; runs of more than
   two blank lines (four or more consecutive ``\\n``) collapse to exactly two blank lines;
   leading blank lines and all trailing whitespace of the document are removed (leading spaces
   on the first text line are indentation and kept). Spaces inside lines are left alone.

``clean_documents`` cleans a list and drops documents shorter than ``min_chars`` characters
(after cleaning; empty documents are always dropped), returning a ``CleaningReport``.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable

_CRLF = re.compile(r"\r\n?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")   # Cc minus \t (\x09) and \n (\x0a)
_TRAILING_WS = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUN = re.compile(r"\n{4,}")                          # >2 blank lines = 4+ newlines
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")

DEFAULT_MIN_CHARS = 32


@dataclass
class CleaningReport:
    """Counts gathered by ``clean_documents`` (characters are Unicode code points)."""

    docs_in: int = 0
    docs_out: int = 0
    dropped_too_short: int = 0
    min_chars: int = DEFAULT_MIN_CHARS
    chars_in: int = 0
    chars_out: int = 0
    line_endings_converted: int = 0      # \r\n or lone \r sequences turned into \n
    nfc_docs_changed: int = 0            # documents whose text NFC changed
    nfc_chars_delta: int = 0             # code points removed by NFC composition
    control_chars_removed: int = 0
    trailing_whitespace_removed: int = 0  # characters
    blank_line_runs_collapsed: int = 0
    short_doc_examples: list[str] = field(default_factory=list)  # up to 3 previews of dropped docs

    def __str__(self) -> str:
        rows = [
            ("documents in", self.docs_in, ""),
            ("documents out", self.docs_out, ""),
            ("dropped (too short)", self.dropped_too_short, f" (< {self.min_chars} chars after cleaning)"),
            ("characters in", self.chars_in, ""),
            ("characters out", self.chars_out, ""),
            ("line endings fixed", self.line_endings_converted, " (\\r\\n or \\r -> \\n)"),
            ("NFC changed", self.nfc_docs_changed, f" docs ({self.nfc_chars_delta:,} code points fewer)"),
            ("control chars", self.control_chars_removed, " removed"),
            ("trailing whitespace", self.trailing_whitespace_removed, " chars removed"),
            ("blank-line runs", self.blank_line_runs_collapsed, " collapsed to 2 blank lines"),
        ]
        lines = ["cleaning report"] + [f"  {label:<22}{value:>14,}{suffix}" for label, value, suffix in rows]
        lines += [f"  e.g. dropped: {example!r}" for example in self.short_doc_examples]
        return "\n".join(lines)


def clean_document(text: str, report: CleaningReport | None = None) -> str:
    """Return the cleaned ``text`` (rules in the module docstring); counts go into ``report``."""
    if not isinstance(text, str):
        raise TypeError(f"clean_document: text must be str, got {type(text).__name__}")
    report = report if report is not None else CleaningReport()

    text, n = _CRLF.subn("\n", text)
    report.line_endings_converted += n

    text, n = _CONTROL.subn("", text)
    report.control_chars_removed += n

    normalised = unicodedata.normalize("NFC", text)
    if normalised != text:
        report.nfc_docs_changed += 1
        report.nfc_chars_delta += len(text) - len(normalised)
    text = normalised

    before = len(text)
    text = _TRAILING_WS.sub("", text)
    report.trailing_whitespace_removed += before - len(text)

    text, n = _BLANK_RUN.subn("\n\n\n", text)
    report.blank_line_runs_collapsed += n

    text = _LEADING_BLANK_LINES.sub("", text).rstrip()
    return text


def clean_documents(docs: Iterable[str], min_chars: int = DEFAULT_MIN_CHARS) -> tuple[list[str], CleaningReport]:
    """Clean every document and drop those shorter than ``min_chars`` characters after cleaning.

    Returns (kept documents in input order, CleaningReport).
    """
    if isinstance(docs, str):
        raise TypeError("clean_documents: docs must be a list of str documents, got a single str")
    if type(min_chars) is not int or min_chars < 1:
        raise ValueError(f"clean_documents: min_chars must be an int >= 1, got {min_chars!r}")
    report = CleaningReport(min_chars=min_chars)
    kept: list[str] = []
    for index, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise TypeError(f"clean_documents: document {index} must be str, got {type(doc).__name__}")
        report.docs_in += 1
        report.chars_in += len(doc)
        cleaned = clean_document(doc, report)
        if len(cleaned) < min_chars:
            report.dropped_too_short += 1
            if len(report.short_doc_examples) < 3:
                report.short_doc_examples.append(cleaned[:40])
            continue
        kept.append(cleaned)
        report.docs_out += 1
        report.chars_out += len(cleaned)
    return kept, report
