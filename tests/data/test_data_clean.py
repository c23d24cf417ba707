"""Cleaning rules and the CleaningReport."""
import re
import unicodedata

import pytest

from minillm.data import CleaningReport, clean_document, clean_documents, default_corpus_path, read_corpus


@pytest.mark.parametrize("raw, expected", [
    ("a\r\nb\rc", "a\nb\nc"),                                   # line endings
    ("cafe\u0301", "caf\u00e9"),                                # NFC composes
    ("a\x00b\x07c\x1bd\x7fe\x85f", "abcdef"),                  # C0, DEL, C1 controls removed
    ("tab\there\nnew", "tab\there\nnew"),                       # \t and \n kept
    ("zero\u200dwidth joiner", "zero\u200dwidth joiner"),       # Cf kept
    ("line   \nnext\t\t\n", "line\nnext"),                      # trailing whitespace
    ("a\n\n\n\n\n\nb\n\n\nc", "a\n\n\nb\n\n\nc"),               # >2 blank lines -> 2
    ("\n\n  \n  indented\n\n", "  indented"),                   # leading blank lines, trailing ws
    ("e\x00\u0301", "\u00e9"),                                  # control removed before NFC
])
def test_clean_document_rules(raw, expected):
    assert clean_document(raw) == expected


def test_report_counts():
    docs = ["x\r\nyé\x00  \n\n\n\n\nz" + "w" * 40, "short", "cafe\u0301 " + "v" * 40, "\x01\x02"]
    kept, report = clean_documents(docs, min_chars=10)
    assert len(kept) == 2
    assert (report.docs_in, report.docs_out, report.dropped_too_short) == (4, 2, 2)
    assert report.line_endings_converted == 1
    assert report.control_chars_removed == 3
    assert report.nfc_docs_changed == 1 and report.nfc_chars_delta == 1
    assert report.trailing_whitespace_removed == 2
    assert report.blank_line_runs_collapsed == 1
    assert report.chars_in == sum(map(len, docs)) and report.chars_out == sum(map(len, kept))
    text = str(report)
    assert re.search(r"documents in +4\n", text) and re.search(r"documents out +2\n", text)
    assert "(< 10 chars after cleaning)" in text and "'short'" in text


def test_cleaning_is_idempotent_and_nfc():
    messy = "  Héllo\r\n\r\n\r\n\r\n\x0bWorld\u0301 \t\nend\x9f"
    once = clean_document(messy)
    assert clean_document(once) == once
    assert unicodedata.is_normalized("NFC", once)


def test_shakespeare_needs_only_whitespace_fixes():
    (doc,) = read_corpus(default_corpus_path())
    report = CleaningReport()
    cleaned = clean_document(doc, report)
    assert report.control_chars_removed == 0 and report.nfc_docs_changed == 0
    assert len(doc) - len(cleaned) < 0.01 * len(doc)
    assert cleaned.startswith("HAMLET, PRINCE OF DENMARK") and "\n\n\n\n" not in cleaned


def test_validation():
    with pytest.raises(TypeError, match="single str"):
        clean_documents("a document")
    with pytest.raises(TypeError, match="document 1"):
        clean_documents(["ok", 3])
    with pytest.raises(ValueError, match="min_chars"):
        clean_documents(["ok"], min_chars=0)
    with pytest.raises(TypeError, match="text must be str"):
        clean_document(b"bytes")
