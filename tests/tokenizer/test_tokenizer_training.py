"""BPE training: the classic example, the tie-break rule, equality with a naive trainer,
determinism, special tokens, argument checks."""
from __future__ import annotations

import warnings
from collections import Counter

import pytest
import regex
from hypothesis import given, settings, strategies as st

from minillm.tokenizer import BPETokenizer
from minillm.tokenizer.patterns import GPT4_SPLIT_PATTERN


def naive_train(texts: list[str], num_merges: int, pattern: str | None) -> list[tuple[int, int]]:
    """Textbook BPE: recount every pair of every chunk occurrence before each merge; take the
    highest count, ties to the smallest (left id, right id); merge it everywhere."""
    chunks = []
    for text in texts:
        chunks += regex.findall(pattern, text) if pattern is not None else [text]
    words = [list(chunk.encode("utf-8")) for chunk in chunks]
    merges = []
    for k in range(num_merges):
        counts = Counter(pair for word in words for pair in zip(word, word[1:]))
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        new_id = 256 + k
        merged_words = []
        for word in words:
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words.append(out)
        words = merged_words
        merges.append(best)
    return merges


def test_classic_example_learns_documented_merges():
    # "aaabdaaabac": aa (count 4) -> 256; then ab and (aa, a) tie at 2: the smaller pair (97, 98)
    # wins -> 257; then (aa, ab) -> 258, i.e. Z=aa, Y=ab, X=ZY as in the textbook example.
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, pattern=None)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
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


def test_training_equals_naive_trainer_on_corpus(corpus):
    texts = [corpus[:4000], corpus[4000:6000]]
    tok = BPETokenizer.train(texts, vocab_size=256 + 150, pattern="gpt4")
    assert tok.merges == naive_train(texts, 150, GPT4_SPLIT_PATTERN)


def test_raw_byte_training_on_one_long_text_equals_naive_trainer(corpus):
    # pattern=None: the whole text is one word with many occurrences of each pair.
    text = corpus[10_000:14_000]
    tok = BPETokenizer.train(text, vocab_size=256 + 120, pattern=None)
    assert tok.merges == naive_train([text], 120, None)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(alphabet="abc ab\n", max_size=40), min_size=1, max_size=6).filter(
    lambda texts: any(texts)), num_merges=st.integers(0, 25), split=st.booleans())
def test_training_equals_naive_trainer_on_random_texts(texts, num_merges, split):
    # A tiny alphabet gives many equal counts: the tie-break rule is exercised all the time.
    pattern = GPT4_SPLIT_PATTERN if split else None
    expected = naive_train(texts, num_merges, pattern)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # running out of pairs early is fine here
        tok = BPETokenizer.train(texts, vocab_size=256 + num_merges, pattern="gpt4" if split else None)
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
