"""Host execution (minillm.host): the thread split gives the same bits as one thread, every
range is covered once, errors surface; causal attention's query chunks agree with the whole
square and with the composed twin, and pass gradcheck."""
import threading

import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from minillm import host
from minillm.ops import attention as attention_ops
from minillm.optim import AdamW
from tests.ops.twins import assert_twins_agree, run_with_grads


@pytest.fixture
def split_everything(monkeypatch):
    """Split any work at all (MIN_PARALLEL_SIZE 1); the thread count is restored afterwards."""
    monkeypatch.setattr(host, "MIN_PARALLEL_SIZE", 1)
    before = host.num_threads()
    yield
    host.set_num_threads(before)


def test_parallel_for_covers_every_item_once_on_several_threads(split_everything):
    host.set_num_threads(3)
    seen, ranges, threads = [], [], set()
    lock = threading.Lock()

    def part(start, stop):
        with lock:
            seen.extend(range(start, stop))
            ranges.append((start, stop))
            threads.add(threading.get_ident())

    host.parallel_for(part, 10)
    assert sorted(seen) == list(range(10))
    assert sorted(ranges) == [(0, 3), (3, 6), (6, 10)]
    assert threading.get_ident() in threads and len(threads) >= 2   # the caller runs the last part


def test_parallel_for_runs_small_work_and_nested_calls_inline(monkeypatch):
    host.set_num_threads(2)
    calls = []
    host.parallel_for(lambda a, b: calls.append((a, b)), 10, min_size=1000)    # too small to split
    assert calls == [(0, 10)]
    monkeypatch.setattr(host, "MIN_PARALLEL_SIZE", 1)
    inner = []

    def outer(start, stop):
        host.parallel_for(lambda a, b: inner.append((a, b)), 4)             # inside a part: inline

    host.parallel_for(outer, 2)
    assert sorted(inner) == [(0, 4), (0, 4)]


def test_parallel_for_raises_a_part_s_error_after_all_parts_finish(split_everything):
    host.set_num_threads(2)
    done = []

    def part(start, stop):
        if start == 0:
            raise ValueError("first half failed")
        done.append(start)

    with pytest.raises(ValueError, match="first half failed"):
        host.parallel_for(part, 10)
    assert done == [5]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_refuses_bad_values(bad):
    with pytest.raises(ValueError, match=r"set_num_threads: n=.*expected an int >= 1"):
        host.set_num_threads(bad)


def _run(fn, arrays, threads):
    host.set_num_threads(threads)
    return run_with_grads(fn, arrays, "cpu")[:2]


OPS = {
    "gelu": (lambda x: F.gelu(x), lambda rng: [rng.standard_normal((7, 33)).astype(np.float32)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b),
                   lambda rng: [rng.standard_normal((2, 9, 16)).astype(np.float32),
                                rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)]),
    "rms_norm": (lambda x, w: F.rms_norm(x, w),
                 lambda rng: [rng.standard_normal((9, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)]),
    "swiglu": (lambda a, b: F.swiglu(a, b),
               lambda rng: [rng.standard_normal((5, 3, 17)).astype(np.float32), rng.standard_normal((5, 3, 17)).astype(np.float32)]),
    "cross_entropy": (lambda z, t: F.cross_entropy(z, t),
                      lambda rng: [rng.standard_normal((2, 9, 33)).astype(np.float32), rng.integers(0, 33, size=(2, 9))]),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                  lambda rng: [rng.standard_normal((2, 4, 12, 8)).astype(np.float32),
                               rng.standard_normal((2, 2, 12, 8)).astype(np.float32),
                               rng.standard_normal((2, 2, 12, 8)).astype(np.float32)]),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_an_op_gives_the_same_bits_on_one_and_on_several_threads(name, split_everything, monkeypatch, rng):
    # Exact equality: the split is by whole rows or elements, so each value is computed by the
    # very same arithmetic whatever the thread count (see minillm.host).
    monkeypatch.setattr(attention_ops, "_HOST_CAUSAL_CHUNK", 3)
    fn, make = OPS[name]
    arrays = make(rng)
    y1, g1 = _run(fn, arrays, 1)
    y3, g3 = _run(fn, arrays, 3)
    assert np.array_equal(y1, y3)
    for a, b in zip(g1, g3):
        assert np.array_equal(a, b)


def test_adamw_gives_the_same_bits_on_one_and_on_several_threads(split_everything, monkeypatch, rng):
    from minillm.optim import adamw

    monkeypatch.setattr(adamw, "_HOST_BLOCK", 5)          # several blocks per parameter
    shapes = [(7, 3), (11,), (2, 2, 5)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    results = []
    for threads in (1, 3):
        host.set_num_threads(threads)
        params = [mm.tensor(a.copy(), requires_grad=True) for a in start]
        opt = AdamW([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], lr=1e-2,
                    weight_decay=0.1)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g
            opt.step()
        results.append([p.data.copy() for p in params])
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_adamw_blocks_match_whole_parameter_updates(monkeypatch, rng):
    # The blocked host update and the per-parameter array code are the same arithmetic.
    from minillm.optim import adamw

    start = rng.standard_normal((13, 4)).astype(np.float32)
    grads = [rng.standard_normal((13, 4)).astype(np.float32) for _ in range(3)]
    results = []
    for block in (7, 1 << 20):
        monkeypatch.setattr(adamw, "_HOST_BLOCK", block)
        p = mm.tensor(start.copy(), requires_grad=True)
        opt = AdamW([p], lr=1e-2, weight_decay=0.1)
        for g in grads:
            p.grad = g
            opt.step()
        results.append(p.data.copy())
    assert np.array_equal(results[0], results[1])


# -- causal attention's query chunks ------------------------------------------------------------
SHAPES = [dict(t=12, s=12), dict(t=7, s=12), dict(t=9, s=9)]   # square, a KV-cache-like T < S, a ragged last chunk


@pytest.mark.parametrize("shape", SHAPES, ids=["square", "t<s", "ragged"])
@pytest.mark.parametrize("h, h_kv", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_causal_chunks_agree_with_the_composed_twin(shape, h, h_kv, monkeypatch, rng, device):
    monkeypatch.setattr(attention_ops, "_HOST_CAUSAL_CHUNK", 2)
    monkeypatch.setattr(attention_ops, "_HOST_CAUSAL_CHUNKS", 4)
    d = 4
    arrays = [rng.standard_normal((2, h, shape["t"], d)), rng.standard_normal((2, h_kv, shape["s"], d)),
              rng.standard_normal((2, h_kv, shape["s"], d))]
    op = attention_ops.ScaledDotProductAttention(1.0, None, 0.0, causal=True)
    assert len(op._chunks(shape["t"], shape["s"])) > 1
    assert_twins_agree(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                       lambda q, k, v: F.scaled_dot_product_attention_composed(q, k, v, is_causal=True),
                       arrays, device)


def test_causal_chunks_pass_gradcheck(monkeypatch, rng, device):
    monkeypatch.setattr(attention_ops, "_HOST_CAUSAL_CHUNK", 2)
    tensors = [mm.tensor(rng.standard_normal(s), device=device) for s in ((1, 2, 8, 3), (1, 1, 8, 3), (1, 1, 8, 3))]
    assert mm.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), tensors)


def test_causal_chunks_with_dropout_match_one_chunk(monkeypatch, rng):
    # The dropout mask is drawn whole, whatever the chunks: same seed, same mask, same result up
    # to the order of the float64 additions in dL/dK and dL/dV.
    arrays = [rng.standard_normal((2, 2, 10, 4)) for _ in range(3)]
    results = []
    for chunk in (2, 1000):
        monkeypatch.setattr(attention_ops, "_HOST_CAUSAL_CHUNK", chunk)
        mm.manual_seed(3)
        results.append(run_with_grads(
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True), arrays, "cpu")[:2])
    (y1, g1), (y2, g2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-14)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_chunks_cover_the_queries_and_stop_at_the_last_visible_key(monkeypatch):
    monkeypatch.setattr(attention_ops, "_HOST_CAUSAL_CHUNK", 64)
    monkeypatch.setattr(attention_ops, "_HOST_CAUSAL_CHUNKS", 4)
    op = attention_ops.ScaledDotProductAttention(1.0, None, 0.0, causal=True)
    assert op._chunks(256, 256) == [(0, 64, 64), (64, 128, 128), (128, 192, 192), (192, 256, 256)]
    assert op._chunks(100, 100) == [(0, 100, 100)]                   # short: one chunk
    assert op._chunks(128, 160) == [(0, 64, 96), (64, 128, 160)]     # T < S: keys shifted by S - T
    assert attention_ops.ScaledDotProductAttention(1.0, None, 0.0)._chunks(256, 256) == [(0, 256, 256)]


def test_profiled_flops_count_only_the_chunks_computed(monkeypatch):
    from minillm import profiler

    monkeypatch.setattr(attention_ops, "_HOST_CAUSAL_CHUNK", 4)
    q, k, v = (mm.randn(1, 2, 8, 3, requires_grad=True) for _ in range(3))
    with profiler.profile() as prof:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    entry = prof.to_dict()["ops"]["ScaledDotProductAttention"]
    product = 2 * 1 * 2 * 3 * (4 * 4 + 4 * 8)            # chunks (0, 4) to key 4 and (4, 8) to key 8
    assert (entry["forward_flops"], entry["backward_flops"]) == (2 * product, 4 * product)


# -- attention's work items and its products on one BLAS thread ---------------------------------
def test_attention_items_are_whole_rows_when_they_fit_else_heads_of_one_row(monkeypatch):
    op = attention_ops.ScaledDotProductAttention(1.0, None, 0.0, causal=False)
    like = np.zeros(1, dtype=np.float32)
    chunks = [(0, 8, 8)]                                     # 64 scores per head of a row
    monkeypatch.setattr(attention_ops, "_BLOCK_ELEMENTS", 1 << 20)
    monkeypatch.setattr(host, "MIN_PARALLEL_SIZE", 1)
    rows = op._items(like, 20, 3, 2, chunks)                 # at least _HOST_ITEMS items: 3 rows each
    assert [(r.start, r.stop) for r, _ in rows] == [(i, min(i + 3, 20)) for i in range(0, 20, 3)]
    assert all(heads == slice(None) for _, heads in rows)
    monkeypatch.setattr(host, "MIN_PARALLEL_SIZE", 1 << 30)
    assert op._items(like, 20, 3, 2, chunks) == [(slice(0, 20), slice(None))]   # too small to split: one item
    monkeypatch.setattr(attention_ops, "_BLOCK_ELEMENTS", 2 * 64 * 2)   # two key heads (g = 2) per item
    split = op._items(like, 2, 3, 2, chunks)
    assert [((r.start, r.stop), (h.start, h.stop)) for r, h in split] == [
        ((0, 1), (0, 2)), ((0, 1), (2, 3)), ((1, 2), (0, 2)), ((1, 2), (2, 3))]


@pytest.mark.parametrize("h_kv", [4, 2])
def test_attention_split_into_heads_matches_whole_rows_with_a_mask_and_dropout(h_kv, monkeypatch, rng):
    # A per-batch, per-head boolean mask and dropout: each item slices both the same way, so the
    # items' results are the one-block results; float64, up to the order of additions.
    q = rng.standard_normal((3, 4, 6, 5))
    k, v = rng.standard_normal((3, h_kv, 9, 5)), rng.standard_normal((3, h_kv, 9, 5))
    mask = rng.random((3, 4, 6, 9)) < 0.8
    mask[..., 0] = True                                      # every query sees a key
    results = []
    for block in (1, 1 << 20):                               # one head per item, then everything in one
        monkeypatch.setattr(attention_ops, "_BLOCK_ELEMENTS", block)
        mm.manual_seed(5)
        results.append(run_with_grads(lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=0.25), [q, k, v], "cpu")[:2])
    (y1, g1), (y2, g2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-14)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def _openblas_or_skip():
    if not host._openblas_thread_functions():
        pytest.skip("NumPy's BLAS is not OpenBLAS here: there is no thread count to set at run time")


def test_single_blas_thread_sets_one_thread_and_restores_the_count_on_exit():
    _openblas_or_skip()
    get = host._openblas_thread_functions()[0]
    before = get()
    try:
        assert host.set_blas_threads(2)
        with host.single_blas_thread():
            assert get() == 1
            with host.single_blas_thread():                  # nested: still one, restored only by the outer
                assert get() == 1
            assert get() == 1
        assert get() == 2
    finally:
        host.set_blas_threads(before)


def test_attention_gives_the_same_bits_whatever_the_blas_thread_count(rng):
    # Its products run on one BLAS thread inside the op, so the count outside does not reach them
    # (OpenBLAS's 1- and 2-thread kernels round differently). Large enough for OpenBLAS to thread.
    _openblas_or_skip()
    get = host._openblas_thread_functions()[0]
    before = get()
    q, k, v = (rng.standard_normal((2, 2, 160, 64)).astype(np.float32) for _ in range(3))
    results = []
    try:
        for count in (1, 2):
            host.set_blas_threads(count)
            results.append(run_with_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                          [q, k, v], "cpu")[:2])
            assert get() == count                            # the op restored it
    finally:
        host.set_blas_threads(before)
    (y1, g1), (y2, g2) = results
    assert np.array_equal(y1, y2)
    for a, b in zip(g1, g2):
        assert np.array_equal(a, b)
