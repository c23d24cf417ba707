"""prepare_dataset / TokenDataset: splits, shards, meta.json, bits per byte."""
import json
import math
import os

import numpy as np
import pytest

from minillm.data import TokenDataset, bits_per_byte, prepare_dataset, split_train_val

EOT = 256


def _decode_split(tokenizer, tokens):
    """Decode a split's tokens back to its documents (split at the EOT id)."""
    ids = np.asarray(tokens[0:len(tokens)]).tolist()
    docs, current = [], []
    for i in ids:
        if i == EOT:
            docs.append(current)
            current = []
        else:
            current.append(i)
    docs.append(current)
    return [tokenizer.decode(d) for d in docs]


def test_single_document_still_gets_a_validation_tail(tmp_path, byte_tokenizer):
    text = "".join(f"line {i} of the only document\n" for i in range(200)).strip()
    meta = prepare_dataset([text], byte_tokenizer, tmp_path, val_fraction=0.1, eot_token_id=EOT)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["tokens"] > 0 and val["tokens"] > 0
    assert abs(val["bytes"] / (train["bytes"] + val["bytes"]) - 0.1) < 0.01
    ds = TokenDataset(tmp_path)
    (train_text,) = _decode_split(byte_tokenizer, ds.tokens("train"))
    (val_text,) = _decode_split(byte_tokenizer, ds.tokens("val"))
    assert train_text + val_text == text
    assert train_text.endswith("\n") and val_text.startswith("line ")     # cut at a line break


def test_many_documents_bytes_tokens_and_eot(tmp_path, byte_tokenizer):
    docs = [f"document number {i} says héllo ✓ " * (i + 1) for i in range(30)]
    meta = prepare_dataset(docs, byte_tokenizer, tmp_path, val_fraction=0.25, shard_tokens=1000,
                           eot_token_id=EOT)
    train_docs, val_docs = split_train_val(docs, 0.25)
    assert "".join(train_docs) + "".join(val_docs) == "".join(docs)
    ds = TokenDataset(tmp_path)
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        info = meta["splits"][split]
        assert info["bytes"] == sum(len(d.encode("utf-8")) for d in split_docs)
        assert info["eot_tokens"] == len(split_docs) - 1 == info["documents"] - 1
        assert info["tokens"] == info["bytes"] + info["eot_tokens"]        # bytes tokenizer: 1 token per byte
        assert _decode_split(byte_tokenizer, ds.tokens(split)) == split_docs
        assert ds.num_tokens(split) == len(ds.tokens(split)) == info["tokens"]
        assert all(s.startswith(split + "_") for s in info["shards"])
    assert len(meta["splits"]["train"]["shards"]) > 1                      # several 1000-token shards
    for name in meta["splits"]["train"]["shards"][:-1]:
        assert os.path.getsize(tmp_path / name) == 32 + 1000 * 2
    on_disk = json.loads((tmp_path / "meta.json").read_text(encoding="utf-8"))
    assert on_disk == meta and on_disk["tokenizer"] == byte_tokenizer.to_dict()
    assert on_disk["tokenizer_type"] == "ByteTokenizer" and on_disk["dtype"] == "uint16"
    assert "train=" in repr(ds)


def test_without_eot_documents_are_concatenated(tmp_path, byte_tokenizer):
    meta = prepare_dataset(["abc" * 20, "xyz" * 20], byte_tokenizer, tmp_path, val_fraction=0.5)
    assert meta["eot_token_id"] is None and meta["splits"]["train"]["eot_tokens"] == 0
    ds = TokenDataset(tmp_path)
    assert byte_tokenizer.decode(ds.tokens("train")[0:len(ds.tokens("train"))]) == "abc" * 20


def test_bits_per_byte():
    assert bits_per_byte(math.log(2), 100, 100) == pytest.approx(1.0)
    assert bits_per_byte(2.0, 300, 1200) == pytest.approx(2.0 * 300 / (math.log(2) * 1200))
    with pytest.raises(ValueError, match="num_bytes"):
        bits_per_byte(1.0, 10, 0)


def test_dataset_bits_per_byte_uses_scored_tokens(tmp_path, byte_tokenizer):
    prepare_dataset(["x" * 1000], byte_tokenizer, tmp_path)
    ds = TokenDataset(tmp_path)
    # Byte tokens: a loss of ln 2 nats per token is one bit per byte (minus the unscored first token).
    assert ds.bits_per_byte("val", math.log(2)) == pytest.approx((ds.num_tokens("val") - 1) / ds.num_bytes("val"))


def test_overwrite_rules_and_stale_shards(tmp_path, byte_tokenizer):
    prepare_dataset(["a" * 5000], byte_tokenizer, tmp_path, shard_tokens=500)
    with pytest.raises(ValueError, match="already holds a dataset"):
        prepare_dataset(["b" * 100], byte_tokenizer, tmp_path)
    meta = prepare_dataset(["b" * 100], byte_tokenizer, tmp_path, shard_tokens=500, overwrite=True)
    shards = sorted(name for name in os.listdir(tmp_path) if name.endswith(".bin"))
    assert shards == sorted(meta["splits"]["train"]["shards"] + meta["splits"]["val"]["shards"])
    assert len(TokenDataset(tmp_path).tokens("train")) == 90


@pytest.mark.parametrize("kwargs, error, words", [
    ({"val_fraction": 0.0}, ValueError, "val_fraction"),
    ({"val_fraction": 1.0}, ValueError, "val_fraction"),
    ({"shard_tokens": 0}, ValueError, "shard_tokens"),
    ({"eot_token_id": 300}, ValueError, "eot_token_id must be an int in \\[0, 257\\)"),
    ({"eot_token_id": 65}, ValueError, "not one of the tokenizer's special tokens"),
])
def test_prepare_validates_arguments(tmp_path, byte_tokenizer, kwargs, error, words):
    with pytest.raises(error, match=words):
        prepare_dataset(["some text here"], byte_tokenizer, tmp_path, **kwargs)


def test_prepare_validates_docs_and_tokenizer(tmp_path, byte_tokenizer):
    with pytest.raises(TypeError, match="list of str"):
        prepare_dataset("text", byte_tokenizer, tmp_path)
    with pytest.raises(ValueError, match="docs is empty"):
        prepare_dataset([], byte_tokenizer, tmp_path)
    with pytest.raises(TypeError, match="encode_ordinary"):
        prepare_dataset(["text"], object(), tmp_path)
    with pytest.raises(ValueError, match="at least 2"):
        prepare_dataset(["x"], byte_tokenizer, tmp_path)


def test_token_dataset_detects_inconsistencies(tmp_path, byte_tokenizer):
    with pytest.raises(FileNotFoundError, match="minillm prepare"):
        TokenDataset(tmp_path)
    meta = prepare_dataset(["hello world " * 50], byte_tokenizer, tmp_path)
    meta_path = tmp_path / "meta.json"
    broken = dict(meta, splits=dict(meta["splits"], val=dict(meta["splits"]["val"], tokens=1)))
    meta_path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(ValueError, match="meta.json says 1"):
        TokenDataset(tmp_path)
    meta_path.write_text(json.dumps(dict(meta, version=99)), encoding="utf-8")
    with pytest.raises(ValueError, match="version 99"):
        TokenDataset(tmp_path)
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "splits"}), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks keys \\['splits'\\]"):
        TokenDataset(tmp_path)
    meta_path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        TokenDataset(tmp_path)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match="split must be one of"):
        TokenDataset(tmp_path).tokens("test")
