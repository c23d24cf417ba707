"""Special tokens: raise by default, allowed sets, "all", "none", longest overlap, adding tokens."""
from __future__ import annotations

import pytest
import regex

from minillm.tokenizer import BPETokenizer, CharTokenizer

TEXT = "Hello<|user|>hi<|endoftext|>bye"


@pytest.fixture(scope="module")
def tokenizers(train_text):
    bpe = BPETokenizer.train(train_text[:20_000], vocab_size=320,
                             special_tokens=["<|endoftext|>", "<|user|>", "<|end|>"])
    char = CharTokenizer.train(train_text[:20_000] + "<>|", special_tokens=["<|endoftext|>", "<|user|>", "<|end|>"])
    return {"bpe": bpe, "char": char}


@pytest.fixture(params=["bpe", "char"])
def tok(request, tokenizers):
    return tokenizers[request.param]


def test_default_raises_naming_token_and_fix(tok):
    with pytest.raises(ValueError) as info:
        tok.encode(TEXT)
    message = str(info.value)
    assert "'<|user|>' at index 5" in message
    assert "allowed_special={'<|user|>'}" in message and "allowed_special='all'" in message
    assert "encode_ordinary" in message


def test_all_encodes_special_ids(tok):
    ids = tok.encode(TEXT, allowed_special="all")
    specials = tok.special_tokens
    assert specials["<|user|>"] in ids and specials["<|endoftext|>"] in ids
    assert ids == (tok.encode("Hello") + [specials["<|user|>"]] + tok.encode("hi")
                   + [specials["<|endoftext|>"]] + tok.encode("bye"))
    assert tok.decode(ids) == TEXT


def test_allowed_set_encodes_those_and_raises_on_others(tok):
    ids = tok.encode("a<|user|>b", allowed_special={"<|user|>"})
    assert tok.special_tokens["<|user|>"] in ids
    with pytest.raises(ValueError, match=regex.escape("'<|endoftext|>' at index 15")):
        tok.encode(TEXT, allowed_special={"<|user|>"})


def test_none_and_encode_ordinary_treat_specials_as_text(tok):
    ordinary = tok.encode_ordinary(TEXT)
    assert tok.encode(TEXT, allowed_special="none") == ordinary
    assert not set(ordinary) & set(tok.special_tokens.values())
    assert tok.decode(ordinary) == TEXT


def test_longest_special_token_wins_on_overlap(tok):
    specials = tok.special_tokens
    ids = tok.encode("<|endoftext|><|end|>", allowed_special="all")
    assert ids == [specials["<|endoftext|>"], specials["<|end|>"]]
    # Allowing only the shorter one does not split the longer: the longer one is found and refused.
    with pytest.raises(ValueError, match=regex.escape("'<|endoftext|>' at index 0")):
        tok.encode("<|endoftext|>", allowed_special={"<|end|>"})


def test_text_without_specials_is_unaffected(tok):
    assert tok.encode("plain text") == tok.encode_ordinary("plain text")


@pytest.mark.parametrize("allowed, error, words", [
    ("bogus", ValueError, "allowed_special='bogus' is not a known mode"),
    ({"<|nope|>"}, ValueError, "'<|nope|>', which is not a special token of this tokenizer"),
    (5, TypeError, "allowed_special=5 has type int"),
])
def test_bad_allowed_special(tok, allowed, error, words):
    with pytest.raises(error, match=regex.escape(words)):
        tok.encode("x", allowed_special=allowed)


def test_add_special_tokens_appends_ids(train_text):
    for tok in (BPETokenizer.train(train_text[:5000], vocab_size=300, special_tokens=["<|endoftext|>"]),
                CharTokenizer.train(train_text[:5000] + "<>|", special_tokens=["<|endoftext|>"])):
        size = tok.vocab_size
        assert tok.add_special_tokens(["<|user|>", "<|assistant|>"]) == [size, size + 1]
        assert tok.vocab_size == size + 2
        ids = tok.encode("<|user|>Hi<|assistant|>", allowed_special="all")
        assert ids[0] == size and size + 1 in ids
        assert tok.decode(ids) == "<|user|>Hi<|assistant|>"
        with pytest.raises(ValueError, match="already the special token with id"):
            tok.add_special_tokens(["<|user|>"])
        with pytest.raises(TypeError, match="expected a list of str"):
            tok.add_special_tokens("<|x|>")


def test_special_token_ids_with_gaps_from_explicit_dict():
    tok = BPETokenizer([], pattern="gpt4", special_tokens={"<|a|>": 260, "<|b|>": 256})
    assert tok.vocab_size == 261
    assert tok.encode("<|a|><|b|>", allowed_special="all") == [260, 256]
    with pytest.raises(ValueError, match="ids\\[0\\]=258 is not assigned"):
        tok.decode([258])
    with pytest.raises(ValueError, match="collides with the byte/merge tokens"):
        BPETokenizer([], special_tokens={"<|a|>": 100})
    with pytest.raises(ValueError, match="also the id of"):
        BPETokenizer([], special_tokens={"<|a|>": 300, "<|b|>": 300})
