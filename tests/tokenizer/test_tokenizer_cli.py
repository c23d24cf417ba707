"""The ``tokenizer`` command: train, encode, decode, errors; and its registration."""
from __future__ import annotations

import argparse
import io
import sys

import pytest

from minillm.commandline import load_config
from minillm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
from minillm.tokenizer.cli import main, register


@pytest.fixture
def corpus_dir(tmp_path, train_text):
    directory = tmp_path / "corpus"
    directory.mkdir()
    (directory / "a.txt").write_text(train_text[:15_000], encoding="utf-8")
    (directory / "b.txt").write_text(train_text[15_000:30_000] + "<|endoftext|>", encoding="utf-8")
    (directory / "notes.md").write_text("ignored: not a .txt file 🤖", encoding="utf-8")
    return directory


def test_minillm_command_runs_tokenizer(tmp_path, capsys):
    from minillm.cli import main as minillm_main
    BPETokenizer.train("hello world", vocab_size=260).save(tmp_path / "t.json")
    assert minillm_main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "t.json"), "--text", "hello"]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in BPETokenizer.load(tmp_path / "t.json").encode("hello")]


def test_register_adds_tokenizer_command():
    parser = argparse.ArgumentParser(prog="minillm")
    register(parser.add_subparsers(dest="command"))
    args, rest = parser.parse_known_args(["tokenizer", "decode", "--tokenizer", "t.json", "1", "2"])
    assert args.command == "tokenizer" and args.tokenizer_command == "decode" and callable(args.handler)
    cfg = load_config(args.config_class, rest)
    assert cfg.decode.tokenizer == "t.json" and cfg.decode.ids == ["1", "2"]


def test_train_encode_decode(tmp_path, corpus_dir, capsys):
    output = tmp_path / "tok.json"
    code = main(["tokenizer", "train", "--input", str(corpus_dir), "--vocab-size", "320",
                 "--special", "<|endoftext|>", "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "BPE merges" in captured.err  # the tqdm progress bar
    assert "trained BPETokenizer(vocab_size=320" in captured.out and "bytes per token" in captured.out
    tok = load_tokenizer(output)
    assert isinstance(tok, BPETokenizer) and tok.special_tokens == {"<|endoftext|>": 319}
    # The directory's .txt files, in name order, are the corpus; notes.md is not.
    expected = BPETokenizer.train([(corpus_dir / "a.txt").read_text(), (corpus_dir / "b.txt").read_text()],
                                  vocab_size=320, special_tokens=["<|endoftext|>"])
    assert tok.merges == expected.merges

    assert main(["tokenizer", "encode", "--tokenizer", str(output), "--text", "To be<|endoftext|>",
                 "--allowed-special", "all"]) == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == tok.encode("To be<|endoftext|>", allowed_special="all")

    assert main(["tokenizer", "decode", "--tokenizer", str(output)] + ids) == 0
    assert capsys.readouterr().out == "To be<|endoftext|>"


def test_encode_file_and_decode_from_stdin(tmp_path, corpus_dir, capsys, monkeypatch):
    output = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--input", str(corpus_dir / "a.txt"), "--vocab-size", "300",
                 "--output", str(output), "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no progress bar
    text_path = tmp_path / "in.txt"
    text = "Line one\r\nline two 🤖\n\nend"
    text_path.write_text(text, encoding="utf-8", newline="")
    assert main(["tokenizer", "encode", "--tokenizer", str(output), "--input", str(text_path)]) == 0
    ids_text = capsys.readouterr().out
    tok = load_tokenizer(output)
    assert [int(i) for i in ids_text.split()] == tok.encode(text)
    monkeypatch.setattr(sys, "stdin", io.StringIO(ids_text))
    assert main(["tokenizer", "decode", "--tokenizer", str(output)]) == 0
    assert capsys.readouterr().out == text


def test_train_char_tokenizer(tmp_path, corpus_dir, capsys):
    output = tmp_path / "char.json"
    assert main(["tokenizer", "train", "--type", "char", "--input", str(corpus_dir / "a.txt"),
                 "--output", str(output)]) == 0
    assert isinstance(load_tokenizer(output), CharTokenizer)


@pytest.mark.parametrize("argv, words", [
    (["train", "--input", "/nonexistent/x.txt", "--output", "o.json"], "does not exist"),
    (["train", "--input", "{empty}", "--output", "o.json"], "directory without *.txt files"),
    (["train", "--input", "{bad_utf8}", "--output", "o.json"], "is not UTF-8 text (invalid byte at offset 2:"),
    (["train", "--input", "{good}", "--vocab-size", "10", "--output", "o.json"], "vocab_size=10 is too small"),
    (["train", "--output", "o.json"], "--input is required"),
    (["encode", "--tokenizer", "{tok}"], "give exactly one of --text and --input"),
    (["encode", "--tokenizer", "/nonexistent/t.json", "--text", "x"], "No such file"),
    (["encode", "--tokenizer", "{tok}", "--text", "a<|endoftext|>"], "special token '<|endoftext|>'"),
    (["encode", "--tokenizer", "{tok}", "--input", "{bad_utf8}"], "is not UTF-8 text"),
    (["decode", "--tokenizer", "{tok}", "12", "abc"], "ids[1]='abc' is not an integer token id"),
    (["decode", "--tokenizer", "{tok}", "99999"], "ids[0]=99999 is out of range"),
])
def test_errors_print_message_and_return_2(tmp_path, capsys, argv, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.txt").write_bytes(b"ab\xffcd")
    (tmp_path / "good.txt").write_text("hello world", encoding="utf-8")
    BPETokenizer.train("hello world", vocab_size=260, special_tokens=["<|endoftext|>"]).save(tmp_path / "t.json")
    paths = {"empty": tmp_path / "empty", "bad_utf8": tmp_path / "bad.txt", "good": tmp_path / "good.txt",
             "tok": tmp_path / "t.json"}
    argv = [arg.format(**paths) for arg in argv]
    assert main(["tokenizer"] + argv) == 2                       # bad input: exit 2, as every command
    err = capsys.readouterr().err
    assert f"minillm tokenizer {argv[0]}: error: " in err and words in err
