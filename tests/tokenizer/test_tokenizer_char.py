"""CharTokenizer: vocabulary, round trips, unknown characters, files, special tokens."""
from __future__ import annotations

import json

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.tokenizer import CharTokenizer, load_tokenizer, tokenizer_from_dict


@pytest.fixture(scope="module")
def char_tok(train_text):
    return CharTokenizer.train(train_text, special_tokens=["<|endoftext|>"])


def test_vocabulary_is_sorted_set_of_characters():
    tok = CharTokenizer.train("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.vocab_size == 8 and tok.special_tokens == {}


def test_special_tokens_follow_characters_and_are_not_characters():
    tok = CharTokenizer.train("ab<|endoftext|>ba", special_tokens=["<|endoftext|>"])
    assert tok.chars == ["a", "b"]  # the special token's characters were not counted
    assert tok.special_tokens == {"<|endoftext|>": 2}
    assert tok.encode("ab<|endoftext|>", allowed_special="all") == [0, 1, 2]
    with pytest.raises(ValueError, match="special token '<\\|endoftext\\|>' at index 2"):
        tok.encode("ab<|endoftext|>")


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=200))
def test_round_trip_on_its_own_text(text):
    tok = CharTokenizer.train(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_round_trip_shakespeare(char_tok, train_text):
    assert char_tok.decode(char_tok.encode(train_text)) == train_text
    assert char_tok.decode(np.array(char_tok.encode("To be"))) == "To be"


def test_unknown_character_names_character_and_position(char_tok):
    with pytest.raises(ValueError, match=regex.escape("the character '🤖' (U+1F916) at index 6")):
        char_tok.encode("To be 🤖")
    with pytest.raises(ValueError, match="at index 15"):  # positions count from the whole text
        char_tok.encode("To<|endoftext|>🤖", allowed_special="all")


def test_surrogates_rejected_in_training():
    with pytest.raises(ValueError, match="lone surrogate U\\+D800 at index 1"):
        CharTokenizer.train("a\ud800")


@pytest.mark.parametrize("ids, error, words", [
    ([0, 10_000], ValueError, "ids[1]=10000 is out of range"),
    ([-3], ValueError, "ids[0]=-3 is out of range"),
    ([0.5], TypeError, "ids[0]=0.5 has type float"),
])
def test_decode_rejects_bad_ids(char_tok, ids, error, words):
    with pytest.raises(error, match=regex.escape(words)):
        char_tok.decode(ids)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(text=""), ValueError, "text has no characters"),
    (dict(text=b"abc"), TypeError, "expected str"),
    (dict(text="<s>", special_tokens=["<s>"]), ValueError, "text has no characters"),
    (dict(text="abc", special_tokens="<s>"), TypeError, "expected a list of str"),
])
def test_train_rejects_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=regex.escape(words)):
        CharTokenizer.train(**kwargs)


def test_constructor_checks_chars():
    with pytest.raises(ValueError, match="chars\\[1\\]='bc'; expected a single character"):
        CharTokenizer(["a", "bc"])
    with pytest.raises(ValueError, match="listed twice"):
        CharTokenizer(["a", "a"])


def test_save_load_and_dict_round_trip(char_tok, tmp_path):
    path = tmp_path / "char.json"
    char_tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["type"] == "char" and data["version"] == 1
    for loaded in (CharTokenizer.load(path), load_tokenizer(path), tokenizer_from_dict(char_tok.to_dict())):
        assert isinstance(loaded, CharTokenizer)
        assert loaded.to_dict() == char_tok.to_dict()
        assert loaded.encode("To be<|endoftext|>", allowed_special="all") == \
            char_tok.encode("To be<|endoftext|>", allowed_special="all")


def test_damaged_files(char_tok, tmp_path):
    path = tmp_path / "char.json"
    char_tok.save(path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text[:-10], encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid JSON.*truncated or corrupt"):
        CharTokenizer.load(path)
    data = json.loads(text)
    duplicated = data["chars"][:-1] + data["chars"][0]  # same length, one character twice
    path.write_text(json.dumps({**data, "chars": duplicated}), encoding="utf-8")
    with pytest.raises(ValueError, match="listed twice") as info:
        CharTokenizer.load(path)
    assert str(path) in str(info.value)
    path.write_text(json.dumps({**data, "special_tokens": {"<|endoftext|>": 0}}), encoding="utf-8")
    with pytest.raises(ValueError, match="expected ids numbered from"):
        CharTokenizer.load(path)


def test_batch_stream_visualize_report(char_tok):
    assert char_tok.encode_batch(["ab", "To"]) == [char_tok.encode("ab"), char_tok.encode("To")]
    assert list(char_tok.encode_iterable(["To ", "be\n"])) == char_tok.encode("To be\n")
    assert char_tok.visualize("To\n") == "[T][o][\\n]"
    report = char_tok.compression_report("To be")
    assert report["tokens"] == 5 and report["characters_per_token"] == 1.0
    assert repr(char_tok) == f"CharTokenizer(vocab_size={char_tok.vocab_size}, special_tokens=['<|endoftext|>'])"
