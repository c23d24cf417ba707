"""The `minillm prepare` command."""
import functools
import json
import re

from minillm import commandline
from minillm.data import TokenDataset
from minillm.data.cli import PrepareConfig, main, run_prepare


def _corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    text = "".join(f"Line {i}: the play's the thing wherein I'll catch the conscience of the king.\n" for i in range(40))
    (folder / "a.txt").write_text(text, encoding="utf-8")
    (folder / "b.txt").write_text(text, encoding="utf-8")                       # exact duplicate
    (folder / "c.txt").write_text(text.replace("Line 7:", "Row 7:"), encoding="utf-8")   # near duplicate
    (folder / "d.txt").write_text("Tiny.", encoding="utf-8")                    # dropped as too short
    (folder / "e.txt").write_text("Something else entirely, written for this test. " * 20, encoding="utf-8")
    return folder


def _prepare(tokens, tokenizer):
    """The command as ``minillm prepare`` runs it (exit status, errors), with an injected tokenizer."""
    return commandline.run(PrepareConfig, functools.partial(run_prepare, tokenizer=tokenizer), "prepare", tokens)


def test_prepare_with_an_injected_tokenizer(tmp_path, byte_tokenizer, capsys):
    out = tmp_path / "out"
    assert _prepare(["--input", str(_corpus(tmp_path)), "--output", str(out), "--tokenizer", "unused.json",
                     "--val-fraction", "0.2"], byte_tokenizer) == 0
    printed = capsys.readouterr().out
    assert "cleaning report" in printed and "dedup report" in printed
    assert re.search(r"exact duplicates +1 dropped", printed)
    assert re.search(r"near duplicates +1 dropped", printed)
    assert "train:" in printed and "val:" in printed and "eot_token_id 256" in printed
    ds = TokenDataset(out)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["eot_token_id"] == 256                       # picked up from the special tokens
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] >= 2
    assert len(ds.tokens("train")) > 0 and len(ds.tokens("val")) > 0


def test_prepare_no_dedup_and_no_eot(tmp_path, byte_tokenizer, capsys):
    out = tmp_path / "out"
    assert _prepare(["--input", str(_corpus(tmp_path)), "--output", str(out), "--tokenizer", "x",
                     "--no-dedup", "--eot-token", "none", "--min-chars", "1"], byte_tokenizer) == 0
    assert "dedup skipped" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["eot_token_id"] is None
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 6   # 5 files, 1 cut in two


def test_prepare_splits_on_a_separator(tmp_path, byte_tokenizer):
    corpus = tmp_path / "one.txt"
    corpus.write_text("\f".join(f"document {i} " * 10 for i in range(20)), encoding="utf-8")
    out = tmp_path / "out"
    assert _prepare(["--input", str(corpus), "--output", str(out), "--tokenizer", "x",
                     "--doc-separator", "\\f", "--val-fraction", "0.25"], byte_tokenizer) == 0
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] in (20, 21)


def test_prepare_reports_errors_as_exit_code(tmp_path, byte_tokenizer, capsys):
    assert _prepare(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"), "--tokenizer", "x"],
                    byte_tokenizer) == 2
    err = capsys.readouterr().err
    assert "minillm prepare: error:" in err and "missing" in err
    assert _prepare(["--input", str(_corpus(tmp_path)), "--output", str(tmp_path / "o"), "--tokenizer", "x",
                     "--eot-token", "<|nope|>"], byte_tokenizer) == 2
    assert "<|nope|>" in capsys.readouterr().err
    assert _prepare(["--output", str(tmp_path / "o")], byte_tokenizer) == 2
    assert "--tokenizer is required" in capsys.readouterr().err


def test_prepare_with_a_saved_bpe_tokenizer(tmp_path, capsys):
    from minillm.tokenizer import BPETokenizer

    corpus = _corpus(tmp_path)
    text = (corpus / "a.txt").read_text(encoding="utf-8")
    tokenizer = BPETokenizer.train(text, vocab_size=300, special_tokens=["<|endoftext|>"])
    tokenizer.save(tmp_path / "tok.json")
    out = tmp_path / "out"
    code = main(["--input", str(corpus), "--output", str(out), "--tokenizer", str(tmp_path / "tok.json")])
    assert code == 0, capsys.readouterr().err
    ds = TokenDataset(out)
    assert ds.vocab_size == tokenizer.vocab_size and len(ds.tokens("train")) > 0
