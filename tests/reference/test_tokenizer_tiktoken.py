"""Parity with tiktoken (optional: skipped when it is not installed).

A tokenizer trained by minillm is handed to ``tiktoken.Encoding`` through its
``mergeable_ranks`` (rank = token id: bytes 0..255, merge k = 256 + k), its split pattern and its
special tokens; both must produce identical ids on held-out text. tiktoken must also read the
rank files that ``save_tiktoken`` writes, and ``load_tiktoken`` must read tiktoken's.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.tokenizer import BPETokenizer
from tests.tokenizer.corpus_text import load_corpus_text

tiktoken = pytest.importorskip("tiktoken", reason="the optional `tiktoken` package is not installed")
tiktoken_load = pytest.importorskip("tiktoken.load")

SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>"]


@pytest.fixture(scope="module")
def texts():
    corpus = load_corpus_text()
    return corpus[:80_000], corpus[80_000:]


@pytest.fixture(scope="module", params=["gpt4", "gpt2"])
def pair(request, texts):
    tok = BPETokenizer.train(texts[0], vocab_size=1200, pattern=request.param, special_tokens=SPECIALS)
    encoding = tiktoken.Encoding(name=f"minillm-test-{request.param}", pat_str=tok.pattern,
                                 mergeable_ranks=tok.mergeable_ranks, special_tokens=tok.special_tokens)
    return tok, encoding


def test_identical_ids_on_heldout_text(pair, texts):
    tok, encoding = pair
    heldout = texts[1]
    ours = tok.encode_ordinary(heldout)
    assert ours == encoding.encode_ordinary(heldout)
    assert len(ours) > 5_000
    assert tok.decode(ours) == encoding.decode(ours) == heldout


def test_identical_ids_with_special_tokens(pair):
    tok, encoding = pair
    text = "<|user|>To be, or not to be?<|assistant|>That is the question.<|endoftext|>"
    assert tok.encode(text, allowed_special="all") == encoding.encode(text, allowed_special="all")
    assert tok.encode(text, allowed_special={"<|user|>", "<|assistant|>", "<|endoftext|>"}) == \
        encoding.encode(text, allowed_special={"<|user|>", "<|assistant|>", "<|endoftext|>"})
    # Both refuse special token text by default.
    with pytest.raises(ValueError):
        encoding.encode(text)
    with pytest.raises(ValueError):
        tok.encode(text)


@pytest.fixture(scope="module")
def unicode_pair(texts):
    # Shakespeare plus other scripts, so that merges inside multi-byte characters exist.
    extra = "日本語のテキスト 中文文本 한국어 텍스트 Ελληνικά русский текст 🤖🚀🎉👍🏽 e\u0301 " * 30
    tok = BPETokenizer.train([texts[0][:40_000], extra], vocab_size=800, pattern="gpt4")
    encoding = tiktoken.Encoding(name="minillm-test-unicode", pat_str=tok.pattern,
                                 mergeable_ranks=tok.mergeable_ranks, special_tokens={})
    return tok, encoding


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_identical_ids_on_random_unicode(unicode_pair, text):
    tok, encoding = unicode_pair
    assert tok.encode_ordinary(text) == encoding.encode_ordinary(text)


def test_tiktoken_reads_our_rank_file(pair, tmp_path):
    tok, _ = pair
    path = tmp_path / "ours.tiktoken"
    tok.save_tiktoken(path)
    assert tiktoken_load.load_tiktoken_bpe(str(path)) == tok.mergeable_ranks


def test_we_read_tiktokens_rank_file(pair, tmp_path, texts):
    tok, encoding = pair
    dump = getattr(tiktoken_load, "dump_tiktoken_bpe", None)
    if dump is None:
        pytest.skip("this tiktoken version has no dump_tiktoken_bpe")
    path = tmp_path / "theirs.tiktoken"
    try:
        dump(encoding._mergeable_ranks, str(path))
    except ImportError as exc:  # tiktoken writes files through the optional `blobfile` package
        pytest.skip(f"tiktoken cannot write rank files here: {exc}")
    loaded = BPETokenizer.load_tiktoken(path, pattern=tok.pattern, special_tokens=tok.special_tokens)
    assert loaded.merges == tok.merges
    assert loaded.encode_ordinary(texts[1][:5000]) == encoding.encode_ordinary(texts[1][:5000])
