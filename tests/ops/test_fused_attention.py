"""scaled_dot_product_attention and rope: gradcheck, agreement with the composed twins (MHA,
GQA, MQA, masks, dropout), dtypes, bad input."""
import math

import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from tests.ops.twins import assert_keeps_dtype, assert_twins_agree, run_with_grads


def qkv(rng, b=2, h=4, h_kv=2, t=3, s=None, d=4):
    s = t if s is None else s
    return [rng.standard_normal((b, h, t, d)), rng.standard_normal((b, h_kv, s, d)),
            rng.standard_normal((b, h_kv, s, d))]


def numpy_attention(q, k, v, mask=None, causal=False):
    """A plain reference: repeat k/v per group, softmax(q k^T / sqrt(D) + mask) v."""
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    t, n = s.shape[-2:]
    if causal:
        s = np.where(np.arange(n)[None, :] <= np.arange(t)[:, None] + (n - t), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    a = np.exp(s - s.max(-1, keepdims=True))
    return (a / a.sum(-1, keepdims=True)) @ v


HEADS = [(4, 4), (4, 2), (4, 1)]          # MHA, GQA, MQA


@pytest.mark.parametrize("h, h_kv", HEADS, ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_gradcheck(h, h_kv, causal, rng, device):
    tensors = [mm.tensor(a, device=device) for a in qkv(rng, h=h, h_kv=h_kv)]
    assert mm.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal), tensors)


def test_sdpa_composed_gradcheck(rng, device):
    tensors = [mm.tensor(a, device=device) for a in qkv(rng)]
    assert mm.gradcheck(lambda q, k, v: F.scaled_dot_product_attention_composed(q, k, v, is_causal=True),
                        tensors)


def _masks(rng, h, t, s):
    boolean = rng.random((1, h, t, s)) > 0.4
    boolean[..., 0] = True                                # every row keeps one key
    return {"none": None, "bool": boolean, "additive": rng.standard_normal((t, s)),
            "additive-4d": rng.standard_normal((2, 1, t, s))}


@pytest.mark.parametrize("h, h_kv", HEADS, ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive", "additive-4d"])
def test_sdpa_agrees_with_composed_and_numpy(h, h_kv, causal, mask_kind, rng, device):
    arrays = qkv(rng, h=h, h_kv=h_kv, t=3, s=5)
    mask = _masks(rng, h, 3, 5)[mask_kind]
    device_mask = None if mask is None else mm.tensor(mask, device=device)

    def fused(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=device_mask, is_causal=causal)

    def composed(q, k, v):
        return F.scaled_dot_product_attention_composed(q, k, v, attn_mask=device_mask, is_causal=causal)

    assert_twins_agree(fused, composed, arrays, device)
    ours = fused(*[mm.tensor(a, device=device) for a in arrays]).numpy()
    np.testing.assert_allclose(ours, numpy_attention(*arrays, mask=mask, causal=causal), rtol=1e-10)


def test_sdpa_gradcheck_with_masks_and_cached_keys(rng, device):
    """T < S (queries after cached keys, causal mask aligned bottom-right) with a boolean mask."""
    arrays = qkv(rng, t=2, s=4)
    mask = mm.tensor(_masks(rng, 4, 2, 4)["bool"], device=device)
    tensors = [mm.tensor(a, device=device) for a in arrays]
    assert mm.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                       is_causal=True), tensors)


def test_sdpa_dropout_gradcheck_and_statistics(rng, device):
    tensors = [mm.tensor(a, device=device) for a in qkv(rng)]

    def dropped(q, k, v):
        mm.manual_seed(3)                                 # one mask for every finite difference
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True)

    assert mm.gradcheck(dropped, tensors)
    # with p > 0 the output differs from the deterministic one but matches in expectation
    q, k, v = (mm.tensor(a) for a in qkv(rng, b=64, t=6))
    plain = F.scaled_dot_product_attention(q, k, v).numpy()
    mm.manual_seed(0)
    noisy = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5).numpy()
    assert not np.allclose(plain, noisy)
    assert abs((noisy - plain).mean()) < 0.05


def test_causal_mask_is_cached_and_bottom_right_aligned():
    m = F.causal_mask(2, 4, np.float32)
    assert m is F.causal_mask(2, 4, np.float32)
    np.testing.assert_array_equal(np.isfinite(m), [[1, 1, 1, 0], [1, 1, 1, 1]])
    assert m.dtype == np.float32 and (m[np.isfinite(m)] == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sdpa_keeps_dtype(dtype, rng, device):
    assert_keeps_dtype(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                       qkv(rng), device, dtype)


def test_sdpa_output_is_a_free_transpose_of_b_t_h_d():
    """The output view transposes back to a contiguous (B, T, H, D) array (no copy needed)."""
    q, k, v = (mm.tensor(a.astype(np.float32)) for a in qkv(np.random.default_rng(0)))
    out = F.scaled_dot_product_attention(q, k, v).data
    assert out.transpose(0, 2, 1, 3).flags["C_CONTIGUOUS"]


def test_sdpa_bad_input(rng):
    q, k, v = (mm.tensor(a) for a in qkv(rng))
    with pytest.raises(ValueError, match="expected 4 dims"):
        F.scaled_dot_product_attention(mm.tensor(np.ones((2, 3, 4))), k, v)
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        F.scaled_dot_product_attention(mm.tensor(rng.standard_normal((2, 3, 3, 4))), k, v)
    with pytest.raises(ValueError, match="do not match"):
        F.scaled_dot_product_attention(q, k, mm.tensor(rng.standard_normal((2, 2, 3, 5))))
    with pytest.raises(ValueError, match="dropout_p=1.0"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((5, 3), dtype=bool))
    with pytest.raises(TypeError, match="boolean or floating"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((3, 3), dtype=np.int64))


# -- rope --------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [0, 3])
def test_rope_gradcheck_and_twin(offset, rng, device):
    cos, sin = F.rope_tables(6, 10, theta=100.0, dtype=np.float64, device=device)
    x = rng.standard_normal((2, 3, 4, 6))
    assert mm.gradcheck(lambda x: F.rope(x, cos, sin, position_offset=offset), [mm.tensor(x, device=device)])
    assert mm.gradcheck(lambda x: F.rope_composed(x, cos, sin, position_offset=offset),
                        [mm.tensor(x, device=device)])
    assert_twins_agree(lambda x: F.rope(x, cos, sin, offset), lambda x: F.rope_composed(x, cos, sin, offset),
                       [x], device)


def test_rope_rotates_pairs_and_keeps_relative_positions(rng):
    cos, sin = F.rope_tables(4, 16, dtype=np.float64)
    x = rng.standard_normal((1, 1, 1, 4))
    y = F.rope(mm.tensor(x), cos, sin, position_offset=5).numpy()
    angle = 5 * 10000.0 ** (-np.arange(0, 4, 2) / 4)
    expected = np.concatenate([x[..., :2] * np.cos(angle) - x[..., 2:] * np.sin(angle),
                               x[..., 2:] * np.cos(angle) + x[..., :2] * np.sin(angle)], axis=-1)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    # q·k depends only on the distance between positions
    q, k = rng.standard_normal((1, 1, 1, 4)), rng.standard_normal((1, 1, 1, 4))

    def score(pq, pk):
        a = F.rope(mm.tensor(q), cos, sin, pq).numpy()
        b = F.rope(mm.tensor(k), cos, sin, pk).numpy()
        return float((a * b).sum())

    assert score(7, 3) == pytest.approx(score(10, 6), rel=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rope_keeps_dtype(dtype, rng, device):
    cos, sin = F.rope_tables(4, 8, dtype=dtype, device=device)
    assert_keeps_dtype(lambda x: F.rope(x, cos, sin), [rng.standard_normal((2, 2, 3, 4))], device, dtype)


def test_rope_bad_input(rng):
    cos, sin = F.rope_tables(4, 8, dtype=np.float64)
    x = mm.tensor(rng.standard_normal((1, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"positions 6..8 exceed the table of 8 positions"):
        F.rope(x, cos, sin, position_offset=6)
    with pytest.raises(ValueError, match="odd"):
        F.rope(mm.tensor(rng.standard_normal((1, 2, 3, 5))), cos, sin)
    with pytest.raises(ValueError, match="expected an int >= 0"):
        F.rope(x, cos, sin, position_offset=-1)
    with pytest.raises(ValueError, match="positive even"):
        F.rope_tables(5, 8)
    with pytest.raises(TypeError, match="dtype"):
        F.rope(x, *F.rope_tables(4, 8))                   # float32 tables, float64 x


def test_repeat_kv_gradcheck(rng, device):
    k = mm.tensor(rng.standard_normal((1, 2, 3, 2)), device=device)
    assert mm.gradcheck(lambda k: F.repeat_kv(k, 3), [k])
    out = F.repeat_kv(mm.tensor(np.arange(2.0).reshape(1, 2, 1, 1)), 2).numpy().ravel()
    np.testing.assert_array_equal(out, [0, 0, 1, 1])


@pytest.mark.parametrize("h, h_kv", HEADS, ids=["mha", "gqa", "mqa"])
def test_sdpa_in_batch_blocks_matches_one_block(h, h_kv, rng, device, monkeypatch):
    """Forward and backward run over blocks of the batch axis; tiny blocks (one batch element
    each) must give the same result, with a per-element mask and with dropout."""
    from minillm.ops import attention

    arrays = qkv(rng, b=3, h=h, h_kv=h_kv, t=3, s=4)
    mask = rng.random((3, 1, 3, 4)) > 0.3
    mask[..., 0] = True
    mask = mm.tensor(mask, device=device)

    def fn(q, k, v):
        mm.manual_seed(5)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True, dropout_p=0.2)

    whole, whole_grads, _, _ = run_with_grads(fn, arrays, device)
    monkeypatch.setattr(attention, "_BLOCK_ELEMENTS", 1)
    blocked, blocked_grads, _, _ = run_with_grads(fn, arrays, device)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12)
    for a, b in zip(blocked_grads, whole_grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert mm.gradcheck(fn, [mm.tensor(a, device=device) for a in arrays])
