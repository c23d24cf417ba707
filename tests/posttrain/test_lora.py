"""LoRA: the adapted Linear (gradcheck), swapping layers, freezing, merging, adapter files."""
from __future__ import annotations

import os

import numpy as np
import pytest

import minillm as mm
from minillm.backend import generator
from minillm.nn import GPT, GPTConfig, Linear, functional_call, resize_token_embeddings
from minillm.optim import AdamW
from minillm.posttrain.lora import (
    LoRALinear,
    apply_lora,
    load_lora,
    lora_modules,
    lora_param_groups,
    lora_state_dict,
    merge_lora,
    parameter_counts,
    save_lora,
    train_rows_from,
)


def randomise_adapters(model, scale: float = 0.3) -> None:
    """Give every lora_B random values (it starts at zero, which would hide bugs in A's path)."""
    for module in lora_modules(model).values():
        module.lora_B.data = (generator().standard_normal(module.lora_B.shape) * scale).astype(module.lora_B.dtype)


def tiny_gpt(preset: str = "gpt2", seed: int = 0, vocab: int = 40) -> GPT:
    mm.manual_seed(seed)
    make = GPTConfig.gpt2 if preset == "gpt2" else GPTConfig.llama
    extra = {} if preset == "gpt2" else {"n_kv_head": 1}
    return GPT(make(vocab_size=vocab, block_size=16, n_layer=2, n_head=2, n_embd=16, **extra))


IDX = np.array([[1, 4, 9, 16, 25, 36], [2, 3, 5, 7, 11, 13]])


# ------------------------------------------------------------------------------------------------
# the layer
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
def test_lora_linear_passes_gradcheck(dropout, bias):
    mm.manual_seed(0)
    layer = LoRALinear(Linear(5, 4, bias=bias, dtype=np.float64), rank=3, alpha=6.0, dropout=dropout)
    rng = np.random.Generator(np.random.PCG64(7))
    layer.lora_B.data = rng.standard_normal((4, 3))
    names = ["weight", "lora_A", "lora_B"] + (["bias"] if bias else [])
    inputs = [rng.standard_normal((2, 3, 5))] + [getattr(layer, name).data.copy() for name in names]

    def fn(x, *params):
        mm.manual_seed(123)          # the same dropout mask on every call, so finite differences see one function
        with functional_call(layer, dict(zip(names, params))):
            return layer(x)

    assert mm.gradcheck(fn, inputs)


def test_lora_linear_computes_the_formula_and_starts_as_the_base():
    mm.manual_seed(1)
    base = Linear(6, 5)
    x = mm.tensor(np.random.Generator(np.random.PCG64(0)).standard_normal((3, 6)).astype(np.float32))
    expected_base = base(x).data
    layer = LoRALinear(base, rank=2, alpha=4.0)
    np.testing.assert_array_equal(layer(x).data, expected_base)          # B = 0: exactly the base
    assert layer.weight is base.weight and not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad and layer.scale == 2.0
    layer.lora_B.data = np.ones((5, 2), dtype=np.float32)
    manual = x.data @ base.weight.data.T + base.bias.data + 2.0 * (x.data @ layer.lora_A.data.T) @ layer.lora_B.data.T
    np.testing.assert_allclose(layer(x).data, manual, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), r"rank=0; expected an int >= 1"),
    (dict(alpha=0), r"alpha=0; expected a number > 0"),
    (dict(dropout=1.0), r"dropout=1.0; expected a probability"),
])
def test_bad_lora_arguments_are_named(kwargs, message):
    values = dict(rank=2, alpha=4.0, dropout=0.0)
    values.update(kwargs)
    with pytest.raises(ValueError, match=message):
        LoRALinear(Linear(4, 4), **values)


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------

def test_apply_lora_swaps_the_chosen_layers_and_freezes_the_rest():
    model = tiny_gpt()
    adapted = apply_lora(model, targets=("q", "v_proj"), rank=4, alpha=8.0)
    assert adapted == ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj", "blocks.1.attn.q_proj", "blocks.1.attn.v_proj"]
    assert isinstance(model.blocks[0].attn.q_proj, LoRALinear) and type(model.blocks[0].attn.k_proj) is Linear
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"{layer}.{ab}" for layer in adapted for ab in ("lora_A", "lora_B")]
    counts = parameter_counts(model)
    assert counts["trainable"] == 4 * 4 * (16 + 16) and counts["fraction"] < 0.1
    # the base weights keep their names, so a base state dict still fits (plus the adapters)
    assert "blocks.0.attn.q_proj.weight" in dict(model.named_parameters())


def test_apply_lora_defaults_to_every_linear_in_the_blocks_and_rejects_unknown_targets():
    model = tiny_gpt("llama")
    adapted = apply_lora(model, rank=2)
    assert len(adapted) == 2 * 7 and not any(name.startswith("lm_head") for name in adapted)
    with pytest.raises(ValueError, match=r"targets \['qkv'\] match no Linear layer.*expected names from"):
        apply_lora(tiny_gpt("llama"), targets=["qkv"])


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_merged_model_gives_the_logits_of_base_plus_adapters(preset):
    model = tiny_gpt(preset)
    apply_lora(model, rank=3, alpha=5.0, dropout=0.2)
    randomise_adapters(model)
    model.eval()                                          # adapter dropout off: the function that is merged
    adapted_logits, _ = model(IDX)
    merge_lora(model)
    merged_logits, _ = model(IDX)
    np.testing.assert_allclose(merged_logits.data, adapted_logits.data, rtol=1e-4, atol=1e-5)
    assert not lora_modules(model) and all(p.requires_grad for p in model.parameters())
    plain = tiny_gpt(preset, seed=99)
    plain.load_state_dict(model.state_dict())             # the merged model has the base layout again
    np.testing.assert_allclose(plain(IDX)[0].data, merged_logits.data, rtol=1e-6, atol=1e-6)


def test_one_optimizer_step_changes_only_the_adapters():
    model = tiny_gpt()
    before = {name: array.copy() for name, array in model.state_dict().items()}
    apply_lora(model, targets=["q", "v"], rank=2)
    randomise_adapters(model, 0.1)
    optimizer = AdamW(lora_param_groups(model, weight_decay=0.1), lr=1e-2)
    _, loss = model(IDX, IDX)
    loss.backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        if "lora" in name:
            continue
        np.testing.assert_array_equal(parameter.data, before[name], err_msg=name)
    assert not np.allclose(model.blocks[0].attn.q_proj.lora_A.data, 0)


def test_new_token_rows_train_while_the_old_rows_stay_bit_exact():
    model = tiny_gpt(vocab=40)
    resize_token_embeddings(model, 44)
    old_rows = model.tok_emb.weight.data[:40].copy()
    new_rows = model.tok_emb.weight.data[40:].copy()
    apply_lora(model, rank=2)
    trained = train_rows_from(model.tok_emb.weight, 40)
    assert trained == 4 * 16
    groups = lora_param_groups(model, weight_decay=0.1, row_trained=[model.tok_emb.weight])
    assert "tok_emb.weight" in groups[1]["names"] and groups[1]["weight_decay"] == 0.0
    optimizer = AdamW(groups, lr=1e-2)
    ids = np.array([[40, 41, 5, 42, 43, 7]])
    for _ in range(2):
        _, loss = model(ids, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    np.testing.assert_array_equal(model.tok_emb.weight.data[:40], old_rows)
    assert not np.allclose(model.tok_emb.weight.data[40:], new_rows)
    counts = parameter_counts(model, [(model.tok_emb.weight, trained)])
    assert counts["trainable"] == trained + sum(m.lora_A.size + m.lora_B.size for m in lora_modules(model).values())
    merge_lora(model)                            # a plain model again: every row of the embedding trains
    _, loss = model(ids, ids)
    loss.backward()
    assert np.abs(model.tok_emb.weight.grad[:40]).sum() > 0
    np.testing.assert_array_equal(model.tok_emb.weight.data[:40], old_rows)    # the same array, kept


def test_adapter_file_round_trip_reproduces_the_merged_model(tmp_path):
    base = tiny_gpt("llama", vocab=40)
    base_state = {name: array.copy() for name, array in base.state_dict().items()}
    resize_token_embeddings(base, 43)
    apply_lora(base, targets=["q", "k", "down"], rank=2, alpha=3.0)
    train_rows_from(base.tok_emb.weight, 40)
    train_rows_from(base.lm_head.weight, 40)
    randomise_adapters(base)
    path = tmp_path / "adapters.safetensors"
    save_lora(path, base, base_vocab_size=40)
    saved = set(lora_state_dict(base)) | {"new_rows.tok_emb", "new_rows.lm_head"}
    from minillm.serialization import load_safetensors
    tensors, metadata = load_safetensors(path)
    assert set(tensors) == saved and metadata["format"] == "minillm-lora"
    expected, _ = merge_lora(base).eval()(np.array([[41, 42, 3, 4]]))

    fresh = tiny_gpt("llama", seed=5, vocab=40)           # a base model built elsewhere...
    fresh.load_state_dict(base_state)                     # ...with the pretrained weights
    names = load_lora(path, fresh)
    assert fresh.config.vocab_size == 43 and len(names) == 6
    fresh.eval()
    got, _ = fresh(np.array([[41, 42, 3, 4]]))
    np.testing.assert_allclose(got.data, expected.data, rtol=1e-5, atol=1e-6)


def test_load_lora_rejects_other_files(tmp_path):
    from minillm.train.checkpoint import save_checkpoint
    model = tiny_gpt()
    save_checkpoint(tmp_path / "ckpt.safetensors", model=model, step=0)
    with pytest.raises(ValueError, match=r"not a minillm LoRA file"):
        load_lora(tmp_path / "ckpt.safetensors", model)
    with pytest.raises(FileNotFoundError, match=r"missing.safetensors"):
        load_lora(os.fspath(tmp_path / "missing.safetensors"), model)
