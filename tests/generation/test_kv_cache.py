"""The key/value cache: every step's logits equal a full recomputation (float64), for both
presets, learned/sinusoidal/RoPE positions, MHA/GQA/MQA; layout, size and misuse."""
import numpy as np
import pytest

import minillm as mm
from minillm.nn import KVCache
from tests.generation.helpers import CONFIGS, make_model, prompts


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_logits_equal_full_recomputation(name):
    model = make_model(name)
    ids = np.array(prompts([14, 14], seed=1))                   # (B=2, 14)
    cache = KVCache.for_model(model, batch_size=2)
    chunks = [(0, 5), (5, 6), (6, 9), (9, 10), (10, 11), (11, 12), (12, 13), (13, 14)]  # prefill, steps, a chunk
    with mm.no_grad():
        full, _ = model(ids)                                     # (2, 14, V)
        for start, end in chunks:
            assert cache.length == start
            step, _ = model(ids[:, start:end], kv_cache=cache)   # positions start..end-1
            reference, _ = model(ids[:, :end])
            np.testing.assert_allclose(step.data, reference.data[:, start:end], rtol=0, atol=1e-12)
            np.testing.assert_allclose(step.data, full.data[:, start:end], rtol=0, atol=1e-12)
    assert cache.length == 14


@pytest.mark.parametrize("name", ["gpt2-learned", "llama-gqa-rope"])
def test_only_last_matches_the_last_position(name):
    model = make_model(name)
    ids = np.array(prompts([9, 9]))
    with mm.no_grad():
        full, _ = model(ids)
        last, _ = model(ids, only_last=True)
    assert last.shape == (2, 1, model.config.vocab_size)
    # the head multiplies 1 row instead of 9: BLAS may sum in another order (float64: ~1e-16 relative)
    np.testing.assert_allclose(last.data[:, 0], full.data[:, -1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="only_last=True .* expected targets=None"):
        model(ids, ids, only_last=True)


def test_cache_layout_and_gqa_shrinks_it():
    mha = make_model("llama-gqa-rope", n_kv_head=4)
    gqa = make_model("llama-gqa-rope")                           # 4 query heads, 2 key/value heads
    mqa = make_model("llama-mqa-rope")
    caches = [KVCache.for_model(m, batch_size=3, capacity=10) for m in (mha, gqa, mqa)]
    assert [c.layers[0].keys.shape for c in caches] == [(3, 4, 10, 4), (3, 2, 10, 4), (3, 1, 10, 4)]
    assert caches[0].nbytes == 2 * caches[1].nbytes == 4 * caches[2].nbytes
    assert len(caches[0].layers) == mha.config.n_layer
    assert caches[0].layers[0].keys.dtype == np.float64


def test_decode_writes_in_place_without_reallocating():
    model = make_model("gpt2-learned")
    cache = KVCache.for_model(model, batch_size=1)
    buffers = [(layer.keys, layer.values) for layer in cache.layers]
    ids = np.array(prompts([6]))
    with mm.no_grad():
        model(ids[:, :4], kv_cache=cache)
        before = cache.layers[0].keys[:, :, :4].copy()
        model(ids[:, 4:5], kv_cache=cache)
    assert all(layer.keys is k and layer.values is v for layer, (k, v) in zip(cache.layers, buffers))
    np.testing.assert_array_equal(cache.layers[0].keys[:, :, :4], before)   # older positions untouched
    assert np.any(cache.layers[0].keys[:, :, 4] != 0)


def test_cache_misuse_is_rejected():
    model = make_model("gpt2-learned")
    ids = np.array(prompts([4]))
    cache = KVCache.for_model(model, batch_size=1, capacity=5)
    with pytest.raises(RuntimeError, match="no_grad"):
        model(ids, kv_cache=cache)
    with mm.no_grad():
        with pytest.raises(ValueError, match="batch size 1; expected 2 layers and the batch size of idx, 2"):
            model(np.array(prompts([4, 4])), kv_cache=cache)
        model(ids, kv_cache=cache)
        with pytest.raises(ValueError, match="position_offset=2 but kv_cache.length=4"):
            model(ids[:, :1], position_offset=2, kv_cache=cache)
        with pytest.raises(ValueError, match="overflows the capacity of 5 positions"):
            model(ids[:, :2], kv_cache=cache)
        full = KVCache.for_model(model, batch_size=1)            # capacity = block_size = 16
        model(np.array(prompts([16])), kv_cache=full)
        with pytest.raises(ValueError, match="longer than block_size=16"):   # never a silent wrong position
            model(ids[:, :1], kv_cache=full)
    with pytest.raises(ValueError, match=r"capacity=17; expected an int in \[1, block_size=16\]"):
        KVCache.for_model(model, 1, capacity=17)


def test_cached_generation_runs_on_the_gpu_path(gpu_device):
    cpu = make_model("llama-gqa-rope", dtype=np.float32)
    expected = cpu.generate(prompts([5, 3]), 8, temperature=0.8, top_k=10, seed=[1, 2])
    device_model = make_model("llama-gqa-rope", dtype=np.float32).to(gpu_device)
    got = device_model.generate(prompts([5, 3]), 8, temperature=0.8, top_k=10, seed=[1, 2])
    assert got == expected
    out = device_model.generate(mm.backend.to_device(np.array(prompts([4, 4])), gpu_device), 6,
                                temperature=0.0)
    assert mm.backend.device_of(out) == "cuda" and out.shape == (2, 10)
    assert list(device_model.stream(prompts([5])[0], 4, temperature=0.0)) == expected_first(cpu)


def expected_first(model):
    return model.generate(prompts([5])[0], 4, temperature=0.0)[5:]
