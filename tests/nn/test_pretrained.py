"""Hugging Face model directories without transformers: save_pretrained -> from_pretrained round
trips (GPT-2, Llama with GQA, tied and untied, F32/F16/BF16 files, shards), the refusals (each
names the config field), memory-friendly loading, the hub cache and its offline error, and the
CLI (``minillm export``, ``--model DIR``). Parity with transformers itself is in
tests/reference/test_pretrained_transformers.py."""
import json
import os

import numpy as np
import pytest

import minillm as mm
from minillm.backend import get_rng_state, to_numpy
from minillm.cli import main
from minillm.nn import GPT, GPTConfig, pretrained
from minillm.serialization import bf16_bits_to_float32, float32_to_bf16_bits, load_safetensors, save_safetensors

TINY = dict(vocab_size=61, block_size=24, n_layer=2, n_head=4, n_embd=32)
MODELS = {
    "gpt2": lambda: GPTConfig.gpt2(**TINY),
    "gpt2-untied-erf": lambda: GPTConfig.gpt2(**TINY, tie_weights=False, gelu_approximate="none", mlp_hidden=48),
    "llama-gqa": lambda: GPTConfig.llama(**TINY, n_kv_head=2, mlp_hidden=40, rope_theta=5000.0, norm_eps=1e-6),
    "llama-tied-mqa": lambda: GPTConfig.llama(**TINY, n_kv_head=1, tie_weights=True),
}


def make_model(name: str, seed: int = 0) -> GPT:
    mm.manual_seed(seed)
    model = GPT(MODELS[name]())
    for parameter in model.parameters():     # norms and biases away from 1 and 0, so a mix-up shows
        parameter.data += 0.1 * mm.backend.random_normal(parameter.shape, parameter.dtype)
    return model.eval()


def states_equal(a: GPT, b: GPT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(to_numpy(sa[k]), to_numpy(sb[k])) for k in sa)


def logits(model, ids):
    with mm.no_grad():
        return to_numpy(model(ids)[0].data)


IDS = np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 11))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_then_load_is_exact(tmp_path, name):
    model = make_model(name)
    written = model.save_pretrained(tmp_path / "m")
    assert written == ["model.safetensors", "config.json", "generation_config.json"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == (["GPT2LMHeadModel"] if name.startswith("gpt2") else ["LlamaForCausalLM"])
    loaded = GPT.from_pretrained(tmp_path / "m")
    resolved = ("mlp_hidden", "mlp_multiple_of")      # the file states the hidden width; the rule is gone
    assert {k: v for k, v in loaded.config.to_dict().items() if k not in resolved} == \
        {k: v for k, v in model.config.to_dict().items() if k not in resolved}
    assert not loaded.training
    assert states_equal(model, loaded)
    np.testing.assert_array_equal(logits(loaded, IDS), logits(model, IDS))


def test_gpt2_layout_is_huggingface_conv1d(tmp_path):
    """The file holds GPT-2's names and Conv1D layout: c_attn is (C, 3C) = [q | k | v] transposed."""
    model = make_model("gpt2")
    model.save_pretrained(tmp_path)
    tensors, metadata = load_safetensors(tmp_path / "model.safetensors")
    assert metadata == {"format": "pt"}
    c = TINY["n_embd"]
    attn = tensors["transformer.h.1.attn.c_attn.weight"]
    assert attn.shape == (c, 3 * c)
    np.testing.assert_array_equal(attn[:, c:2 * c], to_numpy(model.blocks[1].attn.k_proj.weight.data).T)
    np.testing.assert_array_equal(tensors["transformer.h.0.mlp.c_fc.weight"],
                                  to_numpy(model.blocks[0].mlp.up_proj.weight.data).T)
    assert "lm_head.weight" not in tensors                # tied: the embedding serves as the head


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_files(tmp_path, dtype):
    """F16 and BF16 files load into float32 parameters exactly as the rounded weights."""
    model = make_model("llama-gqa")
    model.save_pretrained(tmp_path, dtype=dtype)
    stored = {str(array.dtype) for array in load_safetensors(tmp_path / "model.safetensors")[0].values()}
    assert stored == {"float16" if dtype == "float16" else "uint16"}       # BF16 comes back as its raw bits
    loaded = GPT.from_pretrained(tmp_path)
    for name, value in model.state_dict().items():
        value = to_numpy(value)
        if dtype == "float16":
            expected = value.astype(np.float16).astype(np.float32)
        else:
            expected = bf16_bits_to_float32(float32_to_bf16_bits(value))
        np.testing.assert_array_equal(to_numpy(loaded.state_dict()[name]), expected, err_msg=name)


def test_sharded_index(tmp_path):
    """model.safetensors.index.json + shards load like the single file."""
    model = make_model("llama-gqa")
    model.save_pretrained(tmp_path / "single")
    tensors, _ = load_safetensors(tmp_path / "single" / "model.safetensors")
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    (shard_dir / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    names = sorted(tensors)
    weight_map = {}
    for index, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{index + 1}-of-00002.safetensors"
        save_safetensors(shard_dir / file, {n: tensors[n] for n in part}, {"format": "pt"}, checksum=False)
        weight_map.update({n: file for n in part})
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert states_equal(GPT.from_pretrained(shard_dir), model)
    weight_map[names[0]] = "../elsewhere.safetensors"
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match="expected the name of a .safetensors file in the same directory"):
        GPT.from_pretrained(shard_dir)


def test_loading_draws_no_random_numbers(tmp_path):
    """The model is allocated without initialising it: the global generator is untouched."""
    make_model("gpt2").save_pretrained(tmp_path)
    mm.manual_seed(7)
    before = get_rng_state()
    GPT.from_pretrained(tmp_path)
    assert get_rng_state() == before


def test_checksums_are_verified_when_present(tmp_path):
    make_model("gpt2").save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40                                          # a flipped bit in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256 checksum"):
        GPT.from_pretrained(tmp_path)
    GPT.from_pretrained(tmp_path, verify=False)               # a foreign-style load: structure only


def _config(tmp_path, **changes):
    make_model("llama-gqa").save_pretrained(tmp_path, overwrite=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, field", [
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling="),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rope_parameters="),
    ({"sliding_window": 8}, "sliding_window=8"),
    ({"model_type": "qwen2"}, "model_type='qwen2'"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "architectures="),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"attention_bias": True}, "attention_bias=True"),
    ({"head_dim": 16}, "head_dim=16"),
    ({"num_hidden_layers": 3}, "lack tensor 'model.layers.2.input_layernorm.weight'"),
    ({"num_hidden_layers": 10 ** 9}, "lack tensor 'model.layers.2.input_layernorm.weight'"),
    ({"vocab_size": 10 ** 9}, "has shape"),
    ({"num_attention_heads": 0}, "num_attention_heads=0"),
])
def test_what_cannot_be_represented_is_refused_naming_the_field(tmp_path, changes, field):
    _config(tmp_path, **changes)
    with pytest.raises(ValueError) as error:
        GPT.from_pretrained(tmp_path)
    assert field in str(error.value)


def test_mistral_window_covering_the_context_loads(tmp_path):
    _config(tmp_path, model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=4096)
    assert GPT.from_pretrained(tmp_path).config.n_kv_head == 2


def test_gpt2_activation_and_extra_tensors_refused(tmp_path):
    make_model("gpt2").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ValueError, match="activation_function='relu'"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "gelu"}))
    assert GPT.from_pretrained(tmp_path).config.gelu_approximate == "none"
    tensors, _ = load_safetensors(tmp_path / "model.safetensors")
    save_safetensors(tmp_path / "model.safetensors", {**tensors, "transformer.h.0.attn.bias": np.ones((1, 1)),
                                                      "score.weight": np.ones((2, 32), np.float32)})
    with pytest.raises(ValueError, match=r"no place for, e.g. \['score.weight'\]"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("changes, field", [
    (dict(pos="sinusoidal"), "pos='sinusoidal'"),
    (dict(norm_position="post"), "norm_position='post'"),
    (dict(norm="rmsnorm"), "norm='rmsnorm'"),
    (dict(n_kv_head=2), "n_kv_head=2"),
])
def test_models_without_a_huggingface_equivalent_are_refused(tmp_path, changes, field):
    model = GPT(GPTConfig.gpt2(**{**TINY, **changes}))
    with pytest.raises(ValueError, match=f"{field}.*no Hugging Face equivalent|no Hugging Face equivalent.*{field}"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    model = make_model("gpt2")
    with pytest.raises(ValueError, match="already holds files.*notes.txt.*overwrite"):
        model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_tokenizer_travels_with_the_model_and_the_hook_is_called(tmp_path):
    from minillm.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.train("to be or not to be, that is the question " * 20, vocab_size=270, special_tokens=["<|endoftext|>"])
    calls = []

    class WithHook(BPETokenizer):
        def save_pretrained(self, directory, overwrite=False):
            calls.append((directory, overwrite))
            return []

    hooked = WithHook.from_dict(tokenizer.to_dict())
    model = make_model("gpt2")
    written = model.save_pretrained(tmp_path, tokenizer=hooked)
    # the model's writer checked the folder already, so the tokenizer's may replace its own files
    assert calls == [(os.fspath(tmp_path), True)] and "minillm_tokenizer.json" in written
    real = model.save_pretrained(tmp_path / "real", tokenizer=tokenizer)
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= set(real)
    end = tokenizer.special_tokens["<|endoftext|>"]
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"bos_token_id": end, "eos_token_id": end}
    back = pretrained.load_pretrained_tokenizer(os.fspath(tmp_path))
    assert back.encode("not to be") == tokenizer.encode("not to be")


def test_hub_name_offline_gives_a_clear_error(tmp_path, monkeypatch):
    """A hub name downloads only through MINILLM_HUB_URL here: an address nothing listens on."""
    monkeypatch.setenv("MINILLM_CACHE", os.fspath(tmp_path / "cache"))
    monkeypatch.setenv("MINILLM_HUB_URL", "http://127.0.0.1:9")        # the discard port: refused at once
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pretrained.HubUnavailableError, match="pass a local model directory"):
        GPT.from_pretrained("gpt2")
    assert not any((tmp_path / "cache" / "hub").iterdir())              # nothing half-downloaded is left
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GPT.from_pretrained("./no/such/dir")


def test_hub_cache_is_used_without_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_CACHE", os.fspath(tmp_path / "cache"))
    monkeypatch.setenv("MINILLM_HUB_URL", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    model = make_model("llama-gqa")
    model.save_pretrained(tmp_path / "cache" / "hub" / "someone--tiny-llama")
    assert states_equal(GPT.from_pretrained("someone/tiny-llama"), model)


def test_hub_download_writes_the_cache(tmp_path, monkeypatch):
    """The downloader fetches config, weights and the optional files over urllib (a local stand-in)."""
    source = tmp_path / "served"
    model = make_model("gpt2")
    model.save_pretrained(source)

    class Response:
        def __init__(self, path):
            self.handle = open(path, "rb")

        def read(self, *args):
            return self.handle.read(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    asked = []

    def fake_get(url, name):
        asked.append(url.rsplit("/", 1)[1])
        path = source / asked[-1]
        return Response(path) if path.exists() else None

    monkeypatch.setattr(pretrained, "_hub_get", fake_get)
    monkeypatch.setenv("MINILLM_CACHE", os.fspath(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert states_equal(GPT.from_pretrained("gpt2"), model)
    assert asked[:2] == ["config.json", "model.safetensors"] and "tokenizer.json" in asked
    assert sorted(os.listdir(tmp_path / "cache" / "hub")) == ["gpt2"]


def test_cli_export_then_generate_with_model_dir(tmp_path, capsys):
    """minillm export CKPT DIR, then --model DIR where a checkpoint goes (generate, eval)."""
    from minillm.tokenizer import BPETokenizer
    from minillm.train.checkpoint import save_checkpoint

    tokenizer = BPETokenizer.train("to be or not to be, that is the question " * 10, vocab_size=280,
                                   special_tokens=["<|endoftext|>"])
    mm.manual_seed(0)
    model = GPT(GPTConfig.llama(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(tmp_path / "ckpt.safetensors", model=model, step=3, tokenizer=tokenizer)
    assert main(["export", os.fspath(tmp_path / "ckpt.safetensors"), os.fspath(tmp_path / "hf")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["export", os.fspath(tmp_path / "ckpt.safetensors"), os.fspath(tmp_path / "hf")]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main(["export", os.fspath(tmp_path / "ckpt.safetensors"), os.fspath(tmp_path / "hf"), "--overwrite"]) == 0
    capsys.readouterr()
    outputs = []
    for flag, source in (("--checkpoint", tmp_path / "ckpt.safetensors"), ("--model", tmp_path / "hf")):
        assert main(["generate", flag, os.fspath(source), "--prompt", "to be", "--max-new-tokens", "8",
                     "--temperature", "0"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be " * 8)
    assert main(["eval", "--model", os.fspath(tmp_path / "hf"), "--input", os.fspath(text)]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 0
    assert main(["generate", "--model", os.fspath(tmp_path / "hf"), "--checkpoint", "x", "--prompt", "a"]) == 2
    assert "are both given" in capsys.readouterr().err
    assert main(["export", os.fspath(tmp_path / "ckpt.safetensors")]) == 2
    assert "expected two: CKPT DIR" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loading_allocates_about_one_copy_of_the_weights(tmp_path, dtype):
    """The file is memory-mapped and converted tensor by tensor into the parameters: Python-side
    allocations peak at the parameters (plus small change), not at the file plus the parameters."""
    from tests.peak_memory import peak_allocation

    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=256))
    model.save_pretrained(tmp_path, dtype=dtype)
    weights = 4 * model.num_parameters()                       # the float32 parameters, bytes
    error, peak = peak_allocation(lambda: GPT.from_pretrained(tmp_path))
    assert error is None
    assert peak < 1.1 * weights, (peak, weights)                # (file + parameters: twice the weights)
