"""Split patterns: known splits, the ASCII fast path, safe cut points, custom patterns."""
from __future__ import annotations

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.tokenizer.patterns import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    Splitter,
    find_safe_cut,
    last_safe_cut,
    resolve_pattern,
)

SAMPLE = "I'm here, you'RE 12345 going!!\n\n  Hello\tworld  "


def test_gpt2_pattern_splits_like_gpt2():
    splitter = Splitter(GPT2_SPLIT_PATTERN, named=True)
    assert splitter.split(SAMPLE) == ["I", "'m", " here", ",", " you", "'", "RE", " 12345", " going", "!!",
                                      "\n\n ", " Hello", "\t", "world", "  "]


def test_gpt4_pattern_splits_like_cl100k():
    splitter = Splitter(GPT4_SPLIT_PATTERN, named=True)
    # Case-insensitive contractions, digits in groups of 3, punctuation takes trailing newlines,
    # a letter run takes one leading non-letter (the tab).
    assert splitter.split(SAMPLE) == ["I", "'m", " here", ",", " you", "'RE", " ", "123", "45", " going",
                                      "!!\n\n", " ", " Hello", "\tworld", "  "]


def test_resolve_pattern_names_custom_and_none():
    assert resolve_pattern("gpt2") == ("gpt2", GPT2_SPLIT_PATTERN)
    assert resolve_pattern("gpt4") == ("gpt4", GPT4_SPLIT_PATTERN)
    assert resolve_pattern(GPT4_SPLIT_PATTERN) == ("gpt4", GPT4_SPLIT_PATTERN)  # spelled out = named
    assert resolve_pattern(r"\w+|\W+") == (None, r"\w+|\W+")
    assert resolve_pattern(None) == (None, None)


@pytest.mark.parametrize("bad, error, words", [
    ("[unclosed", ValueError, "not a valid regex"),
    ("", ValueError, "empty"),
    (42, TypeError, "expected 'gpt2', 'gpt4'"),
    (b"gpt2", TypeError, "bytes"),
])
def test_resolve_pattern_rejects_bad_patterns(bad, error, words):
    with pytest.raises(error, match=regex.escape(words)):
        resolve_pattern(bad)


def test_custom_pattern_must_cover_every_character():
    splitter = Splitter(r"[a-z]+", named=False)
    assert splitter.split("abc") == ["abc"]
    with pytest.raises(ValueError, match=r"does not match the text at index 3 \(character ' '\)"):
        splitter.split("abc def")


def test_custom_pattern_with_groups_yields_whole_matches():
    splitter = Splitter(r"(\w+)|(\s+)|[^\w\s]", named=False)
    assert splitter.split("ab, cd") == ["ab", ",", " ", "cd"]


def test_no_pattern_is_one_chunk():
    splitter = Splitter(None, named=False)
    assert splitter.split("a b\nc") == ["a b\nc"]
    assert splitter.split("") == []


ascii_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=200)
# Text with plenty of the characters that matter to the patterns near cut points.
tricky_text = st.text(alphabet=st.sampled_from(list("ab1 \n\n\r\t!'sS") + ["é", "中", "\u00a0", "\x1c", "🤖"]),
                      max_size=300)


@settings(max_examples=300, deadline=None)
@given(text=ascii_text)
@pytest.mark.parametrize("pattern", [GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN])
def test_ascii_fast_path_equals_regex_on_ascii_text(pattern, text):
    fast = Splitter(pattern, named=True)
    assert fast.split(text) == regex.findall(pattern, text)


@pytest.mark.parametrize("pattern", [GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN])
def test_ascii_fast_path_equals_regex_on_corpus(pattern, corpus):
    text = "".join(char for char in corpus if char.isascii())  # the fast path needs ASCII text
    assert len(text) > 50_000
    assert Splitter(pattern, named=True).split(text) == regex.findall(pattern, text)


@settings(max_examples=300, deadline=None)
@given(text=tricky_text, block_chars=st.integers(min_value=1, max_value=40))
@pytest.mark.parametrize("pattern", [GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN])
def test_blockwise_split_equals_whole_split(pattern, text, block_chars):
    splitter = Splitter(pattern, named=True)
    blocks = list(splitter.blocks(text, block_chars))
    assert "".join(blocks) == text
    assert [chunk for block in blocks for chunk in splitter.split(block)] == regex.findall(pattern, text)


def test_blocks_are_cut_at_safe_points_only():
    text = "ab\ncd\n\nef  \ngh\nij"
    splitter = Splitter(GPT4_SPLIT_PATTERN, named=True)
    assert list(splitter.blocks(text, 1)) == ["ab\n", "cd\n\nef  \ngh\n", "ij"]
    # A custom pattern has no known safe cut: one block.
    assert list(Splitter(r"\S+|\s+", named=False).blocks(text, 1)) == [text]


def test_safe_cut_helpers():
    text = "ab\ncd\n\nef\ngh"
    assert find_safe_cut(text, 0) == 3
    assert find_safe_cut(text, 4) == 10
    assert find_safe_cut(text, 11) is None
    assert last_safe_cut(text) == 10
    assert last_safe_cut("no newline") is None
    assert last_safe_cut("x\n" * 10_000 + "y") == 20_000
