"""Hugging Face tokenizer files without Hugging Face: save_pretrained -> from_pretrained is exact,
GPT-2's files read the same as tokenizer.json, vocab.json + merges.txt and encoder.json +
vocab.bpe, and every form minillm cannot reproduce is refused naming its field
(tests/reference/test_tokenizer_huggingface_reference.py checks the ids against HF itself)."""
from __future__ import annotations

import json
import shutil

import pytest

from minillm.tokenizer import BPETokenizer
from minillm.tokenizer.chat import CHAT_SPECIAL_TOKENS
from minillm.tokenizer.formats import MAX_TOKENIZER_FILE_BYTES
from minillm.tokenizer.huggingface import tokenizer_json
from tests.tokenizer.gpt2_files import gpt2_files

TEXT = ("To be, or not to be: that is the question.\n\n  Whether 'tis nobler... I'll say 12345 times 🤖🚀 "
        "naïve café 日本語 e\u0301 \t\r\n tab<|endoftext|>")


@pytest.fixture(scope="module")
def gpt2_tokenizer() -> BPETokenizer:
    encoder, merges = gpt2_files()
    return BPETokenizer.from_gpt2(encoder, merges)


def _same(a: BPETokenizer, b: BPETokenizer) -> None:
    assert a.to_dict() == b.to_dict()
    assert a.encode(TEXT, allowed_special="all") == b.encode(TEXT, allowed_special="all")


@pytest.mark.parametrize("name", ["bpe_gpt4", "bpe_gpt2", "bpe_unicode", "bpe_chat"])
def test_round_trip_is_exact(request, tmp_path, name):
    tok = request.getfixturevalue(name)
    written = tok.save_pretrained(tmp_path)
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["special_tokens_map.json", "tokenizer.json",
                                                             "tokenizer_config.json"]
    back = BPETokenizer.from_pretrained(tmp_path)
    _same(tok, back)
    assert BPETokenizer.from_pretrained(tmp_path / "tokenizer.json").to_dict() == tok.to_dict()


def test_round_trip_without_a_split_pattern(tmp_path):
    tok = BPETokenizer.train("abababab cdcdcd " * 20, vocab_size=264, pattern=None, special_tokens=["<|x|>"])
    tok.save_pretrained(tmp_path)
    _same(tok, BPETokenizer.from_pretrained(tmp_path))
    assert json.loads((tmp_path / "tokenizer.json").read_text())["pre_tokenizer"]["use_regex"] is False


def test_chat_tokenizer_config_names_the_markers_and_the_template(bpe_chat, tmp_path):
    bpe_chat.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["additional_special_tokens"] == sorted(CHAT_SPECIAL_TOKENS, key=bpe_chat.special_tokens.get)
    assert config["eos_token"] == "<|end|>" and "<|assistant|>" in config["chat_template"]
    assert config["clean_up_tokenization_spaces"] is False


def test_gpt2_files_in_every_layout_give_one_tokenizer(gpt2_tokenizer, tmp_path):
    encoder, merges = gpt2_files()
    (tmp_path / "hf").mkdir()
    shutil.copy(encoder, tmp_path / "hf" / "vocab.json")
    shutil.copy(merges, tmp_path / "hf" / "merges.txt")
    _same(gpt2_tokenizer, BPETokenizer.from_pretrained(tmp_path / "hf"))
    gpt2_tokenizer.save_pretrained(tmp_path / "json")
    from_json = BPETokenizer.from_pretrained(tmp_path / "json")
    _same(gpt2_tokenizer, from_json)
    assert from_json.pattern_name == "gpt2" and from_json.special_tokens == {"<|endoftext|>": 50256}
    # 'Hello world' is [15496, 995] in GPT-2 (tiktoken's gpt2 encoding and OpenAI's encoder.py agree)
    assert from_json.encode("Hello world") == [15496, 995]


def test_merges_as_pairs_read_like_merges_as_strings(bpe_gpt4, tmp_path):
    data = tokenizer_json(bpe_gpt4)
    data["model"]["merges"] = [merge.split(" ") for merge in data["model"]["merges"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    _same(bpe_gpt4, BPETokenizer.from_pretrained(tmp_path))


def test_existing_files_are_kept_without_overwrite(bpe_gpt4, bpe_gpt2, tmp_path):
    bpe_gpt4.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="already holds tokenizer files .*overwrite=True"):
        bpe_gpt2.save_pretrained(tmp_path)
    assert BPETokenizer.from_pretrained(tmp_path).to_dict() == bpe_gpt4.to_dict()
    bpe_gpt2.save_pretrained(tmp_path, overwrite=True)
    assert BPETokenizer.from_pretrained(tmp_path).to_dict() == bpe_gpt2.to_dict()


def test_missing_folder_and_empty_folder_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BPETokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds neither tokenizer.json nor vocab.json"):
        BPETokenizer.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------
# What minillm cannot reproduce is refused, naming the field
# ---------------------------------------------------------------------------------------------
def _tiny() -> dict:
    return tokenizer_json(BPETokenizer([(97, 98), (256, 99)], pattern="gpt4", special_tokens=["<|endoftext|>"]))


def _set(path: str, value):
    def edit(data):
        *parents, last = path.split(".")
        target = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
        return data
    return edit


LLAMA_LIKE_PATTERN = r"\p{L}+|\p{N}{1,3}|\s+|."
REFUSED = [
    (_set("model.type", "WordPiece"), "model.type is 'WordPiece'; expected 'BPE'"),
    (_set("model.byte_fallback", True), "model.byte_fallback is True"),
    (_set("model.dropout", 0.1), "model.dropout is 0.1; expected null"),
    (_set("model.continuing_subword_prefix", "##"), "model.continuing_subword_prefix is '##'"),
    (_set("normalizer", {"type": "NFC"}), "normalizer is .*NFC.*; expected null"),
    (_set("truncation", {"max_length": 8}), "truncation is"),
    (_set("pre_tokenizer", None), "pre_tokenizer is None; expected a ByteLevel"),
    (_set("pre_tokenizer", {"type": "Whitespace"}), "pre_tokenizer.type is 'Whitespace'"),
    (_set("pre_tokenizer", {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}),
     "pre_tokenizer.add_prefix_space is True"),
    (_set("pre_tokenizer.pretokenizers.0.behavior", "Removed"), r"pre_tokenizer.pretokenizers\[0\].behavior is 'Removed'"),
    (_set("pre_tokenizer.pretokenizers.0.pattern", {"String": " "}), r"pre_tokenizer.pretokenizers\[0\].pattern is"),
    (_set("pre_tokenizer.pretokenizers.0.pattern", {"Regex": "(unclosed"}), r"pattern.Regex is '\(unclosed'"),
    (_set("pre_tokenizer.pretokenizers.1.use_regex", True), r"pretokenizers\[1\].use_regex is True"),
    (_set("decoder", {"type": "WordPiece"}), "decoder is"),
    (_set("post_processor", {"type": "BertProcessing"}), "post_processor.type is 'BertProcessing'"),
    (_set("added_tokens.0.lstrip", True), r"added_tokens\[0\].lstrip is True"),
    (_set("added_tokens.0.id", 257), r"added_tokens\[0\].id is 257; .*expected an id >= 258"),
    (_set("model.merges", ["a b", "ab d"]), r"model.merges\[1\] is 'ab d'; expected tokens of model.vocab, but 'abd'"),
    (_set("model.merges", ["ab c"]), r"model.merges\[0\] is 'ab c'; it makes 'abc', whose id is 257; expected 256"),
    (_set("model.merges", "a b"), "model.merges is 'a b'; expected list"),
    (_set("model.vocab.xyz", 300), "model.vocab holds 'xyz' \\(id 300\\), which no merge makes"),
    (_set("model", {"type": "BPE", "vocab": {"a": 0}, "merges": []}), "model.vocab lacks the byte token"),
]


@pytest.mark.parametrize("edit, message", REFUSED)
def test_unrepresentable_tokenizers_are_refused_naming_the_field(tmp_path, edit, message):
    data = _tiny()
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA_LIKE_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    BPETokenizer.from_pretrained(_write(tmp_path, data))            # the unedited file reads
    with pytest.raises(ValueError, match=message):
        BPETokenizer.from_pretrained(_write(tmp_path, edit(data)))


def _write(tmp_path, data) -> str:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return str(tmp_path)


def test_ignore_merges_is_refused_when_merges_do_not_rebuild_a_token(tmp_path):
    # merges: a+b, b+c, a+bc. "abc" merges to [ab, c] (a+b ranks first), but HF with ignore_merges
    # would take the vocabulary token "abc" whole.
    tok = BPETokenizer([(97, 98), (98, 99), (97, 257)], pattern=None)
    data = tokenizer_json(tok)
    BPETokenizer.from_pretrained(_write(tmp_path, data))
    data["model"]["ignore_merges"] = True
    with pytest.raises(ValueError, match="model.ignore_merges is true and the merges do not rebuild the token "
                                         "with id 258"):
        BPETokenizer.from_pretrained(_write(tmp_path, data))


def test_hostile_files_are_refused_before_parsing(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nests JSON arrays or objects too deeply"):
        BPETokenizer.from_pretrained(tmp_path)
    with open(path, "wb") as handle:
        handle.truncate(MAX_TOKENIZER_FILE_BYTES + 1)
    with pytest.raises(ValueError, match="more than the 16,777,216-byte limit"):
        BPETokenizer.from_pretrained(tmp_path)
    path.write_text('{"model": {"type": "BPE"}, "model": {}}')
    with pytest.raises(ValueError, match="duplicate"):
        BPETokenizer.from_pretrained(tmp_path)
