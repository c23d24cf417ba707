"""Reading corpora: the embedded corpus, files, folders, bad input."""
import os

import pytest

from minillm.data import default_corpus_path, read_corpus, split_documents


def test_default_corpus_is_shipped_with_its_attribution():
    path = default_corpus_path()
    assert os.path.basename(path) == "shakespeare_tragedies.txt"
    assert os.path.getsize(path) == 1_158_242
    folder = os.path.dirname(path)
    readme = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
    assert "Open Shakespeare, Open Knowledge Foundation" in readme and "CC BY 2.5" in readme
    copying = open(os.path.join(folder, "OPEN-SHAKESPEARE-COPYING.txt"), encoding="utf-8").read()
    assert "Creative Commons Attribution" in copying


def test_default_corpus_reads_as_one_document():
    docs = read_corpus(default_corpus_path())
    assert len(docs) == 1
    assert docs[0].startswith("HAMLET, PRINCE OF DENMARK")
    assert len(docs[0]) == 1_158_242          # ASCII: one character per byte


def test_folder_reads_sorted_txt_files_only(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("not recursive", encoding="utf-8")
    assert read_corpus(tmp_path) == ["first", "second"]


def test_doc_separator_splits_files_and_bom_is_dropped(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffone\n\fTWO\n\f\n\f three".encode("utf-8"))
    assert read_corpus(path) == ["one\n\fTWO\n\f\n\f three"]
    assert read_corpus(path, doc_separator="\f") == ["one\n", "TWO\n", " three"]
    assert split_documents("a||b||", "||") == ["a", "b"]


def test_non_utf8_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf".encode() + b"\xe9 au lait")
    with pytest.raises(ValueError, match=r"latin1\.txt.*is not UTF-8 text \(invalid byte at offset 3"):
        read_corpus(path)


def test_empty_inputs_and_missing_paths(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt.*empty"):
        read_corpus(tmp_path / "empty.txt")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no \\*.txt files"):
        read_corpus(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_corpus(tmp_path / "missing.txt")
    (tmp_path / "sep.txt").write_text("||||", encoding="utf-8")
    with pytest.raises(ValueError, match="no documents"):
        read_corpus(tmp_path / "sep.txt", doc_separator="||")
    with pytest.raises(ValueError, match="doc_separator"):
        split_documents("abc", "")
    with pytest.raises(TypeError, match="path"):
        read_corpus(42)
