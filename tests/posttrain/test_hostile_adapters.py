"""Hostile and corrupt LoRA adapter files are refused, in bounded memory, with one clear error.

Each case is an adapter file (``save_lora``) that is wrong in one way. ``load_lora`` must raise a
``ValueError`` naming the file and the field or tensor, before it reads a tensor, allocates
anything the metadata claims, or changes the model (issue 13: the adapter reader validates like
``load_checkpoint``). No command reads adapter files yet, so these are library-level tests.
"""
import json
import os
import re
import tracemalloc

import numpy as np
import pytest

import minillm as mm
from minillm.nn import GPT, GPTConfig, resize_token_embeddings
from minillm.posttrain.lora import apply_lora, load_lora, lora_modules, save_lora, train_rows_from
from minillm.serialization import float32_to_bf16_bits, load_safetensors, save_safetensors

BASE_VOCAB, VOCAB = 40, 43


def _base(seed: int = 0) -> GPT:
    """A Llama-style model with an untied head (so the file carries new rows of both matrices)."""
    mm.manual_seed(seed)
    return GPT(GPTConfig.llama(vocab_size=BASE_VOCAB, block_size=16, n_layer=2, n_head=2, n_kv_head=1, n_embd=16))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> str:
    """Adapters on q, k and down (rank 2) and three new vocabulary rows."""
    model = _base()
    resize_token_embeddings(model, VOCAB)
    apply_lora(model, targets=["q", "k", "down"], rank=2, alpha=3.0)
    train_rows_from(model.tok_emb.weight, BASE_VOCAB)
    train_rows_from(model.lm_head.weight, BASE_VOCAB)
    rng = np.random.default_rng(0)
    for module in lora_modules(model).values():
        module.lora_B.data = rng.standard_normal(module.lora_B.shape).astype(np.float32)
    path = str(tmp_path_factory.mktemp("adapters") / "good.safetensors")
    save_lora(path, model, base_vocab_size=BASE_VOCAB)
    return path


def _variant(src: str, dst, *, layers=None, meta=None, drop=(), tensors=None, drop_tensors=()) -> str:
    """A copy of ``src`` (checksums recomputed, so only the intended fault is there):
    ``layers``: a function editing the decoded ``layers`` field in place; ``meta``: raw metadata
    strings to set; ``drop``: metadata keys to remove; ``tensors``: replacements or additions."""
    arrays, metadata = load_safetensors(src)
    if layers is not None:
        value = json.loads(metadata["layers"])
        layers(value)
        metadata["layers"] = json.dumps(value)
    metadata.update(meta or {})
    for key in drop:
        metadata.pop(key)
    for key in drop_tensors:
        arrays.pop(key)
    arrays.update(tensors or {})
    save_safetensors(dst, arrays, metadata)
    return str(dst)


def _state(model: GPT) -> dict:
    return {name: np.array(array, copy=True) for name, array in model.state_dict().items()}


def _load_refused(path: str):
    """(the error load_lora raised, its peak traced allocation in bytes), checking the model is untouched."""
    model = _base(seed=1)
    before = _state(model)
    tracemalloc.start()
    try:
        load_lora(path, model)
        error = None
    except Exception as exc:   # noqa: BLE001 - the caller checks the type
        error = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    after = _state(model)
    assert model.config.vocab_size == BASE_VOCAB and not lora_modules(model), "the model was changed"
    assert set(after) == set(before) and all(np.array_equal(after[k], before[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters()), "the model was frozen"
    return error, peak


def test_the_good_file_loads(good):
    model = _base(seed=1)
    names = load_lora(good, model)
    assert len(names) == 6 and model.config.vocab_size == VOCAB
    arrays, _ = load_safetensors(good)
    np.testing.assert_array_equal(model.tok_emb.weight.data[BASE_VOCAB:], arrays["new_rows.tok_emb"])
    np.testing.assert_array_equal(model.lm_head.weight.data[BASE_VOCAB:], arrays["new_rows.lm_head"])


Q = "blocks.0.attn.q_proj"


def _set(name, key, value):
    return lambda layers: layers[name].update({key: value})


# (case, edit, words in the message): every one a ValueError naming the file and the field or tensor.
CASES = [
    ("version_missing", dict(drop=["version"]), "field 'version' is missing"),
    ("version_text", dict(meta={"version": "one"}), "field 'version' is 'one'; expected a non-negative integer"),
    ("version_newer", dict(meta={"version": "2"}), "format version 2; this minillm reads versions up to 1: upgrade"),
    ("layers_missing", dict(drop=["layers"]), "field 'layers' is missing"),
    ("layers_not_json", dict(meta={"layers": "{"}), "field 'layers' is not valid JSON"),
    ("layers_nested", dict(meta={"layers": "[" * 100_000 + "]" * 100_000}),
     "field 'layers' is not valid JSON.*nest deeper than 2 levels"),
    ("layers_list", dict(meta={"layers": "[]"}), "field 'layers' is a JSON list"),
    ("layers_empty", dict(meta={"layers": "{}"}), "field 'layers' is a JSON empty object"),
    ("layers_duplicate", dict(meta={"layers": '{"%s": {}, "%s": {}}' % (Q, Q)}), "field 'layers'.*duplicate key"),
    ("layer_unknown", dict(layers=lambda l: l.update({"blocks.9.attn.q_proj": l[Q]})),
     r"field 'layers' names layers \['blocks.9.attn.q_proj'\], which are not Linear layers"),
    ("layer_spec_list", dict(layers=lambda l: l.update({Q: [2, 3.0, 0.0]})),
     "field 'layers' has 'blocks.0.attn.q_proj': .*expected an object with exactly rank, alpha, dropout"),
    ("layer_spec_no_rank", dict(layers=lambda l: l[Q].pop("rank")), "expected an object with exactly rank"),
    ("rank_text", dict(layers=_set(Q, "rank", "2")), "with rank='2'; expected an integer >= 1"),
    ("rank_bool", dict(layers=_set(Q, "rank", True)), "with rank=True; expected an integer >= 1"),
    ("rank_zero", dict(layers=_set(Q, "rank", 0)), "with rank=0; expected an integer >= 1"),
    ("rank_other", dict(layers=_set(Q, "rank", 3)),
     r"tensor 'blocks.0.attn.q_proj.lora_A' has shape \(2, 16\); layer .* with rank 3 .* needs \(3, 16\)"),
    ("alpha_negative", dict(layers=_set(Q, "alpha", -1.0)), "with alpha=-1.0; expected a finite number > 0"),
    ("alpha_nan", dict(layers=_set(Q, "alpha", float("nan"))), "with alpha=nan; expected a finite number > 0"),
    ("dropout_one", dict(layers=_set(Q, "dropout", 1.0)), r"with dropout=1.0; expected a probability in \[0, 1\)"),
    ("vocab_missing", dict(drop=["vocab_size"]), "field 'vocab_size' is missing"),
    ("vocab_text", dict(meta={"vocab_size": "4.3e1"}), "field 'vocab_size' is '4.3e1'"),
    ("vocab_negative", dict(meta={"vocab_size": "-43"}), "field 'vocab_size' is '-43'"),
    ("base_vocab_zero", dict(meta={"base_vocab_size": "0", "vocab_size": "0"}),
     r"field 'base_vocab_size' is 0; expected an integer in \[1, vocab_size=0\]"),
    ("base_vocab_above", dict(meta={"base_vocab_size": "50", "vocab_size": "45"}),
     r"field 'base_vocab_size' is 50; expected an integer in \[1, vocab_size=45\]"),
    ("vocab_more_than_rows", dict(meta={"vocab_size": "44"}),
     r"tensor 'new_rows.tok_emb' has shape \(3, 16\); fields base_vocab_size=40 and vocab_size=44"),
    ("new_rows_missing", dict(drop_tensors=["new_rows.tok_emb"]),
     r"tensor 'new_rows.tok_emb' is missing; fields base_vocab_size=40 and vocab_size=43 call for"),
    ("head_rows_missing", dict(drop_tensors=["new_rows.lm_head"]), "tensor 'new_rows.lm_head' is missing"),
    ("new_rows_without_growth", dict(meta={"vocab_size": "40"}),
     "tensor 'new_rows.lm_head' is neither an adapter .* nor a new vocabulary row"),
    ("lora_A_missing", dict(drop_tensors=[f"{Q}.lora_A"]), f"tensor '{Q}.lora_A' is missing"),
    ("lora_B_wrong_shape", dict(tensors={f"{Q}.lora_B": np.zeros((16, 4), np.float32)}),
     rf"tensor '{Q}.lora_B' has shape \(16, 4\)"),
    ("unknown_tensor", dict(tensors={"blocks.0.attn.v_proj.lora_A": np.zeros((2, 16), np.float32)}),
     "tensor 'blocks.0.attn.v_proj.lora_A' is neither an adapter"),
    ("lora_A_int32", dict(tensors={f"{Q}.lora_A": np.ones((2, 16), np.int32)}),
     f"tensor '{Q}.lora_A' has dtype I32; adapters must be floating point"),
    ("new_rows_uint8", dict(tensors={"new_rows.tok_emb": np.ones((3, 16), np.uint8)}),
     "tensor 'new_rows.tok_emb' has dtype U8"),
    ("lora_B_nan", dict(tensors={f"{Q}.lora_B": np.full((16, 2), np.nan, np.float32)}),
     f"tensor '{Q}.lora_B' holds non-finite values"),
]


@pytest.mark.parametrize("case, edit, words", CASES, ids=[c[0] for c in CASES])
def test_a_corrupt_adapter_file_is_a_value_error_naming_file_and_field(good, tmp_path, case, edit, words):
    path = _variant(good, tmp_path / f"{case}.safetensors", **edit)
    error, peak = _load_refused(path)
    assert type(error) is ValueError, repr(error)
    assert f"adapter file '{path}'" in str(error), str(error)
    assert re.search(words, str(error)), str(error)
    assert peak < 2_000_000 + 5 * os.path.getsize(path)      # a few copies of the header, a few small objects


@pytest.mark.parametrize("meta, layers, words", [
    ({"vocab_size": str(10 ** 12)}, None, r"'new_rows.tok_emb' has shape \(3, 16\); fields base_vocab_size=40 and "
                                          r"vocab_size=1000000000000"),     # was: resize to 10**12 rows
    ({}, _set(Q, "rank", 10 ** 12), r"with rank 1000000000000 .* needs \(1000000000000, 16\)"),   # was: A of 10**12 rows
])
def test_sizes_claimed_by_the_metadata_are_refused_before_allocating(good, tmp_path, meta, layers, words):
    path = _variant(good, tmp_path / "huge.safetensors", meta=meta, layers=layers)
    error, peak = _load_refused(path)
    assert type(error) is ValueError and f"adapter file '{path}'" in str(error), repr(error)
    assert re.search(words, str(error)), str(error)
    assert peak < 2_000_000


def test_float16_float64_and_bfloat16_adapters_load(good, tmp_path):
    arrays, _ = load_safetensors(good)
    a, b = arrays[f"{Q}.lora_A"], arrays[f"{Q}.lora_B"]
    for name, replacement, bf16 in [("f16", {f"{Q}.lora_A": a.astype(np.float16)}, ()),
                                    ("f64", {f"{Q}.lora_B": b.astype(np.float64)}, ()),
                                    ("bf16", {f"{Q}.lora_A": float32_to_bf16_bits(a)}, (f"{Q}.lora_A",))]:
        tensors, metadata = load_safetensors(good)
        tensors.update(replacement)
        path = tmp_path / f"{name}.safetensors"
        save_safetensors(path, tensors, metadata, bf16_names=bf16)
        model = _base(seed=1)
        assert len(load_lora(path, model)) == 6
        adapted = lora_modules(model)[Q]
        assert adapted.lora_A.dtype == np.float32
        np.testing.assert_allclose(adapted.lora_A.data, a, rtol=1e-2, atol=1e-3)


def test_a_flipped_bit_is_reported_and_the_model_untouched(good, tmp_path):
    data = bytearray(open(good, "rb").read())
    data[-3] ^= 0x10                                          # inside the last tensor's bytes
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    error, _ = _load_refused(str(path))
    assert type(error) is ValueError and "does not match the SHA-256" in str(error), repr(error)


def test_a_directory_is_said_to_be_one(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_lora(tmp_path, _base())
