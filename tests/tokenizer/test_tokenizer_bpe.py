"""BPETokenizer encoding and decoding: round trips, equality with a plain reference encoder,
surrogates, decode errors, batches, streaming, the chunk cache, inspection helpers."""
from __future__ import annotations

import io
import random
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm.tokenizer import BPETokenizer, format_compression_report
from minillm.tokenizer.merge import _apply_merges_heap, _apply_merges_rescan, apply_merges

from .conftest import reference_encode

# Any Unicode text except lone surrogates (category Cs), which have no UTF-8 encoding.
unicode_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
FIXED_SAMPLES = [
    "", " ", "\n\n\n", "Hello, world!", "🤖🚀 emoji 👍🏽 with skin tone, 👨‍👩‍👧 family (ZWJ)",
    "e\u0301 a\u0308 combining marks", "日本語 中文 한국어", "control \x00\x01\x7f\x1b[0m chars\r\n",
    "\ufeffBOM and \U0010ffff max code point", "'s 'T 'RE 12345678 x!!\n\n\tyz  ",
]


@pytest.fixture(scope="module", params=["gpt4", "gpt2", "unicode"])
def any_bpe(request, bpe_gpt4, bpe_gpt2, bpe_unicode):
    return {"gpt4": bpe_gpt4, "gpt2": bpe_gpt2, "unicode": bpe_unicode}[request.param]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_round_trip_any_unicode(any_bpe, text):
    ids = any_bpe.encode_ordinary(text)
    assert any_bpe.decode(ids) == text
    assert any_bpe.decode_bytes(ids) == text.encode("utf-8")


@pytest.mark.parametrize("text", FIXED_SAMPLES)
def test_round_trip_fixed_samples(any_bpe, text):
    assert any_bpe.decode(any_bpe.encode(text)) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_encoding_equals_reference_encoder(any_bpe, text):
    ranks = any_bpe.mergeable_ranks
    expected = [token_id for chunk in regex.findall(any_bpe.pattern, text)
                for token_id in reference_encode(chunk.encode("utf-8"), ranks)]
    assert any_bpe.encode_ordinary(text) == expected


def test_encoding_equals_reference_encoder_on_heldout_text(bpe_gpt4, heldout_text):
    ranks = bpe_gpt4.mergeable_ranks
    text = heldout_text[:20_000]
    expected = [token_id for chunk in regex.findall(bpe_gpt4.pattern, text)
                for token_id in reference_encode(chunk.encode("utf-8"), ranks)]
    assert bpe_gpt4.encode_ordinary(text) == expected


def test_heap_and_rescan_merge_loops_agree(bpe_gpt4, corpus):
    merges = bpe_gpt4._merges
    rng = random.Random(0)
    for _ in range(30):
        start = rng.randrange(len(corpus) - 2000)
        data = corpus[start:start + rng.randint(2, 2000)].encode("utf-8")
        assert _apply_merges_heap(list(data), merges) == _apply_merges_rescan(list(data), merges)


def test_no_split_pattern_encodes_long_texts_like_reference(corpus):
    tok = BPETokenizer.train([corpus[i:i + 300] for i in range(0, 30_000, 300)], vocab_size=400, pattern=None)
    text = corpus[50_000:51_500]  # one chunk of 1500 bytes: the heap merge loop
    assert tok.encode(text) == reference_encode(text.encode("utf-8"), tok.mergeable_ranks)
    assert tok.decode(tok.encode(text)) == text


def test_apply_merges_chooses_lowest_rank_then_leftmost():
    merges = {(1, 2): 256, (2, 3): 257, (256, 3): 258}
    assert apply_merges([1, 2, 3], dict(merges)) == [258]
    assert apply_merges([2, 3, 1, 2], dict(merges)) == [257, 256]
    assert apply_merges([1, 1, 1], {(1, 1): 256}) == [256, 1]


def test_whole_vocabulary_round_trips(bpe_gpt4):
    for token_id in range(bpe_gpt4.vocab_size - len(bpe_gpt4.special_tokens)):
        token = bpe_gpt4.vocab[token_id]
        assert bpe_gpt4.decode_bytes([token_id]) == token


@pytest.mark.parametrize("text, index", [("\ud800", 0), ("abc\udfffdef", 3), ("ok 🤖 \udc80", 5)])
def test_lone_surrogates_are_rejected_with_position(bpe_gpt4, text, index):
    for encode in (bpe_gpt4.encode, bpe_gpt4.encode_ordinary):
        with pytest.raises(ValueError, match=rf"lone surrogate U\+D[89A-F][0-9A-F]{{2}} at index {index}"):
            encode(text)


def test_surrogate_pair_written_as_one_character_is_fine(bpe_gpt4):
    text = "\U0001F916"  # one code point, not two surrogates
    assert bpe_gpt4.decode(bpe_gpt4.encode(text)) == text


def test_decode_replaces_invalid_utf8(bpe_unicode):
    robot = bpe_unicode.encode("🤖")
    partial = [bpe_unicode.byte_ids[byte] for byte in "🤖".encode("utf-8")[:2]]
    assert bpe_unicode.decode(partial) == "\ufffd"
    assert bpe_unicode.decode(partial + robot) == "\ufffd🤖"
    assert bpe_unicode.decode_bytes(partial) == "🤖".encode("utf-8")[:2]


@pytest.mark.parametrize("ids, error, words", [
    ([65, 700], ValueError, "ids[1]=700 is out of range; expected 0 <= id < vocab_size=700"),
    ([-1], ValueError, "ids[0]=-1 is out of range"),
    ([65, 1.5], TypeError, "ids[1]=1.5 has type float; expected an int token id"),
    (["65"], TypeError, "ids[0]='65' has type str"),
    ("65", TypeError, "expected a sequence of int token ids"),
    (65, TypeError, "ids=65 has type int; expected a sequence"),
])
def test_decode_rejects_bad_ids(bpe_gpt4, ids, error, words):
    with pytest.raises(error, match=regex.escape(words)):
        bpe_gpt4.decode(ids)


def test_decode_accepts_numpy_arrays_and_tuples(bpe_gpt4):
    ids = bpe_gpt4.encode("To be, or not to be")
    assert bpe_gpt4.decode(np.array(ids, dtype=np.int32)) == "To be, or not to be"
    assert bpe_gpt4.decode(tuple(ids)) == "To be, or not to be"
    assert bpe_gpt4.decode([]) == ""


@pytest.mark.parametrize("bad, error", [(b"bytes", TypeError), (None, TypeError), (5, TypeError)])
def test_encode_rejects_non_str(bpe_gpt4, bad, error):
    with pytest.raises(error, match="expected str"):
        bpe_gpt4.encode(bad)
    with pytest.raises(error, match="expected str"):
        bpe_gpt4.encode_ordinary(bad)


def test_encode_batch(bpe_gpt4):
    texts = ["To be", "", "or not <|endoftext|> to be"]
    assert bpe_gpt4.encode_batch(texts, allowed_special="all") == [bpe_gpt4.encode(t, allowed_special="all")
                                                                   for t in texts]
    with pytest.raises(TypeError, match=r"texts\[1\]=7 has type int"):
        bpe_gpt4.encode_batch(["a", 7])
    with pytest.raises(TypeError, match="use encode\\(\\) for one text"):
        bpe_gpt4.encode_batch("a single string")


lines_strategy = st.lists(st.text(alphabet=st.sampled_from(list("ab1 .\n\n\t") + ["é", "🤖"]), max_size=30),
                          max_size=30)


@settings(max_examples=150, deadline=None)
@given(lines=lines_strategy, buffer_chars=st.integers(1, 50))
@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_encode_iterable_equals_encode_of_joined_text(pattern, lines, buffer_chars, request):
    tok = request.getfixturevalue("bpe_gpt4" if pattern == "gpt4" else "bpe_gpt2")
    streamed = list(tok.encode_iterable(lines, buffer_chars=buffer_chars))
    assert streamed == tok.encode("".join(lines))


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.one_of(st.text(alphabet="ab \n.", max_size=20), st.just("<|endoftext|>"),
                                st.just("\n<|user|>x\n")), max_size=20), buffer_chars=st.integers(1, 30))
def test_encode_iterable_with_special_tokens(bpe_gpt4, lines, buffer_chars):
    streamed = list(bpe_gpt4.encode_iterable(lines, allowed_special="all", buffer_chars=buffer_chars))
    assert streamed == bpe_gpt4.encode("".join(lines), allowed_special="all")


def test_encode_iterable_streams_a_file(bpe_gpt4, heldout_text):
    handle = io.StringIO(heldout_text, newline="")
    stream = bpe_gpt4.encode_iterable(handle, buffer_chars=1000)
    first = next(stream)  # lazy: ids come before the whole file is read
    assert handle.tell() < len(heldout_text)
    assert [first] + list(stream) == bpe_gpt4.encode(heldout_text)


def test_encode_iterable_checks_arguments_eagerly(bpe_gpt4):
    with pytest.raises(TypeError, match="use encode\\(\\) for one text"):
        bpe_gpt4.encode_iterable("not a list")
    with pytest.raises(ValueError, match="allowed_special='bogus' is not a known mode"):
        bpe_gpt4.encode_iterable(["a"], allowed_special="bogus")
    with pytest.raises(TypeError, match=r"texts\[1\]=3 has type int"):
        list(bpe_gpt4.encode_iterable(["a", 3]))
    with pytest.raises(ValueError, match="<|endoftext|>"):
        list(bpe_gpt4.encode_iterable(["a\n", "b <|endoftext|>"]))


def test_chunk_cache_is_bounded(train_text):
    tok = BPETokenizer.train(train_text[:20_000], vocab_size=300)
    tok.cache_size = 50
    text = train_text[:30_000]
    expected = tok.encode(text)
    assert len(tok._cache) <= 50
    assert tok.encode(text) == expected  # same ids with a cache that keeps being trimmed


def test_tokenizer_can_be_shared_by_threads(train_text):
    tok = BPETokenizer.train(train_text[:20_000], vocab_size=400)
    tok.cache_size = 64  # keep trimming while other threads read the cache
    texts = [train_text[i:i + 3000] for i in range(0, 60_000, 3000)]
    expected = [BPETokenizer.from_dict(tok.to_dict()).encode(text) for text in texts]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads very often, so races would show
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(tok.encode, texts * 3))
    finally:
        sys.setswitchinterval(interval)
    assert results == expected * 3


def test_large_text_is_encoded_blockwise_with_same_ids(bpe_gpt4, corpus, monkeypatch):
    from minillm.tokenizer import bpe as bpe_module
    whole = bpe_gpt4.encode(corpus)
    monkeypatch.setattr(bpe_module, "BLOCK_CHARS", 1000)
    assert bpe_gpt4.encode(corpus) == whole


def test_vocab_and_ranks_follow_tiktoken_convention(bpe_gpt4):
    ranks = bpe_gpt4.mergeable_ranks
    assert len(ranks) == bpe_gpt4.vocab_size - len(bpe_gpt4.special_tokens)
    assert all(ranks[bytes([byte])] == byte for byte in range(256))
    for k, (left, right) in enumerate(bpe_gpt4.merges):
        assert ranks[bpe_gpt4.vocab[left] + bpe_gpt4.vocab[right]] == 256 + k
    assert bpe_gpt4.vocab[bpe_gpt4.special_tokens["<|user|>"]] == b"<|user|>"


def test_visualize_brackets_tokens(bpe_gpt4):
    shown = bpe_gpt4.visualize("To be, or not\n<|endoftext|>")
    assert shown.startswith("[To][ be][,][ or]") and shown.endswith("[<|endoftext|>]")
    assert "\\n" in shown and "\n" not in shown
    ids = bpe_gpt4.encode("To be, or not\n<|endoftext|>", allowed_special="all")
    assert shown.count("][") == len(ids) - 1


def test_visualize_escapes_partial_characters(bpe_gpt4):
    # No merge joins bytes of "🤖" in this tokenizer: four single-byte tokens, each shown escaped.
    assert bpe_gpt4.visualize("🤖") == "[\\xf0][\\x9f][\\xa4][\\x96]"


def test_compression_report(bpe_gpt4, heldout_text):
    report = bpe_gpt4.compression_report(heldout_text)
    ids = bpe_gpt4.encode_ordinary(heldout_text)
    assert report["tokens"] == len(ids)
    assert report["bytes"] == len(heldout_text.encode("utf-8"))
    assert report["characters"] == len(heldout_text)
    assert report["bytes_per_token"] == pytest.approx(report["bytes"] / len(ids))
    assert 2.0 < report["bytes_per_token"] < 6.0
    assert report["vocab_size"] == 700
    text = format_compression_report(report)
    assert "bytes per token" in text and f"{len(ids):,}" in text
    assert bpe_gpt4.compression_report("")["bytes_per_token"] == 0.0


def test_repr(bpe_gpt4):
    assert repr(bpe_gpt4) == ("BPETokenizer(vocab_size=700, merges=441, pattern='gpt4', "
                              "special_tokens=['<|endoftext|>', '<|user|>', '<|assistant|>'])")
