"""Hostile tokenizer files are refused, in bounded memory, with one clear error naming the file.

Every reader of a tokenizer file (minillm's JSON, tiktoken rank files, GPT-2's encoder.json and
vocab.bpe) refuses a file over ``MAX_TOKENIZER_FILE_BYTES`` before reading it, and the JSON
readers parse with their nesting bounded to what the format has (3 levels; 1 for encoder.json)
and duplicate keys refused. Fields are checked for form, special token ids for a sane range. On
the command line that is exit status 2 and one line (issue 13).
"""
import json

import pytest

from minillm.cli import main
from minillm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
from minillm.tokenizer.formats import MAX_TOKENIZER_FILE_BYTES
from minillm.train import load_checkpoint
from tests.peak_memory import peak_allocation
from tests.tokenizer.test_tokenizer_files import write_gpt2_files


def _sparse(path, size: int):
    """A file of ``size`` zero bytes that takes no disk space."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def _good_bpe() -> dict:
    return BPETokenizer([(97, 98), (256, 99)], pattern="gpt4", special_tokens=["<|endoftext|>"]).to_dict()


def _edited(**changes) -> str:
    data = _good_bpe()
    data.update(changes)
    return json.dumps(data)


SPECIALS_TWICE = _edited()[:-1].replace('"special_tokens": {"<|endoftext|>": 258}',
                                        '"special_tokens": {"<|endoftext|>": 258, "<|endoftext|>": 259}') + "}"

# (case, file text, words in the message)
CASES = [
    ("too_big", None, f"more than the {MAX_TOKENIZER_FILE_BYTES:,}-byte limit for tokenizer files"),
    ("nested_100k", "[" * 100_000 + "]" * 100_000, "nests JSON arrays or objects too deeply"),   # a guard: refused before too
    ("deeper_than_the_format", _edited(extra=[[[1]]]), "nests JSON arrays or objects too deeply"),
    ("special_twice", SPECIALS_TWICE, "duplicate key '<|endoftext|>'"),
    ("special_id_huge", _edited(special_tokens={"<|endoftext|>": 10 ** 12}),
     "special_tokens['<|endoftext|>']=1000000000000 leaves more than 65,536 unassigned ids"),
    ("version_true", _edited(version=True), "'version' is True; this minillm reads version 1"),
    ("merge_text_number", _edited(merges=[[97, 98, 5], [256, 99, "abc"]]),
     r"merges[0]=[97, 98, 5] is not [left_id, right_id, text]"),
]


def _write(tmp_path, case, text):
    path = tmp_path / f"{case}.json"
    if text is None:
        _sparse(path, MAX_TOKENIZER_FILE_BYTES + 1)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_the_good_file_loads(tmp_path):
    path = tmp_path / "good.json"
    BPETokenizer.from_dict(_good_bpe()).save(path)
    assert load_tokenizer(path).encode("abc") == [257]


@pytest.mark.parametrize("case, text, words", CASES, ids=[c[0] for c in CASES])
def test_a_hostile_tokenizer_file_is_a_value_error_naming_it(tmp_path, case, text, words):
    path = _write(tmp_path, case, text)
    for reader in (load_tokenizer, BPETokenizer.load):
        error, peak = peak_allocation(lambda: reader(path))
        assert type(error) is ValueError, repr(error)
        assert f"tokenizer file {str(path)!r}" in str(error) and words in str(error), str(error)
        assert peak < 4_000_000                      # the file is at most ~200 kB: a few chunks of it, never all


def test_a_char_tokenizer_file_too_big_or_too_deep(tmp_path):
    big = _sparse(tmp_path / "big.json", MAX_TOKENIZER_FILE_BYTES + 1)
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps({**CharTokenizer("ab").to_dict(), "chars": [[["a"]]]}))
    with pytest.raises(ValueError, match="more than the 16,777,216-byte limit"):
        CharTokenizer.load(big)
    with pytest.raises(ValueError, match="nests JSON arrays or objects too deeply"):
        CharTokenizer.load(deep)


@pytest.mark.parametrize("case", ["too_big", "nested_100k", "special_twice", "special_id_huge", "version_true"])
def test_tokenizer_encode_exits_2_with_one_line(tmp_path, capsys, case):
    text, words = {c[0]: c[1:] for c in CASES}[case]
    path = _write(tmp_path, case, text)
    assert main(["tokenizer", "encode", "--tokenizer", str(path), "--text", "abc"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("minillm tokenizer encode: error: ") and str(path) in lines[0] and words in lines[0]
    assert captured.out == ""


# ------------------------------------------------------------------------------------------------
# tiktoken rank files and GPT-2's encoder.json + vocab.bpe
# ------------------------------------------------------------------------------------------------

def test_a_tiktoken_file_too_big_is_refused_before_reading(tmp_path):
    path = _sparse(tmp_path / "huge.tiktoken", MAX_TOKENIZER_FILE_BYTES + 1)
    error, peak = peak_allocation(lambda: BPETokenizer.load_tiktoken(path))
    assert type(error) is ValueError and f"tiktoken file {str(path)!r}" in str(error), repr(error)
    assert "more than the 16,777,216-byte limit" in str(error) and peak < 1_000_000


@pytest.mark.parametrize("which, damage, words", [
    ("encoder.json", lambda path: _sparse(path, MAX_TOKENIZER_FILE_BYTES + 1), "more than the 16,777,216-byte limit"),
    ("vocab.bpe", lambda path: _sparse(path, MAX_TOKENIZER_FILE_BYTES + 1), "more than the 16,777,216-byte limit"),
    ("encoder.json", lambda path: path.write_text("[" * 100_000 + "]" * 100_000),   # was: RecursionError
     "nests JSON arrays or objects too deeply"),
    ("encoder.json", lambda path: path.write_text(json.dumps({"a": [0]})), "nests JSON arrays or objects too deeply"),
    ("encoder.json", lambda path: path.write_text(path.read_text(encoding="utf-8")[:-1] + ', "<|endoftext|>": 7}',
                                                  encoding="utf-8"), "duplicate key '<|endoftext|>'"),
])
def test_hostile_gpt2_files(tmp_path, which, damage, words):
    write_gpt2_files(tmp_path, ["Ġ t", "h e"])
    path = tmp_path / which
    damage(path)
    error, peak = peak_allocation(lambda: BPETokenizer.from_gpt2(tmp_path / "encoder.json", tmp_path / "vocab.bpe"))
    assert type(error) is ValueError, repr(error)
    assert str(path) in str(error) and words in str(error), str(error)
    assert peak < 4_000_000


# ------------------------------------------------------------------------------------------------
# the tokenizer inside a checkpoint goes through the same checks
# ------------------------------------------------------------------------------------------------

def test_a_checkpoint_tokenizer_with_a_huge_special_id_is_refused(tmp_path):
    import minillm as mm
    from minillm.nn import GPT, GPTConfig
    from minillm.train import save_checkpoint
    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=259, block_size=8, n_layer=1, n_head=2, n_embd=8))
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model=model, step=0, tokenizer=json.loads(_edited(special_tokens={"<|endoftext|>": 10 ** 12})))
    error, peak = peak_allocation(lambda: load_checkpoint(path))
    assert type(error) is ValueError and f"checkpoint {str(path)!r}: field 'tokenizer'" in str(error), repr(error)
    assert "leaves more than 65,536 unassigned ids" in str(error) and peak < 4_000_000
