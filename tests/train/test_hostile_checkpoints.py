"""Hostile and corrupt checkpoints are refused, in bounded memory, with one clear error (issue 13 §3).

Each case is a checkpoint that is wrong in one way. ``load_checkpoint`` (what eval, generate,
chat, resume and post-training read) must raise a ``ValueError`` naming the file and the field or
tensor, before it reads a tensor or builds a model; on the command line that is exit status 2
and one line on stderr.
"""
import json
import struct

import numpy as np
import pytest

import minillm as mm
from minillm.cli import main
from minillm.data import RandomWindowLoader
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW
from minillm.serialization import float32_to_bf16_bits, load_safetensors, read_safetensors_header, save_safetensors
from minillm.tokenizer import CharTokenizer
from minillm.train import load_checkpoint, load_model, save_checkpoint
from tests.peak_memory import peak_allocation

CHARS = "abcdefghij \n"


def _tiny_model(**overrides):
    tok = CharTokenizer(CHARS, special_tokens=["<|endoftext|>"])
    mm.manual_seed(0)
    values = dict(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    values.update(overrides)
    return GPT(GPTConfig.gpt2(**values)), tok


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> str:
    """A complete training checkpoint: weights, AdamW moments after one step, data position,
    generator state, tokenizer, training config and bookkeeping (a loss scaler's state too)."""
    model, tok = _tiny_model()
    optimizer = AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    optimizer.step()
    tokens = np.random.default_rng(0).integers(0, tok.vocab_size, 500).astype(np.uint16)
    loader = RandomWindowLoader(tokens, 2, 16, seed=0)
    path = str(tmp_path_factory.mktemp("ckpt") / "good.safetensors")
    save_checkpoint(path, model=model, step=3, optimizer=optimizer, loader_state=loader.state_dict(),
                    tokenizer=tok, train_config={"data": {"val_fraction": 0.1}},
                    extra={"best_val_loss": 1.5, "grad_norm_mean": None,
                           "grad_scaler": {"scale": 1024.0, "growth_tracker": 3}})
    return path


def _variant(src: str, dst, *, fields=None, meta=None, drop=(), tensors=None) -> str:
    """A copy of ``src`` (checksums recomputed, so only the intended fault is there):
    ``fields``: {json field: function editing its decoded value in place (its result is ignored)};
    ``meta``: raw metadata strings to set; ``drop``: metadata keys to remove; ``tensors``: replacements."""
    arrays, metadata = load_safetensors(src)
    for key, edit in (fields or {}).items():
        value = json.loads(metadata[key])
        edit(value)
        metadata[key] = json.dumps(value)
    metadata.update(meta or {})
    for key in drop:
        metadata.pop(key)
    arrays.update(tensors or {})
    save_safetensors(dst, arrays, metadata)
    return str(dst)




def test_the_good_checkpoint_loads_everything(good):
    checkpoint = load_checkpoint(good)
    assert checkpoint.step == 3 and checkpoint.extra["grad_scaler"]["scale"] == 1024.0
    assert set(checkpoint.optimizer_state["state"]) and checkpoint.loader_state["batch_size"] == 2
    model, tok, _ = load_model(good)
    assert tok.vocab_size == model.config.vocab_size


# (case, edit, words in the message): every one a ValueError naming the file and the field.
METADATA_CASES = [
    ("no_model_config", dict(drop=["model_config"]), "field 'model_config' is missing"),
    ("model_config_not_json", dict(meta={"model_config": "{vocab"}), "field 'model_config' is not valid JSON"),
    ("model_config_list", dict(meta={"model_config": "[1]"}), "field 'model_config' is a JSON list"),
    ("model_config_unknown", dict(fields={"model_config": lambda c: c.update(n_layers=2)}),
     "field 'model_config' is not a valid model config: .*unknown config keys"),
    ("model_config_n_head_0", dict(fields={"model_config": lambda c: c.update(n_head=0)}),
     "field 'model_config' is not a valid model config: .*n_head=0"),
    ("model_config_wider", dict(fields={"model_config": lambda c: c.update(n_embd=32)}),
     r"field 'model_config' implies parameter 'tok_emb.weight' of shape \(13, 32\), but the file's tensor "
     r"'model.tok_emb.weight' has shape \(13, 16\)"),
    ("model_config_untied", dict(fields={"model_config": lambda c: c.update(tie_weights=False)}),
     "field 'model_config' describes a model with parameter 'lm_head.weight'.*which the file lacks"),
    ("step_negative", dict(meta={"step": "-5"}), "field 'step' is '-5'; expected a non-negative integer"),
    ("step_text", dict(meta={"step": "three"}), "field 'step' is 'three'"),
    ("step_missing", dict(drop=["step"]), "field 'step' is missing"),
    ("version_text", dict(meta={"version": "x"}), "field 'version' is 'x'"),
    ("rng_list", dict(meta={"rng": "[1, 2]"}), "field 'rng' is not a random generator state: it is a JSON list"),
    ("rng_state_text", dict(fields={"rng": lambda r: r.update(state="x")}),
     r"field 'rng' is not a random generator state: it lacks state"),
    ("rng_mt19937", dict(fields={"rng": lambda r: r.update(bit_generator="MT19937")}),
     "field 'rng' .*bit_generator='MT19937', expected 'PCG64'"),
    ("rng_out_of_range", dict(fields={"rng": lambda r: r["state"].update(state=2 ** 200)}),
     "field 'rng' is not a random generator state: it is refused by NumPy"),
    ("rng_not_json", dict(meta={"rng": "{"}), "field 'rng' is not valid JSON"),
    ("loader_list", dict(meta={"loader": "[1]"}), "field 'loader' is a JSON list"),
    ("loader_counter_list", dict(fields={"loader": lambda s: s.update(batches_served=[1])}),
     r"field 'loader' has batches_served=\[1\]; expected a non-negative integer"),
    ("loader_generator", dict(fields={"loader": lambda s: s.update(bit_generator=7)}),
     "field 'loader' has a bit_generator that is a JSON number"),
    ("optimizer_number", dict(meta={"optimizer": "5"}), "field 'optimizer' is a JSON number"),
    ("optimizer_groups_int", dict(fields={"optimizer": lambda o: o.update(param_groups=5)}),
     "field 'optimizer' has param_groups that are not a list of objects"),
    ("optimizer_params_text", dict(fields={"optimizer": lambda o: o["param_groups"][0].update(params="all")}),
     "field 'optimizer' param group 0: params must be a list"),
    ("optimizer_lr_text", dict(fields={"optimizer": lambda o: o["param_groups"][0].update(lr="fast")}),
     "field 'optimizer' param group 0: hyperparameter lr='fast'"),
    ("optimizer_steps", dict(fields={"optimizer": lambda o: o.update(steps=[-1])}),
     "field 'optimizer' has steps that are not a list of non-negative integers"),
    ("optimizer_missing_keys", dict(fields={"optimizer": lambda o: o.pop("steps")}),
     r"field 'optimizer' lacks \['steps'\]"),
    ("tokenizer_list", dict(meta={"tokenizer": "[1]"}), "field 'tokenizer' is not a valid tokenizer"),
    ("tokenizer_incomplete", dict(meta={"tokenizer": json.dumps({"format": "minillm-tokenizer", "version": 1,
                                                                 "type": "char"})}),
     "field 'tokenizer' is not a valid tokenizer"),
    ("tokenizer_nested", dict(meta={"tokenizer": "[" * 100_000 + "]" * 100_000}),
     "field 'tokenizer' is not valid JSON: its brackets nest deeper than 32 levels"),
    ("train_config_list", dict(meta={"train_config": "[]"}), "field 'train_config' is a JSON list"),
    ("train_config_val_fraction", dict(fields={"train_config": lambda t: t["data"].update(val_fraction="x")}),
     "field 'train_config' has data.val_fraction='x'; expected a number in"),
    ("extra_list", dict(meta={"extra": "[1]"}), "field 'extra' is a JSON list"),
    ("extra_best_text", dict(fields={"extra": lambda e: e.update(best_val_loss="low")}),
     "field 'extra' has best_val_loss='low'; expected a number or null"),
    ("extra_scaler_list", dict(fields={"extra": lambda e: e.update(grad_scaler=[1])}),
     "field 'extra' has grad_scaler as a JSON list"),
    ("extra_scaler_scale", dict(fields={"extra": lambda e: e["grad_scaler"].update(scale=-1)}),
     "field 'extra' has grad_scaler.scale=-1; expected a positive number"),
    ("extra_scaler_tracker", dict(fields={"extra": lambda e: e["grad_scaler"].pop("growth_tracker")}),
     "field 'extra' has a grad_scaler without growth_tracker"),
]


@pytest.mark.parametrize("case, edit, words", METADATA_CASES, ids=[c[0] for c in METADATA_CASES])
def test_corrupt_metadata_is_a_value_error_naming_file_and_field(good, tmp_path, case, edit, words):
    path = _variant(good, tmp_path / f"{case}.safetensors", **edit)
    with pytest.raises(ValueError, match=words) as info:
        load_checkpoint(path)
    assert f"checkpoint '{path}'" in str(info.value)


def test_a_newer_format_version_asks_for_an_upgrade(good, tmp_path):
    path = _variant(good, tmp_path / "v99.safetensors", meta={"version": "99"})
    with pytest.raises(ValueError, match="format version 99; this minillm reads versions up to 1: upgrade"):
        load_checkpoint(path)


@pytest.mark.parametrize("field, value, words", [
    ("vocab_size", 10 ** 12, r"'tok_emb.weight' of shape \(1000000000000, 16\)"),   # was: allocate 58 TiB
    ("n_layer", 10 ** 9, "parameter 'blocks.1.norm1.weight' of shape"),             # was: build 10**9 blocks
    ("block_size", 10 ** 9, r"'pos_emb.weight' of shape \(1000000000, 16\)"),
])
def test_a_config_claiming_a_huge_model_is_refused_before_allocating(good, tmp_path, field, value, words):
    path = _variant(good, tmp_path / f"huge_{field}.safetensors", fields={"model_config": lambda c: c.update({field: value})})
    error, peak = peak_allocation(lambda: load_model(path))
    assert type(error) is ValueError, repr(error)
    assert f"checkpoint '{path}': field 'model_config'" in str(error) and "do not belong together" in str(error)
    assert peak < 2_000_000                                   # the header and a few small objects


@pytest.mark.parametrize("pos", ["rope", "sinusoidal"])
def test_computed_position_tables_are_bounded_by_the_weights(tmp_path, pos):
    # RoPE and sinusoidal tables are built from block_size, not read: a huge block_size is refused.
    model, tok = _tiny_model(pos=pos)
    path = tmp_path / "tables.safetensors"
    save_checkpoint(path, model=model, step=0, tokenizer=tok)
    load_model(path)
    bad = _variant(str(path), tmp_path / "long.safetensors", fields={"model_config": lambda c: c.update(block_size=10 ** 9)})
    error, peak = peak_allocation(lambda: load_model(bad))
    assert type(error) is ValueError and "field 'model_config' has block_size=1000000000" in str(error)
    assert f"{pos} position tables" in str(error) and peak < 2_000_000
    fine = _variant(str(path), tmp_path / "longer.safetensors", fields={"model_config": lambda c: c.update(block_size=4096)})
    assert load_model(fine)[0].config.block_size == 4096      # a long context on small weights is fine


@pytest.mark.parametrize("name, array, dtype", [
    ("model.tok_emb.weight", lambda a: (a * 100).astype(np.int8), "I8"),
    ("model.tok_emb.weight", lambda a: a > 0, "BOOL"),
    ("model.blocks.0.attn.q_proj.weight", lambda a: a.astype(np.int32), "I32"),
    ("model.tok_emb.weight", lambda a: a.view(np.uint16)[:, ::2].copy(), "U16"),
    ("optim.0.exp_avg", lambda a: a.astype(np.int64), "I64"),
])
def test_non_floating_weights_and_moments_are_refused(good, tmp_path, name, array, dtype):
    # Before, load_state_dict cast any dtype: an int8 or bool embedding loaded, and eval, generate
    # and resume exited 0 with garbage.
    arrays, _ = load_safetensors(good)
    path = _variant(good, tmp_path / "dtype.safetensors", tensors={name: array(arrays[name])})
    with pytest.raises(ValueError, match=rf"checkpoint '{path}': tensor '{name}' has dtype {dtype}; weights and "
                                         "optimizer state must be floating point: F32, F16, BF16, F64"):
        load_checkpoint(path)


def test_float16_float64_and_bfloat16_weights_load(good, tmp_path):
    arrays, metadata = load_safetensors(good)
    reference = arrays["model.tok_emb.weight"]
    for dtype in (np.float16, np.float64):
        path = tmp_path / f"{np.dtype(dtype).name}.safetensors"
        save_safetensors(path, {**arrays, "model.tok_emb.weight": reference.astype(dtype)}, metadata)
        model, _, _ = load_model(path)
        np.testing.assert_allclose(model.tok_emb.weight.data, reference, rtol=1e-3)
    path = tmp_path / "bf16.safetensors"                      # BF16 (from other tools) is widened exactly
    bits = float32_to_bf16_bits(reference)
    save_safetensors(path, {**arrays, "model.tok_emb.weight": bits}, metadata, bf16_names=["model.tok_emb.weight"])
    model, _, _ = load_model(path)
    np.testing.assert_allclose(model.tok_emb.weight.data, reference, rtol=1e-2)


def _flip_one_bit(src: str, dst, tensor: str) -> str:
    infos, _, data_start = read_safetensors_header(src)
    begin, end = infos[tensor].data_offsets
    blob = bytearray(open(src, "rb").read())
    blob[data_start + (begin + end) // 2] ^= 0x01
    open(dst, "wb").write(bytes(blob))
    return str(dst)


@pytest.mark.parametrize("tensor", ["model.tok_emb.weight", "model.blocks.0.mlp.down_proj.bias", "optim.3.exp_avg_sq"])
def test_a_flipped_bit_is_reported_not_trained_on(good, tmp_path, tensor):
    path = _flip_one_bit(good, tmp_path / "flipped.safetensors", tensor)
    with pytest.raises(ValueError, match=rf"'{path}' is corrupt: tensor '{tensor}' does not match the SHA-256"):
        load_checkpoint(path)
    assert load_checkpoint(path, verify=False).step == 3      # on request, loaded unchecked


def test_a_checkpoint_without_checksums_still_loads(good, tmp_path):
    # e.g. written by an older minillm or rewritten by another safetensors tool
    arrays, metadata = load_safetensors(good)
    path = tmp_path / "plain.safetensors"
    save_safetensors(path, arrays, metadata, checksum=False)
    assert all(info.sha256 is None for info in read_safetensors_header(path)[0].values())
    assert load_checkpoint(path).step == 3


def test_a_nested_header_is_refused_without_recursion(tmp_path):
    header = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    header += b" " * ((-len(header)) % 8)
    path = tmp_path / "nested.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    error, peak = peak_allocation(lambda: load_checkpoint(path))
    assert type(error) is ValueError and "nested.safetensors" in str(error)
    assert "not shaped like a safetensors header" in str(error) and peak < 5 * len(header) + 2_000_000


# ------------------------------------------------------------------------------------------------
# Where the user meets it: eval, generate, train --resume exit 2 with one line
# ------------------------------------------------------------------------------------------------

def _cli_cases(good, tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, words the one error line must hold)."""
    header = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    header += b" " * ((-len(header)) % 8)
    nested = tmp_path / "nested.safetensors"
    nested.write_bytes(struct.pack("<Q", len(header)) + header)
    huge = tmp_path / "huge_header.safetensors"
    with open(huge, "wb") as handle:                          # announces a 200 MB header: sparse file
        handle.write(struct.pack("<Q", 200_000_000) + b'{"a":' + b"[" * 1000)
        handle.truncate(8 + 200_000_000)
    arrays, _ = load_safetensors(good)
    return {
        "flipped": (_flip_one_bit(good, tmp_path / "flipped.safetensors", "model.tok_emb.weight"),
                    "tensor 'model.tok_emb.weight' does not match the SHA-256"),
        "vocab": (_variant(good, tmp_path / "vocab.safetensors",
                           fields={"model_config": lambda c: c.update(vocab_size=10 ** 12)}),
                  "field 'model_config' implies parameter 'tok_emb.weight'"),
        "int8": (_variant(good, tmp_path / "int8.safetensors",
                          tensors={"model.tok_emb.weight": arrays["model.tok_emb.weight"].astype(np.int8)}),
                 "tensor 'model.tok_emb.weight' has dtype I8"),
        "no_config": (_variant(good, tmp_path / "no_config.safetensors", drop=["model_config"]),
                      "field 'model_config' is missing"),
        "rng": (_variant(good, tmp_path / "rng.safetensors", meta={"rng": "[1, 2]"}), "field 'rng'"),
        "loader": (_variant(good, tmp_path / "loader.safetensors", meta={"loader": "[1]"}), "field 'loader'"),
        "extra": (_variant(good, tmp_path / "extra.safetensors", meta={"extra": "[1]"}), "field 'extra'"),
        "nested": (str(nested), "not shaped like a safetensors header"),
        "huge_header": (str(huge), "more than the 16,777,216-byte limit"),
    }


def _one_clear_line(capsys, command: str, path: str, words: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"minillm {command}: error: ") and path in lines[0] and words in lines[0], lines[0]


@pytest.fixture(scope="module")
def cli_cases(good, tmp_path_factory):
    return _cli_cases(good, tmp_path_factory.mktemp("cli"))


CLI_CASE_NAMES = ["flipped", "vocab", "int8", "no_config", "rng", "loader", "extra", "nested", "huge_header"]


@pytest.mark.parametrize("case", CLI_CASE_NAMES)
def test_eval_exits_2_with_one_line(cli_cases, tmp_path, capsys, case):
    path, words = cli_cases[case]
    text = tmp_path / "text.txt"
    text.write_text("abc def ghij\n" * 10)
    assert main(["eval", "--checkpoint", path, "--input", str(text)]) == 2
    _one_clear_line(capsys, "eval", path, words)


@pytest.mark.parametrize("case", CLI_CASE_NAMES)
def test_generate_exits_2_with_one_line(cli_cases, capsys, case):
    path, words = cli_cases[case]
    assert main(["generate", "--checkpoint", path, "--prompt", "ab", "--max-new-tokens", "3"]) == 2
    _one_clear_line(capsys, "generate", path, words)


@pytest.mark.parametrize("case", ["flipped", "int8", "rng", "loader", "extra", "huge_header"])
def test_train_resume_exits_2_with_one_line(cli_cases, tmp_path, capsys, case):
    # The checkpoint is read before the corpus or the model: refused at once, nothing trained.
    path, words = cli_cases[case]
    args = ["train", "--max_steps", "2", "--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--block_size", "16",
            "--progress", "false", "--out_dir", str(tmp_path / "run"), "--resume", path]
    assert main(args) == 2
    _one_clear_line(capsys, "train", path, words)
    assert not (tmp_path / "run" / "last.safetensors").exists()
