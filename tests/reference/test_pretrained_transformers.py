"""Parity with Hugging Face transformers: tiny random models built by transformers itself, saved with
its own ``save_pretrained``, loaded by ``GPT.from_pretrained``: the same logits (float32, within
1e-4) and the same greedy continuations (20 tokens); and back: minillm's ``save_pretrained`` loaded
by ``AutoModelForCausalLM.from_pretrained`` gives the same logits again. Shapes: GPT-2 (tied head),
Llama with grouped-query attention, an untied head and rope_theta != 10000, Llama with a tied head,
Mistral with a window covering the context; files in F32, F16 and BF16, single and sharded.

Optional: skipped when transformers (the reference extra) is not installed.
"""
import json

import numpy as np
import pytest

import minillm as mm
from minillm.backend import to_numpy
from minillm.nn import GPT

torch = pytest.importorskip("torch", reason="the reference extra (torch) is not installed")
transformers = pytest.importorskip("transformers", reason="the reference extra (transformers) is not installed")

VOCAB, CONTEXT = 97, 64
# The initialiser's scale: larger than HF's 0.02 so logits spread over several units and a
# mapping mistake (a transposed or swapped matrix, a wrong RoPE pairing) moves them by far more than 1e-4.
INIT_STD = 0.15


def gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=48, n_layer=2, n_head=4, initializer_range=INIT_STD,
        bos_token_id=0, eos_token_id=0))


def llama_gqa_untied():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=CONTEXT, rope_theta=500.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, initializer_range=INIT_STD, bos_token_id=0, eos_token_id=0))


def llama_tied():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=CONTEXT, tie_word_embeddings=True,
        initializer_range=INIT_STD, bos_token_id=0, eos_token_id=0))


def mistral():
    return transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=CONTEXT, sliding_window=CONTEXT, rope_theta=20000.0,
        initializer_range=INIT_STD, bos_token_id=0, eos_token_id=0))


BUILDERS = {"gpt2": gpt2, "llama-gqa-untied-theta500": llama_gqa_untied, "llama-tied": llama_tied,
            "mistral-mqa": mistral}
IDS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 23))


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/reference/conftest.py


def build(name):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    with torch.no_grad():              # norms away from 1 and biases away from 0, so a mix-up shows
        for key, parameter in model.named_parameters():
            if parameter.ndim == 1:
                parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def hf_logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.float().numpy()


def our_logits(model, ids=IDS):
    with mm.no_grad():
        return to_numpy(model(ids)[0].data)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name):
    reference = build(name)
    reference.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    expected = hf_logits(reference)
    assert np.abs(expected).max() > 1.0                                   # logits that can show a mistake
    np.testing.assert_allclose(our_logits(ours), expected, atol=1e-4, rtol=0)
    prompt = IDS[:1, :5]
    with torch.no_grad():
        hf_tokens = reference.generate(torch.from_numpy(prompt), attention_mask=torch.ones_like(torch.from_numpy(prompt)),
                                       max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    our_tokens = to_numpy(ours.generate(prompt, 20, temperature=0.0))
    np.testing.assert_array_equal(our_tokens, hf_tokens.numpy())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_minillm_export_loads_in_transformers(tmp_path, name):
    reference = build(name)
    reference.save_pretrained(tmp_path / "hf")
    ours = GPT.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(hf_logits(back), our_logits(ours), atol=1e-4, rtol=0)
    kind = {"gpt2": "GPT2LMHeadModel"}.get(name, "LlamaForCausalLM")
    assert type(back).__name__ == kind


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_from_transformers(tmp_path, dtype):
    """F16 / BF16 files: minillm widens to float32 exactly what transformers holds in that dtype."""
    reference = build("llama-gqa-untied-theta500").to(dtype)
    reference.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    held = {k: v.float().numpy() for k, v in reference.state_dict().items()}
    np.testing.assert_array_equal(to_numpy(ours.blocks[1].attn.k_proj.weight.data),
                                  held["model.layers.1.self_attn.k_proj.weight"])
    np.testing.assert_array_equal(to_numpy(ours.lm_head.weight.data), held["lm_head.weight"])
    # transformers' own float32 load of the same file (not reference.float(): .to(dtype) also rounded
    # its RoPE frequency buffer, which a fresh load recomputes in float32)
    widened = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    np.testing.assert_allclose(our_logits(ours), hf_logits(widened), atol=1e-4, rtol=0)


def test_sharded_checkpoint_from_transformers(tmp_path):
    reference = build("gpt2")
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    np.testing.assert_allclose(our_logits(GPT.from_pretrained(tmp_path)), hf_logits(reference), atol=1e-4, rtol=0)


@pytest.mark.parametrize("change, field", [
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_"),
    (dict(sliding_window=16), "sliding_window=16"),
])
def test_transformers_configs_we_cannot_represent(tmp_path, change, field):
    config = transformers.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                                        **change)
    transformers.MistralForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field):
        GPT.from_pretrained(tmp_path)


def test_unknown_model_type_is_refused(tmp_path):
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT)
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type='qwen2' is not supported"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("config", [
    dict(preset="gpt2", tie_weights=False, gelu_approximate="none", mlp_hidden=40),
    dict(preset="llama", n_kv_head=1, rope_theta=123.0, norm_eps=1e-6, tie_weights=True, mlp_multiple_of=16),
], ids=["gpt2-untied-erf-gelu-n_inner", "llama-mqa-tied-theta123"])
def test_minillm_models_export_to_transformers(tmp_path, config):
    """Models minillm built itself (fields transformers' defaults would not guess) load in transformers."""
    from minillm.nn import GPTConfig

    values = dict(config)
    make = getattr(GPTConfig, values.pop("preset"))
    mm.manual_seed(0)
    ours = GPT(make(vocab_size=VOCAB, block_size=CONTEXT, n_layer=2, n_head=4, n_embd=32, init_std=INIT_STD,
                    **values)).eval()
    ours.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    expected = our_logits(ours)
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(hf_logits(back), expected, atol=1e-4, rtol=0)
