"""BPE training: the classic example, the tie-break rule, equality with the naive trainer
(minillm.tokenizer.train_bpe_naive) on corpora, split patterns and special tokens,
determinism, special tokens, argument checks."""
from __future__ import annotations

import warnings

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.tokenizer import BPETokenizer, train_bpe_naive


def test_classic_example_learns_documented_merges():
    # "aaabdaaabac": aa (count 4) -> 256; then ab and (aa, a) tie at 2: the smaller pair (97, 98)
    # wins -> 257; then (aa, ab) -> 258, i.e. Z=aa, Y=ab, X=ZY as in the textbook example.
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, pattern=None)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert train_bpe_naive("aaabdaaabac", 3, pattern=None) == tok.merges
    assert tok.vocab[258] == b"aaab"
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


def test_tie_break_prefers_smallest_pair_ids():
    # Every pair occurs once: "ba", "dc", "ab"... the smallest (left, right) wins each time.
    tok = BPETokenizer.train(["ba", "dc", "ab"], vocab_size=259, pattern=None)
    assert tok.merges == [(97, 98), (98, 97), (100, 99)]


def test_higher_count_beats_smaller_ids():
    tok = BPETokenizer.train(["ab", "yz", "yz"], vocab_size=257, pattern=None)
    assert tok.merges == [(121, 122)]


def test_overlapping_pairs_merge_left_to_right():
    # aaaaaa: (a, a) occurs 5 times (overlapping) but merges into [aa, aa, aa]; then (aa, aa)
    # occurs twice and merges into [aaaa, aa].
    tok = BPETokenizer.train("aaaaaa", vocab_size=258, pattern=None)
    assert tok.merges == [(97, 97), (256, 256)]
    assert tok.encode("aaaaaa") == [257, 256]


def test_naive_trainer_follows_the_tie_break_and_merges_left_to_right():
    assert train_bpe_naive(["ba", "dc", "ab"], 3, pattern=None) == [(97, 98), (98, 97), (100, 99)]
    # aaaaaa -> [aa, aa, aa] -> [aaaa, aa] -> [aaaaaa]: one token, so 3 of the 5 merges asked for.
    assert train_bpe_naive("aaaaaa", 5, pattern=None) == [(97, 97), (256, 256), (257, 256)]
    assert train_bpe_naive("<s>ab<s>", 5, pattern=None, special_tokens=["<s>"]) == [(97, 98)]


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_training_equals_naive_trainer_on_corpus(corpus, pattern):
    texts = [corpus[:4000], corpus[4000:6000]]
    tok = BPETokenizer.train(texts, vocab_size=256 + 150, pattern=pattern)
    assert tok.merges == train_bpe_naive(texts, 150, pattern)


def test_training_equals_naive_trainer_with_special_tokens(corpus):
    # Special token strings between and inside chunks, "<|end" a prefix of "<|endoftext|>"
    # (the longer one must win), a custom pattern: the strings are cut out by both trainers.
    specials = ["<|endoftext|>", "<|end", "<|user|>"]
    texts = ["<|endoftext|>".join([corpus[:1500], corpus[1500:2500]]),
             "<|user|>" + corpus[2500:3500] + "<|end|" + "wor<|endoftext|>ds " * 40 + "<|end"]
    for pattern in ["gpt2", "gpt4", r"\s+|\w+|[^\s\w]+"]:
        tok = BPETokenizer.train(texts, vocab_size=256 + 100 + len(specials), pattern=pattern,
                                 special_tokens=specials)
        assert tok.merges == train_bpe_naive(texts, 100, pattern, special_tokens=specials), pattern


def test_raw_byte_training_on_one_long_text_equals_naive_trainer(corpus):
    # pattern=None: the whole text is one word with many occurrences of each pair.
    text = corpus[10_000:14_000]
    tok = BPETokenizer.train(text, vocab_size=256 + 120, pattern=None)
    assert tok.merges == train_bpe_naive([text], 120, None)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(alphabet="abc ab\n", max_size=40), min_size=1, max_size=6).filter(
    lambda texts: any(texts)), num_merges=st.integers(0, 25), pattern=st.sampled_from([None, "gpt2", "gpt4"]),
    specials=st.sampled_from([[], ["ba"], ["c", "b a"]]))
def test_training_equals_naive_trainer_on_random_texts(texts, num_merges, pattern, specials):
    # A tiny alphabet gives many equal counts: the tie-break rule is exercised all the time.
    expected = train_bpe_naive(texts, num_merges, pattern, special_tokens=specials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # running out of pairs early is fine here
        tok = BPETokenizer.train(texts, vocab_size=256 + num_merges + len(specials), pattern=pattern,
                                 special_tokens=specials)
    assert tok.merges == expected


def test_training_is_deterministic_and_independent_of_text_order(corpus):
    pieces = [corpus[i:i + 3000] for i in range(0, 15000, 3000)]
    first = BPETokenizer.train(pieces, vocab_size=400)
    again = BPETokenizer.train(pieces, vocab_size=400)
    reversed_order = BPETokenizer.train(pieces[::-1], vocab_size=400)
    assert first.merges == again.merges == reversed_order.merges


def test_generator_input_and_vocab_size_counts_specials(corpus):
    texts = (corpus[i:i + 5000] for i in range(0, 20000, 5000))
    tok = BPETokenizer.train(texts, vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"])
    assert tok.vocab_size == 300
    assert len(tok.merges) == 300 - 256 - 2
    assert tok.special_tokens == {"<|endoftext|>": 298, "<|pad|>": 299}


def test_special_tokens_in_training_text_are_not_merged():
    text = "<|endoftext|>" * 50 + "hello"
    tok = BPETokenizer.train(text, vocab_size=261, pattern=None, special_tokens=["<|endoftext|>"])
    # Only "hello" had pairs to merge: 4 merges make it one token.
    assert [tok.vocab[256 + k] for k in range(4)][-1] == b"hello"
    assert tok.special_tokens == {"<|endoftext|>": 260}


def test_running_out_of_pairs_warns_and_returns_smaller_vocab():
    with pytest.warns(UserWarning, match=r"stopped after 2 merges \(asked for 10\)"):
        tok = BPETokenizer.train("abc", vocab_size=267, pattern=None, special_tokens=["<s>"])
    assert tok.merges == [(97, 98), (256, 99)]
    assert tok.special_tokens == {"<s>": 258}
    assert tok.vocab_size == 259


def test_verbose_shows_progress_bars(capsys):
    BPETokenizer.train("to be or not to be", vocab_size=260, verbose=True)
    err = capsys.readouterr().err
    assert "pre-tokenizing" in err and "BPE merges" in err


def test_unicode_training_learns_multibyte_tokens(bpe_unicode):
    learned = [bpe_unicode.vocab[256 + k] for k in range(len(bpe_unicode.merges))]
    assert any("日".encode() in token for token in learned)
    assert any("🤖".encode() in token for token in learned)

    def is_utf8(token: bytes) -> bool:
        try:
            token.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False
    # Byte-level BPE also learns tokens that hold parts of characters.
    assert any(not is_utf8(token) for token in learned)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(texts="abc", vocab_size=255), ValueError, "vocab_size=255 is too small; expected at least 256"),
    (dict(texts="abc", vocab_size=257, special_tokens=["<a>", "<b>"]), ValueError,
     "expected at least 256 (byte tokens) + 2 (special tokens) = 258"),
    (dict(texts="abc", vocab_size=300.0), TypeError, "vocab_size=300.0 has type float; expected int"),
    (dict(texts="abc", vocab_size=True), TypeError, "expected int"),
    (dict(texts=b"abc", vocab_size=300), TypeError, "expected a str or an iterable of str"),
    (dict(texts=123, vocab_size=300), TypeError, "texts=123 has type int"),
    (dict(texts=["ok", 5], vocab_size=300), TypeError, "texts[1]=5 has type int; expected str"),
    (dict(texts=["", ""], vocab_size=300), ValueError, "empty corpus"),
    (dict(texts=[], vocab_size=300), ValueError, "empty corpus"),
    (dict(texts="ab\ud800", vocab_size=300), ValueError, "texts[0] contains the lone surrogate U+D800 at index 2"),
    (dict(texts="abc", vocab_size=300, special_tokens="<|endoftext|>"), TypeError, "expected a list of str"),
    (dict(texts="abc", vocab_size=300, special_tokens=["<a>", "<a>"]), ValueError, "listed twice"),
    (dict(texts="abc", vocab_size=300, special_tokens=[""]), ValueError, "empty string"),
    (dict(texts="abc", vocab_size=300, pattern="gpt5("), ValueError, "not a valid regex"),
])
def test_train_rejects_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=regex.escape(words)):
        BPETokenizer.train(**kwargs)
