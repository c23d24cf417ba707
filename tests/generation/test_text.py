"""Incremental detokenization: multi-byte characters split across tokens, stop strings held back."""
import pytest

from minillm.generation import IncrementalDetokenizer, split_stop, stream_text
from minillm.tokenizer import BPETokenizer
from tests.generation.helpers import BytesTokenizer, make_model

EMOJI = "😀".encode()                                            # F0 9F 98 80


def test_an_emoji_split_across_tokens_is_never_garbled():
    tok = BytesTokenizer([b"a", EMOJI[:1], EMOJI[1:3], EMOJI[3:] + b"b", "é".encode()])
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push(i) for i in (0, 1, 2, 3, 4)]
    assert pieces == ["a", "", "", "😀b", "é"]
    assert detok.finish() == "" and detok.text == "a😀bé"


def test_byte_level_bpe_streams_utf8():
    tok = BPETokenizer([])                                       # no merges: one token per byte
    text = "héllo 😀 wörld ✓"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode())
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push(i) for i in ids]
    assert "\ufffd" not in "".join(pieces) and "".join(pieces) + detok.finish() == text


def test_incomplete_and_invalid_bytes_become_replacement_characters():
    tok = BytesTokenizer([b"x", EMOJI[:2], b"\xff"])
    detok = IncrementalDetokenizer(tok)
    assert [detok.push(i) for i in (0, 2, 1)] == ["x", "\ufffd", ""]
    assert detok.finish() == "\ufffd"                             # the cut emoji at the end


def test_stop_strings_are_held_back_then_cut():
    tok = BytesTokenizer([b"a", b"\n", b"b", b"\n\nc"])
    detok = IncrementalDetokenizer(tok, ["\n\n"])
    assert [detok.push(i) for i in (0, 1, 2)] == ["a", "", "\nb"]  # a lone newline is released later
    assert [detok.push(i) for i in (1, 1, 0)] == ["", "", ""] and detok.stopped
    assert detok.text == "a\nb" and detok.finish() == ""
    detok = IncrementalDetokenizer(tok, ["END", "\n\n"])
    assert detok.push(0) + detok.push(3) == "a" and detok.stopped   # stop inside one token
    detok = IncrementalDetokenizer(tok, ["\n\n"])
    assert detok.push(0) + detok.push(1) + detok.finish() == "a\n"  # held text released at the end


def test_split_stop():
    assert split_stop(None) == ([], [])
    assert split_stop(3) == ([3], []) and split_stop("x") == ([], ["x"])
    assert split_stop([1, "\n\n", 2]) == ([1, 2], ["\n\n"])
    with pytest.raises(ValueError, match=r"stop\[0\]='' is an empty string"):
        split_stop([""])
    with pytest.raises(TypeError, match=r"stop\[1\]=1.5 has type float; expected a token id \(int\) or a stop string"):
        split_stop([1, 1.5])


def test_stream_text_equals_the_decoded_generation_cut_at_the_stop():
    tok = BytesTokenizer([bytes([c]) for c in b"abcdefghij"] + [EMOJI[:2], EMOJI[2:]] + [b"\n"] * 12)
    model = make_model()                                         # vocab 24
    prompt = [0, 1, 2]
    ids = model.generate(prompt, 14, seed=5)[3:]
    full = tok.decode(ids)
    assert "".join(stream_text(model, tok, prompt, 14, seed=5)) == full
    stop_id = ids[6]
    cut = "".join(stream_text(model, tok, prompt, 14, seed=5, stop=[stop_id]))
    assert cut == tok.decode(ids[:ids.index(stop_id)])           # the stop token's text is not shown
    stop_text = full[3:5]
    assert "".join(stream_text(model, tok, prompt, 14, seed=5, stop=[stop_text])) == full[:full.find(stop_text)]
