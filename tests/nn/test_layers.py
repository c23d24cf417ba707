"""Layers, positions, attention, feed-forward and blocks."""
import math

import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from minillm.nn import (
    MLP,
    Block,
    CausalSelfAttention,
    Dropout,
    Embedding,
    GPTConfig,
    LayerNorm,
    LearnedPositionalEmbedding,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    SwiGLUMLP,
    sinusoidal_table,
    swiglu_hidden,
)


def test_linear_layer_matches_numpy_and_pytorch_init_bounds(rng):
    mm.manual_seed(0)
    layer = Linear(16, 8)
    bound = 1 / math.sqrt(16)
    assert layer.weight.shape == (8, 16) and np.abs(layer.weight.data).max() <= bound
    assert layer.weight.dtype == np.float32
    x = rng.standard_normal((2, 3, 16)).astype(np.float32)
    np.testing.assert_allclose(layer(mm.tensor(x)).numpy(), x @ layer.weight.data.T + layer.bias.data,
                               rtol=1e-5, atol=1e-6)
    assert Linear(4, 2, bias=False).bias is None
    with pytest.raises(ValueError, match="in_features=0"):
        Linear(0, 2)


def test_embedding_and_norm_layers(rng):
    emb = Embedding(10, 4)
    assert emb(np.array([[1, 2]])).shape == (1, 2, 4)
    x = mm.tensor(rng.standard_normal((2, 4)).astype(np.float32))
    ln, rms = LayerNorm(4), RMSNorm(4)
    assert [n for n, _ in ln.named_parameters()] == ["weight", "bias"]
    assert LayerNorm(4, bias=False).bias is None
    np.testing.assert_allclose(ln(x).numpy().mean(-1), 0, atol=1e-6)
    np.testing.assert_allclose((rms(x).numpy() ** 2).mean(-1), 1, rtol=1e-4)


def test_dropout_layer_train_and_eval():
    drop = Dropout(0.5)
    x = mm.tensor(np.ones((100, 100), dtype=np.float32))
    y = drop(x).numpy()
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.4 < (y == 0).mean() < 0.6
    assert drop.eval()(x) is x
    assert Dropout(0.0)(x) is x
    with pytest.raises(ValueError, match="p=1"):
        Dropout(1)


# -- positions ---------------------------------------------------------------------------------
def test_sinusoidal_table_follows_the_paper():
    table = sinusoidal_table(50, 8, dtype=np.float64)
    p, i = 17, 3
    assert table[p, 2 * i] == pytest.approx(math.sin(p / 10000 ** (2 * i / 8)))
    assert table[p, 2 * i + 1] == pytest.approx(math.cos(p / 10000 ** (2 * i / 8)))
    pos = SinusoidalPositionalEmbedding(50, 8)
    assert pos.num_parameters() == 0 and pos.state_dict() == {}
    np.testing.assert_array_equal(pos(3, position_offset=10).numpy(), pos.table[10:13])
    with pytest.raises(ValueError, match="even"):
        sinusoidal_table(4, 7)


def test_learned_positions_offset_and_gradient(device):
    pos = LearnedPositionalEmbedding(6, 4).to(device)
    out = pos(2, position_offset=3)
    np.testing.assert_array_equal(out.numpy(), pos.weight.numpy()[3:5])
    out.sum().backward()
    np.testing.assert_array_equal(mm.backend.to_numpy(pos.weight.grad).sum(1), [0, 0, 0, 4, 4, 0])
    with pytest.raises(ValueError, match=r"positions 5..6 exceed the 6 positions"):
        pos(2, position_offset=5)


def test_rotary_module_applies_rope(rng):
    rot = RotaryEmbedding(4, 8, theta=10000.0)
    x = mm.tensor(rng.standard_normal((1, 2, 3, 4)).astype(np.float32))
    np.testing.assert_allclose(rot(x, 2).numpy(), F.rope(x, rot.cos, rot.sin, 2).numpy())
    with pytest.raises(ValueError, match="exceed"):
        rot(x, 6)


# -- attention ---------------------------------------------------------------------------------
def _reference_attention(attn, x, offset=0):
    """The same computation from composed primitives, with repeat_kv."""
    b, t, c = x.shape
    d = attn.head_dim

    def heads(y, n):
        return F.transpose(F.reshape(y, (b, t, n, d)), (0, 2, 1, 3))

    q = heads(F.linear_composed(x, attn.q_proj.weight, attn.q_proj.bias), attn.n_head)
    k = heads(F.linear_composed(x, attn.k_proj.weight, attn.k_proj.bias), attn.n_kv_head)
    v = heads(F.linear_composed(x, attn.v_proj.weight, attn.v_proj.bias), attn.n_kv_head)
    if attn.rotary is not None:
        q = F.rope_composed(q, attn.rotary.cos, attn.rotary.sin, offset)
        k = F.rope_composed(k, attn.rotary.cos, attn.rotary.sin, offset)
    y = F.scaled_dot_product_attention_composed(q, k, v, is_causal=True)
    y = F.reshape(F.transpose(y, (0, 2, 1, 3)), (b, t, c))
    return F.linear_composed(y, attn.o_proj.weight, attn.o_proj.bias)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("rope", [False, True])
def test_attention_matches_composed_reference(n_kv_head, rope, rng, device):
    rotary = RotaryEmbedding(4, 8, dtype=np.float64) if rope else None
    attn = CausalSelfAttention(16, 4, n_kv_head, bias=not rope, rotary=rotary).to_dtype(np.float64).to(device)
    assert attn.k_proj.weight.shape == (n_kv_head * 4, 16)
    x = mm.tensor(rng.standard_normal((2, 5, 16)), device=device)
    # float64, fused vs composed: the sums run in different orders (cuBLAS, the fused kernel), so an
    # output near zero differs in relative terms by more than rtol; atol bounds it (outputs are O(1)).
    np.testing.assert_allclose(attn(x, 2).numpy(), _reference_attention(attn, x, 2).numpy(), rtol=1e-10,
                               atol=1e-13)


def test_attention_is_causal(rng):
    attn = CausalSelfAttention(8, 2)
    x = rng.standard_normal((1, 6, 8)).astype(np.float32)
    changed = x.copy()
    changed[:, 4:] += 1.0                                      # change the future only
    a, b = attn(mm.tensor(x)).numpy(), attn(mm.tensor(changed)).numpy()
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-6)
    assert not np.allclose(a[:, 4:], b[:, 4:])


def test_attention_hooks_allow_a_key_value_cache(rng):
    """project_qkv at an offset + attend over cached keys equals attention over the full
    sequence: the seam a KV cache uses."""
    rotary = RotaryEmbedding(4, 16, dtype=np.float64)
    attn = CausalSelfAttention(8, 2, 1, rotary=rotary).to_dtype(np.float64)
    x = mm.tensor(rng.standard_normal((1, 7, 8)))
    full = attn(x).numpy()
    with mm.no_grad():
        q0, k0, v0 = attn.project_qkv(x[:, :5], position_offset=0)
        q1, k1, v1 = attn.project_qkv(x[:, 5:], position_offset=5)
        k = F.concatenate([k0, k1], axis=2)
        v = F.concatenate([v0, v1], axis=2)
        tail = attn.attend(q1, k, v).numpy()
    np.testing.assert_allclose(tail, full[:, 5:], rtol=1e-10)


def test_attention_bad_config():
    with pytest.raises(ValueError, match="not divisible by n_head=3"):
        CausalSelfAttention(8, 3)
    with pytest.raises(ValueError, match="not a multiple of n_kv_head=3"):
        CausalSelfAttention(12, 4, 3)


# -- feed-forward and blocks -------------------------------------------------------------------
def test_swiglu_hidden_rule():
    assert swiglu_hidden(192) == 512 and swiglu_hidden(384) == 1024
    assert swiglu_hidden(4096, multiple_of=256) == 11008          # Llama 7B
    assert swiglu_hidden(32, multiple_of=8) == 88
    assert SwiGLUMLP(32).up_proj.weight.shape == (128, 32)
    assert MLP(32).up_proj.weight.shape == (128, 32)


def test_mlps_compute_their_formulas(rng):
    x = mm.tensor(rng.standard_normal((2, 3, 8)))
    mlp = MLP(8).to_dtype(np.float64)
    expected = F.linear(F.gelu(F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias)),
                        mlp.down_proj.weight, mlp.down_proj.bias)
    np.testing.assert_allclose(mlp(x).numpy(), expected.numpy())
    glu = SwiGLUMLP(8).to_dtype(np.float64)
    gate = F.linear(x, glu.gate_proj.weight).numpy()
    up = F.linear(x, glu.up_proj.weight).numpy()
    hidden = gate / (1 + np.exp(-gate)) * up
    np.testing.assert_allclose(glu(x).numpy(), hidden @ glu.down_proj.weight.data.T, rtol=1e-10)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_block_norm_placement(position, rng):
    cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, norm_position=position)
    block = Block(cfg).to_dtype(np.float64)
    x = mm.tensor(rng.standard_normal((2, 4, 8)))
    if position == "pre":
        h = x + block.attn(block.norm1(x))
        expected = h + block.mlp(block.norm2(h))
    else:
        h = block.norm1(x + block.attn(x))
        expected = block.norm2(h + block.mlp(h))
    np.testing.assert_allclose(block(x).numpy(), expected.numpy())
