"""Tokenizer files: minillm JSON, tiktoken rank files, GPT-2's encoder.json + vocab.bpe,
dict round trips, and clear errors for damaged files."""
from __future__ import annotations

import base64
import json
import os

import pytest
import regex

from minillm.tokenizer import BPETokenizer, CharTokenizer, bytes_to_unicode, load_tokenizer, tokenizer_from_dict
from minillm.tokenizer.patterns import GPT2_SPLIT_PATTERN

SAMPLE = "To be, or not to be: that is the question.\n  Whether 'tis nobler 1599 🤖 naïve\t<|endoftext|>"


# ------------------------------------------------------------------------------------------------
# minillm JSON
# ------------------------------------------------------------------------------------------------

def test_save_load_round_trip(bpe_gpt4, tmp_path):
    path = tmp_path / "tok.json"
    bpe_gpt4.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.to_dict() == bpe_gpt4.to_dict()
    assert loaded.encode(SAMPLE, allowed_special="all") == bpe_gpt4.encode(SAMPLE, allowed_special="all")
    assert loaded.special_tokens == bpe_gpt4.special_tokens and loaded.vocab_size == bpe_gpt4.vocab_size
    assert [name for name in os.listdir(tmp_path)] == ["tok.json"]  # atomic write left no temp file
    assert load_tokenizer(path).to_dict() == bpe_gpt4.to_dict()


def test_saved_file_is_readable_json_one_merge_per_line(bpe_gpt4, tmp_path):
    path = tmp_path / "tok.json"
    bpe_gpt4.save(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert data["format"] == "minillm-tokenizer" and data["version"] == 1 and data["type"] == "bpe"
    assert data["pattern_name"] == "gpt4"
    first_left, first_right = bpe_gpt4.merges[0]
    shown = bpe_gpt4.vocab[256].decode("utf-8")
    assert f"    [{first_left}, {first_right}, {json.dumps(shown)}]," in text.splitlines()
    assert len(text.splitlines()) > len(bpe_gpt4.merges)


def test_to_dict_is_json_serializable_and_round_trips(bpe_unicode, bpe_gpt2):
    for tok in (bpe_unicode, bpe_gpt2):
        data = json.loads(json.dumps(tok.to_dict()))
        again = tokenizer_from_dict(data)
        assert isinstance(again, BPETokenizer)
        assert again.to_dict() == tok.to_dict()
        assert again.encode(SAMPLE, allowed_special="all") == tok.encode(SAMPLE, allowed_special="all")


def test_custom_pattern_and_no_pattern_survive_save(tmp_path, train_text):
    for pattern in (r"\w+|\s+|[^\w\s]+", None):
        tok = BPETokenizer.train(train_text[:3000], vocab_size=280, pattern=pattern)
        tok.save(tmp_path / "t.json")
        loaded = BPETokenizer.load(tmp_path / "t.json")
        assert loaded.pattern == pattern and loaded.pattern_name is None
        assert loaded.encode(train_text[:500]) == tok.encode(train_text[:500])


def _saved(tok, tmp_path) -> tuple[str, dict]:
    path = tmp_path / "tok.json"
    tok.save(path)
    return str(path), json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("damage, words", [
    (lambda text, data: text[: len(text) // 2], "is not valid JSON"),
    (lambda text, data: "", "is not valid JSON"),
    (lambda text, data: json.dumps({**data, "version": 99}), "'version' is 99; this minillm reads version 1"),
    (lambda text, data: json.dumps({**data, "format": "other"}), "'format' is 'other'"),
    (lambda text, data: json.dumps({**data, "type": "wordpiece"}), "'wordpiece'; expected 'bpe'"),
    (lambda text, data: json.dumps({k: v for k, v in data.items() if k != "merges"}), "missing the field 'merges'"),
    (lambda text, data: json.dumps({**data, "merges": "oops"}), "field 'merges' is str"),
    (lambda text, data: json.dumps({**data, "merges": [data["merges"][0][:2] + ["x"]] + data["merges"][1:]}),
     "merges[0] shows 'x' but makes"),
    (lambda text, data: json.dumps({**data, "merges": [data["merges"][1]] + data["merges"]}),
     "repeats an earlier merge"),
    (lambda text, data: json.dumps({**data, "merges": data["merges"] + [[5000, 1, "?"]]}),
     "uses an id outside"),
    (lambda text, data: json.dumps({**data, "merges": data["merges"] + [["a", 1]]}),
     "is not [left_id, right_id, text]"),
    (lambda text, data: json.dumps({**data, "byte_ids": list(range(255)) + [0]}), "expected the ids 0..255"),
    (lambda text, data: json.dumps({**data, "pattern_name": "gpt2"}), "pattern_name is 'gpt2' but the pattern"),
    (lambda text, data: json.dumps({**data, "special_tokens": {"<|x|>": 3}}), "collides with the byte/merge"),
    (lambda text, data: json.dumps([1, 2]), "expected a JSON object"),
])
def test_damaged_json_files_raise_naming_the_file(bpe_gpt4, tmp_path, damage, words):
    path, data = _saved(bpe_gpt4, tmp_path)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(damage(text, data))
    for loader in (BPETokenizer.load, load_tokenizer):
        with pytest.raises(ValueError, match=regex.escape(words)) as info:
            loader(path)
        assert path in str(info.value)


def test_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        BPETokenizer.load(path)
    with pytest.raises(FileNotFoundError):
        BPETokenizer.load(tmp_path / "missing.json")


def test_from_dict_and_dispatch_errors(bpe_gpt4):
    with pytest.raises(ValueError, match="tokenizer dict: 'version' is 2"):
        BPETokenizer.from_dict({**bpe_gpt4.to_dict(), "version": 2})
    with pytest.raises(ValueError, match="type='bytes'; expected 'bpe' or 'char'"):
        tokenizer_from_dict({"type": "bytes"})
    with pytest.raises(TypeError, match="expected the dict made by to_dict"):
        tokenizer_from_dict([1])


def test_load_tokenizer_dispatches_on_type(tmp_path, train_text):
    char = CharTokenizer.train(train_text[:2000])
    char.save(tmp_path / "char.json")
    assert isinstance(load_tokenizer(tmp_path / "char.json"), CharTokenizer)
    with pytest.raises(ValueError, match="'type' is 'char'; expected 'bpe'"):
        BPETokenizer.load(tmp_path / "char.json")


# ------------------------------------------------------------------------------------------------
# tiktoken rank files
# ------------------------------------------------------------------------------------------------

def test_tiktoken_file_round_trip(bpe_gpt4, tmp_path):
    path = tmp_path / "tok.tiktoken"
    bpe_gpt4.save_tiktoken(path)
    lines = path.read_text(encoding="ascii").splitlines()
    assert len(lines) == len(bpe_gpt4.mergeable_ranks)
    assert lines[65] == f"{base64.b64encode(b'A').decode()} 65"
    loaded = BPETokenizer.load_tiktoken(path, pattern="gpt4", special_tokens=list(bpe_gpt4.special_tokens))
    assert loaded.merges == bpe_gpt4.merges
    assert loaded.special_tokens == bpe_gpt4.special_tokens
    assert loaded.encode(SAMPLE, allowed_special="all") == bpe_gpt4.encode(SAMPLE, allowed_special="all")


def test_tiktoken_file_with_gpt2_byte_order(tmp_path):
    # Ranks 0..255 in GPT-2's byte order (printable bytes first), as OpenAI's files have them.
    order = list(bytes_to_unicode())
    tokens = [bytes([byte]) for byte in order] + [b"th", b"the", b" the"]
    path = tmp_path / "gpt2order.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    tok = BPETokenizer.load_tiktoken(path, pattern="gpt2", special_tokens={"<|endoftext|>": 259})
    assert tok.encode(" the the") == [258, 258]
    assert tok.mergeable_ranks[b" "] == order.index(32) == 220
    assert tok.encode("<|endoftext|>", allowed_special="all") == [259]


def _write_ranks(path, tokens):
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))


@pytest.mark.parametrize("content, words", [
    (lambda good: good[: len(good) // 2] + "\n", None),  # cut mid-line: see the check below
    (lambda good: good + "QUJD\n", "line 260: expected '<base64 token> <rank>'"),
    (lambda good: good + "!!notbase64 259\n", "line 260: '!!notbase64 259' is not '<base64 token> <int rank>'"),
    (lambda good: good + "QUI= 3\n", "line 260: rank 3 appears twice"),
    (lambda good: good + "QQ== 300\n", "line 260: token b'A' appears twice"),
    (lambda good: good + "WFla 300\n", "rank 259 is missing"),
    (lambda good: "", "holds no tokens"),
])
def test_damaged_tiktoken_files(tmp_path, content, words):
    path = tmp_path / "r.tiktoken"
    _write_ranks(path, [bytes([b]) for b in range(256)] + [b"ab", b"abc", b"xy"])
    good = path.read_text()
    path.write_text(content(good))
    with pytest.raises(ValueError) as info:
        BPETokenizer.load_tiktoken(path)
    assert str(path) in str(info.value)
    if words is not None:
        assert words in str(info.value)


def test_tiktoken_ranks_must_follow_merge_order(tmp_path):
    path = tmp_path / "order.tiktoken"
    _write_ranks(path, [bytes([b]) for b in range(256)] + [b"abc", b"ab"])
    with pytest.raises(ValueError, match=regex.escape("the token b'abc' (rank 256) is not the merge of two")):
        BPETokenizer.load_tiktoken(path)
    _write_ranks(path, [bytes([b]) for b in range(255)] + [b"ab", b"\xff"])
    with pytest.raises(ValueError, match="rank 255 is the 2-byte token b'ab'; expected ranks 0..255"):
        BPETokenizer.load_tiktoken(path)


# ------------------------------------------------------------------------------------------------
# GPT-2 encoder.json + vocab.bpe
# ------------------------------------------------------------------------------------------------

def test_bytes_to_unicode_is_gpt2s_table():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord("!")] == "!" and table[0xE9] == "é"
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("\t")] == "ĉ"
    assert table[0] == "Ā" and table[0x7F] == "ġ" and table[0xAD] == "Ń"
    assert all(char.isprintable() and not char.isspace() for char in table.values())


def write_gpt2_files(directory, merge_strings: list[str], specials: list[str] = ("<|endoftext|>",)):
    """encoder.json + vocab.bpe laid out as GPT-2's: bytes in table order, then merges, then specials."""
    table = bytes_to_unicode()
    encoder = {char: index for index, char in enumerate(table.values())}
    for line in merge_strings:
        left, right = line.split(" ")
        encoder[left + right] = len(encoder)
    for special in specials:
        encoder[special] = len(encoder)
    (directory / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (directory / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merge_strings) + "\n", encoding="utf-8")
    return directory / "encoder.json", directory / "vocab.bpe"


def gpt2_reference_encode(text: str, encoder: dict, merge_lines: list[str]) -> list[int]:
    """GPT-2's encoder.py, restated: bytes -> table characters per chunk, then repeatedly merge
    the pair of strings with the lowest merge rank (all occurrences, left to right)."""
    table = bytes_to_unicode()
    ranks = {tuple(line.split(" ")): rank for rank, line in enumerate(merge_lines)}
    ids = []
    for chunk in regex.findall(GPT2_SPLIT_PATTERN, text):
        word = [table[byte] for byte in chunk.encode("utf-8")]
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids += [encoder[piece] for piece in word]
    return ids


def test_gpt2_files_hand_written(tmp_path):
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "o r", "Ġthe Ġ", "Ċ Ċ"]
    encoder_path, vocab_path = write_gpt2_files(tmp_path, merges)
    tok = BPETokenizer.from_gpt2(encoder_path, vocab_path)
    encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
    assert tok.pattern_name == "gpt2"
    assert tok.special_tokens == {"<|endoftext|>": 263} and tok.vocab_size == 264
    assert encoder["Ġ"] == 220 and tok.encode(" ") == [220]  # GPT-2's id for the space byte
    assert tok.encode(" the") == [encoder["Ġthe"]]
    assert tok.encode("\n\n") == [encoder["ĊĊ"]]
    assert tok.encode("Hello<|endoftext|>", allowed_special="all")[-1] == 263
    for text in [" the other", "the the  the\n\nor", SAMPLE.replace("<|endoftext|>", "")]:
        assert tok.encode(text) == gpt2_reference_encode(text, encoder, merges)
        assert tok.decode(tok.encode(text)) == text


def test_gpt2_files_from_trained_merges_match_gpt2_algorithm(tmp_path, bpe_gpt2, heldout_text):
    # Spell a trained tokenizer's merges the GPT-2 way: a realistic pair of files.
    table = bytes_to_unicode()
    spelled = {token_id: "".join(table[b] for b in token) for token_id, token in bpe_gpt2.vocab.items()
               if token_id < 256 + len(bpe_gpt2.merges)}
    merge_lines = [f"{spelled[left]} {spelled[right]}" for left, right in bpe_gpt2.merges]
    encoder_path, vocab_path = write_gpt2_files(tmp_path, merge_lines)
    tok = BPETokenizer.from_gpt2(encoder_path, vocab_path)
    encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
    text = heldout_text[:5000]
    ids = tok.encode(text)
    assert ids == gpt2_reference_encode(text, encoder, merge_lines)
    # Same token boundaries as the trained tokenizer (ids differ: GPT-2 orders the bytes differently).
    assert [tok.decode_bytes([i]) for i in ids] == [bpe_gpt2.decode_bytes([i]) for i in bpe_gpt2.encode(text)]


@pytest.mark.parametrize("which, damage, words", [
    ("vocab.bpe", lambda text: text[:-4], "the merges file looks truncated"),
    ("vocab.bpe", lambda text: text[:-2], "line 5: expected 'left right'"),
    ("vocab.bpe", lambda text: text.replace("h e", "h  e"), "line 3: expected 'left right'"),
    ("vocab.bpe", lambda text: text.replace("Ġt he\nĠ a", "Ġ a\nĠt he"), "ids must follow merge order"),
    ("encoder.json", lambda text: text[: len(text) // 2], "is not valid UTF-8 JSON"),
    ("encoder.json", lambda text: json.dumps({"a": 1}), "is not in"),
    ("encoder.json", lambda text: json.dumps(["x"]), "expected a JSON object"),
])
def test_damaged_gpt2_files(tmp_path, which, damage, words):
    write_gpt2_files(tmp_path, ["Ġ t", "h e", "Ġt he", "Ġ a"])
    path = tmp_path / which
    path.write_text(damage(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(ValueError) as info:
        BPETokenizer.from_gpt2(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    assert str(path) in str(info.value)
    if words is not None:
        assert words in str(info.value)


def test_gpt2_merges_must_follow_encoder_id_order(tmp_path):
    encoder_path, vocab_path = write_gpt2_files(tmp_path, ["Ġ t", "h e"])
    vocab_path.write_text("#version: 0.2\nh e\nĠ t\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected 256 \\(ids must follow merge order\\)"):
        BPETokenizer.from_gpt2(encoder_path, vocab_path)
