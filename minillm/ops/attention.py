"""Attention ops: ``scaled_dot_product_attention`` (fused) and ``rope`` (rotary positions).

Scaled dot-product attention (Vaswani et al. 2017), for one head with queries Q (T, D), keys
K (S, D) and values V (S, D):

    S = scale · Q K^T + M          (M: the causal and/or user mask, 0 or -inf / additive)
    A = softmax(S)  row-wise
    O = dropout(A) V

Grouped-query attention (GQA; MHA when H_kv = H, MQA when H_kv = 1): query head h reads key/
value head h // g, g = H / H_kv. Rather than copying K and V g times (``repeat_kv``), the fused
op views the queries as (B, H_kv, g, T, D) and lets the batched matmul broadcast K and V over
the group axis, so nothing is repeated in memory.

Backward (per head, G = dL/dO, A_d = dropout(A), mask m of the dropout):

    dL/dV = A_d^T G,   dL/dA = (G V^T) ⊙ m,   dL/dS = A ⊙ (dL/dA - δ),   δ = rowsum(G ⊙ O)
    dL/dQ = scale · dL/dS K,   dL/dK = scale · dL/dS^T Q

δ = rowsum(dL/dA ⊙ A) equals rowsum(G ⊙ O) (O = A_d V), the FlashAttention identity, which
needs a (T, D) product instead of a second (T, S) one. Saves: Q, K, V and O (graph tensors
anyway), the attention weights A (B, H, T, S) and the dropout mask when p > 0.

The output is written in (B, T, H, D) memory order and returned as a (B, H, T, D) view, so the
usual ``transpose(1, 2).reshape(B, T, C)`` that follows costs no copy.

On a GPU (CuPy arrays, no user mask, no dropout) :class:`ScaledDotProductAttentionCuda` runs
instead: cuBLAS products plus two fused softmax kernels, and it saves no (T, S) weights at all --
only the row log-sum-exp L = m + ln Σ_j e^{s_j - m} (B, H, T); backward recomputes the scores
Q K^T and A = e^{scale·S + M - L} block by block (one more product, as FlashAttention does), so
attention's memory no longer grows with T².
"""
from __future__ import annotations

import math

import numpy as np

from minillm import amp, host
from minillm.autograd import Function
from minillm.backend import (
    cupy_module,
    device_of,
    dropout_keep_mask,
    fusable,
    get_array_module,
    is_host_array,
    module_for_device,
)
from minillm.ops import _cuda, linalg
from minillm.ops import activation as act
from minillm.ops import elementwise as ew
from minillm.ops import shape as sh
from minillm.ops._util import for_rows
from minillm.ops.dropout import dropout
from minillm.ops.lowp.adapter import adapt
from minillm.tensor import Tensor

_mask_cache: dict = {}       # (T, S, dtype, device) -> additive causal mask (T, S); a few entries
_MASK_CACHE_SIZE = 8
_BLOCK_ELEMENTS = 1 << 19    # scores per batch block (2 MiB in float32): cache-sized softmax passes
_HOST_CAUSAL_CHUNK = 64      # causal attention on the host: query chunks of at least this many rows
_HOST_CAUSAL_CHUNKS = 2      # ... and this many at most. Measured on 2 cores: two chunks gained at T = 128
                             # and 256 (3/4 of the square), four lost at T = 256 (products too small)
_HOST_ITEMS = 8              # the host splits the batch into at least this many work items (threads <= 8)
_CUDA_BLOCK_ELEMENTS = 1 << 26   # GPU: scores per batch block (256 MiB in float32) -- few, large products


def causal_mask(t: int, s: int, dtype, device: str = "cpu"):
    """The additive causal mask (T, S): 0 where query i may see key j, -inf elsewhere.

    Aligned bottom-right: query i (of the last T positions) sees keys j <= i + (S - T), which is
    the usual mask when S = T and the right one for a query block that follows S - T cached
    keys. Built once per (T, S, dtype, device) and reused (callers must not modify it).
    """
    key = (t, s, np.dtype(dtype).str, device)
    mask = _mask_cache.get(key)
    if mask is None:
        xp = module_for_device(device)
        rows = xp.arange(t).reshape(t, 1) + (s - t)              # (T, 1) absolute query positions
        cols = xp.arange(s).reshape(1, s)                        # (1, S)
        mask = xp.where(cols <= rows, 0.0, -math.inf).astype(dtype)   # (T, S)
        if len(_mask_cache) >= _MASK_CACHE_SIZE:
            _mask_cache.pop(next(iter(_mask_cache)))
        _mask_cache[key] = mask
    return mask


def _gradient_views(gq, gk, gv, q_shape):
    """dL/dq, dL/dk, dL/dv written in (B, T, heads, D) memory order (so the transposes back to the
    projections copy nothing), returned as (B, heads, T, D) views; None stays None."""
    b, t, h, d = q_shape
    if gq is not None:
        gq = gq.reshape(b, t, h, d).transpose(0, 2, 1, 3)        # (B, H, T, D) view
    if gk is not None:
        gk = gk.transpose(0, 2, 1, 3)                            # (B, Hkv, S, D) view
    if gv is not None:
        gv = gv.transpose(0, 2, 1, 3)                            # (B, Hkv, S, D) view
    return gq, gk, gv


def _masked_softmax_inplace(a, mask) -> None:
    """a <- softmax(a + mask) over the last axis, in place; a is (..., T, S) and mask None or
    broadcastable to it. On the host the (T, S) matrices are split across the threads (a mask of
    more than two dims is applied first, whole); each row's arithmetic does not change."""
    xp = get_array_module(a)
    if mask is not None and mask.ndim > 2:
        a += mask
        mask = None
    t, s = a.shape[-2:]
    # (M, T, S): a view for the C-contiguous blocks the op passes (else one part, a itself)
    matrices = a.reshape(-1, t, s) if a.flags.c_contiguous else a[None]

    def part(start, stop):
        m = matrices[start:stop]
        if mask is not None:
            m += mask
        m -= m.max(axis=-1, keepdims=True)                       # stable: the row max is 0
        xp.exp(m, out=m)
        norm = m.sum(axis=-1, keepdims=True)                     # (m, T, 1)
        m *= xp.reciprocal(norm, out=norm)

    for_rows(part, matrices.shape[0], t * s, a)


def _score_gradient_inplace(gs, att, delta, keep) -> None:
    """gs <- A ⊙ (gs ⊙ keep - δ): dL/dS from gs = dL/dA_d = G V^T (all (..., T, S), δ (..., T, 1),
    keep the dropout mask or None), split across the host threads by (T, S) matrix."""
    t, s = gs.shape[-2:]
    if gs.flags.c_contiguous:                                    # (M, T, S) views; else one part
        g3, a3, d3 = gs.reshape(-1, t, s), att.reshape(-1, t, s), delta.reshape(-1, t, 1)
        k3 = None if keep is None else keep.reshape(-1, t, s)
    else:
        g3, a3, d3, k3 = gs[None], att[None], delta[None], None if keep is None else keep[None]

    def part(start, stop):
        g = g3[start:stop]
        if k3 is not None:
            g *= k3[start:stop]
        g -= d3[start:stop]
        g *= a3[start:stop]

    for_rows(part, g3.shape[0], t * s, gs)


class ScaledDotProductAttention(Function):
    """softmax(scale · Q K^T + M) V with GQA, optional causal/additive mask and dropout.

    Shapes: q (B, H, T, D), k (B, H_kv, S, D), v (B, H_kv, S, D) -> o (B, H, T, D) (a view of a
    (B, T, H, D) buffer). ``mask``: None or an additive float array broadcastable to
    (B, H_kv, g, T, S) (the wrapper prepares it). ``causal``: the mask is exactly the causal mask
    (no user mask), so work above the diagonal may be skipped (below).
    Saves: q, k, v, o, the weights A and the dropout mask (p > 0).

    Both passes run over work items (:meth:`_items`): slices of the batch and key-head axes of
    about ``_BLOCK_ELEMENTS`` scores each, so the several in-place softmax passes touch a slab
    that is still in cache, and backward needs only an item-sized scratch for dL/dS instead of a
    second (B, H, T, S) array. On the host the items are split across the threads
    (:func:`minillm.host.parallel_for`), each item's whole pipeline (products, softmax, products)
    on one thread, with the products on one BLAS thread (:class:`minillm.host.single_blas_thread`):
    a head's products are small (on the project's 2-core machine, 64 x 32 by 32 x 128 at config B),
    too small for OpenBLAS to gain from splitting each one, so running the items side by side
    on their own cores took the op from 48 to 21 ms at config C's shapes, and from 19 to 9 ms at
    B's (forward + backward). The results do not depend on the thread counts: the items do not,
    and every product runs on one BLAS thread whatever the count outside.

    Causal chunks: with the causal mask, queries i0..i1-1 see only the keys before
    kend = i1 + S - T, so the queries are split into chunks of at least ``_HOST_CAUSAL_CHUNK``
    rows and each chunk's products, softmax and gradients stop at its last visible key. A is
    kept per chunk, (B, H_kv, g, i1 - i0, kend) each, so it also takes that much less memory:
    for two chunks, 3/4 of the full square's work and memory. Without the causal
    mask (or for short sequences) there is one chunk, the whole square. dL/dK and dL/dV sum the
    chunks' contributions (in float32, an order of additions that differs from one product).
    """

    def __init__(self, scale: float, mask, dropout_p: float, causal: bool = False):
        self.scale, self.mask, self.dropout_p, self.causal = scale, mask, dropout_p, causal

    def _blocks(self, b: int, per_item: int):
        """Slices of the batch axis holding about _BLOCK_ELEMENTS scores each."""
        size = max(1, min(b, _BLOCK_ELEMENTS // max(per_item, 1)))
        return [slice(i, min(i + size, b)) for i in range(0, b, size)], size

    def _items(self, like, b: int, h_kv: int, g: int, chunks: list) -> list:
        """The work items, ``(rows, heads)`` slices of the batch and key-head axes.

        On the host: items of about ``_BLOCK_ELEMENTS`` scores (a chunk's scores of the item stay
        in cache through the softmax passes), whole batch rows when a row fits; when the work is
        large enough to be split across threads (:meth:`_work` against ``host.MIN_PARALLEL_SIZE``),
        at most ``ceil(B / _HOST_ITEMS)`` rows, so that there are items for every thread (smaller
        work keeps fewer, larger items: each costs a few NumPy calls). The items do not depend on
        the thread count, so neither do the results. Elsewhere (CuPy arrays): blocks of the batch
        axis with every head, the fewest and largest products.
        """
        widest = g * max((i1 - i0) * kend for i0, i1, kend in chunks)        # scores per key head
        if not is_host_array(like):
            return [(rows, slice(None)) for rows in self._blocks(b, h_kv * widest)[0]]
        per_row = h_kv * widest
        if per_row <= _BLOCK_ELEMENTS:
            size = _BLOCK_ELEMENTS // per_row
            if self._work(b * per_row, like.shape[-1]) >= host.MIN_PARALLEL_SIZE:
                size = min(size, -(-b // _HOST_ITEMS))
            size = max(1, min(size, b))
            return [(slice(i, min(i + size, b)), slice(None)) for i in range(0, b, size)]
        heads = max(1, _BLOCK_ELEMENTS // widest)
        return [(slice(i, i + 1), slice(j, min(j + heads, h_kv))) for i in range(b) for j in range(0, h_kv, heads)]

    def _chunks(self, t: int, s: int) -> list:
        """(i0, i1, kend): query chunks and the keys each sees (all of them without the mask)."""
        if not self.causal or t < 2 * _HOST_CAUSAL_CHUNK:
            return [(0, t, s)]
        size = max(_HOST_CAUSAL_CHUNK, -(-t // _HOST_CAUSAL_CHUNKS))
        return [(i0, min(t, i0 + size), min(t, i0 + size) + s - t) for i0 in range(0, t, size)]

    def _mask_block(self, rows: slice):
        mask = self.mask
        if mask is None or mask.ndim < 5 or mask.shape[0] == 1:
            return mask                                          # (T, S) or shared by the batch
        return mask[rows]                                        # a per-batch-element mask

    def _mask_item(self, rows: slice, heads: slice):
        """The mask for one work item: its batch rows and key heads where the mask has them."""
        mask = self.mask
        if mask is None or mask.ndim < 5:
            return mask                                          # (T, S) or None
        return mask[rows if mask.shape[0] > 1 else slice(None), heads if mask.shape[1] > 1 else slice(None)]

    @staticmethod
    def _mask_chunk(mask, i0: int, i1: int, kend: int):
        """The mask's rows i0..i1-1 and columns ..kend-1 (None stays None)."""
        return None if mask is None else mask[..., i0:i1, :kend]

    def forward(self, q, k, v):
        xp = get_array_module(q)
        b, h, t, d = q.shape
        h_kv, s = k.shape[1], k.shape[2]
        g = h // h_kv
        q5 = q.reshape(b, h_kv, g, t, d)                         # (B, Hkv, g, T, D)
        k5 = k.reshape(b, h_kv, 1, s, d)                         # (B, Hkv, 1, S, D)
        v5 = v.reshape(b, h_kv, 1, s, d)                         # (B, Hkv, 1, S, D)
        chunks = self._chunks(t, s)
        att = [xp.empty((b, h_kv, g, i1 - i0, kend), dtype=q.dtype) for i0, i1, kend in chunks]   # A per chunk
        out = xp.empty((b, t, h_kv, g, d), dtype=q.dtype)        # (B, T, Hkv, g, D) memory order
        out5 = out.transpose(0, 2, 3, 1, 4)                      # (B, Hkv, g, T, D) view
        dropped = self.dropout_p > 0.0
        if dropped:   # one (B, Hkv, g, T, S) draw, whatever the chunks: the same mask as ever
            self.keep = dropout_keep_mask((b, h_kv, g, t, s), 1.0 - self.dropout_p, q.dtype, device_of(q))
        items = self._items(q, b, h_kv, g, chunks)

        def run(first, last):                                    # items first..last-1
            for rows, heads in items[first:last]:
                qs = q5[rows, heads] * self.scale                # (b', h', g, T, D) scaled queries
                mask = self._mask_item(rows, heads)
                for (i0, i1, kend), a_chunk in zip(chunks, att):
                    a = a_chunk[rows, heads]                     # (b', h', g, c, kend)
                    xp.matmul(qs[..., i0:i1, :], k5[rows, heads, :, :kend, :].swapaxes(-1, -2), out=a)   # (c, D) @ (D, kend)
                    _masked_softmax_inplace(a, self._mask_chunk(mask, i0, i1, kend))   # softmax(scale·QK^T + M)
                    weights = a * self.keep[rows, heads, :, i0:i1, :kend] if dropped else a
                    xp.matmul(weights, v5[rows, heads, :, :kend, :], out=out5[rows, heads, :, i0:i1, :])   # (c, kend) @ (kend, D)

        self._run_items(run, items, b * h * t * s, q)
        out = out.reshape(b, t, h, d).transpose(0, 2, 1, 3)      # (B, H, T, D) view
        self.q, self.k, self.v, self.att, self.out = q, k, v, att, out
        return out

    @staticmethod
    def _work(scores: int, d: int) -> int:
        """The op's work on ``scores`` scores in the units of :func:`minillm.host.parallel_for`
        (elements of one elementwise pass): each score takes a D-long dot product in each of
        the op's products (two forward, four backward) and a few softmax passes, about D
        pass-elements per pass of the op (a multiply-add runs several times faster than one
        element of a NumPy pass)."""
        return scores * max(d, 1)

    def _run_items(self, run, items: list, scores: int, like) -> None:
        """``run(first, last)`` over the items (``scores`` in all): on the host split across the
        threads, each part's small products on one BLAS thread (see
        :class:`minillm.host.single_blas_thread`), so the parts' products run side by side on their
        own cores; elsewhere one call."""
        if not is_host_array(like):
            run(0, len(items))
            return
        with host.single_blas_thread():
            for_rows(run, len(items), self._work(scores, like.shape[-1]) // max(len(items), 1), like)

    def backward(self, gy):
        # dV = A_d^T G;  dS = A ⊙ ((G V^T) ⊙ m - rowsum(G ⊙ O));  dQ = scale dS K;  dK = scale dS^T Q
        xp = get_array_module(gy)
        q, k, v, att = self.q, self.k, self.v, self.att
        b, h, t, d = q.shape
        h_kv, s = k.shape[1], k.shape[2]
        g = h // h_kv
        needs = self.needs_input_grad
        dropped = self.dropout_p > 0.0
        gy5 = gy.reshape(b, h_kv, g, t, d)                       # (B, Hkv, g, T, D)
        q5 = q.reshape(b, h_kv, g, t, d)                         # (B, Hkv, g, T, D)
        k5 = k.reshape(b, h_kv, 1, s, d)                         # (B, Hkv, 1, S, D)
        v5 = v.reshape(b, h_kv, 1, s, d)
        out5 = self.out.reshape(b, h_kv, g, t, d)                # (B, Hkv, g, T, D) view
        # The gradients are written in (B, T, heads, D) memory order, like the output, so the
        # transpose/reshape backward steps that lead to the q/k/v projections copy nothing.
        gq = xp.empty((b, t, h_kv, g, d), dtype=gy.dtype) if needs[0] else None   # (B, T, Hkv, g, D)
        gk = xp.empty((b, s, h_kv, d), dtype=gy.dtype) if needs[1] else None      # (B, S, Hkv, D)
        gv = xp.empty((b, s, h_kv, d), dtype=gy.dtype) if needs[2] else None      # (B, S, Hkv, D)
        gq5 = gq.transpose(0, 2, 3, 1, 4) if needs[0] else None  # (B, Hkv, g, T, D) view
        gk4 = gk.transpose(0, 2, 1, 3) if needs[1] else None     # (B, Hkv, S, D) view
        gv4 = gv.transpose(0, 2, 1, 3) if needs[2] else None     # (B, Hkv, S, D) view
        chunks = self._chunks(t, s)
        items = self._items(gy, b, h_kv, g, chunks)
        # The last chunk sees every key, so it writes dK and dV whole; the others add to a prefix.
        order = list(reversed(range(len(chunks))))

        def run(first, last):                                    # items first..last-1
            for rows, heads in items[first:last]:
                gy_i, q_i = gy5[rows, heads], q5[rows, heads]    # (b', h', g, T, D)
                n, hk = q_i.shape[:2]
                delta = xp.einsum("bhgtd,bhgtd->bhgt", gy_i, out5[rows, heads])[..., None]   # rowsum(G ⊙ O)
                for position, index in enumerate(order):
                    i0, i1, kend = chunks[index]
                    c = i1 - i0
                    a = att[index][rows, heads]                  # (b', h', g, c, kend)
                    gs = xp.empty((n, hk, g, c, kend), dtype=gy.dtype)   # dL/dS of the chunk
                    xp.matmul(gy_i[..., i0:i1, :], v5[rows, heads, :, :kend, :].swapaxes(-1, -2), out=gs)   # G V^T
                    _score_gradient_inplace(gs, a, delta[..., i0:i1, :],
                                            self.keep[rows, heads, :, i0:i1, :kend] if dropped else None)   # dL/dS
                    if needs[0]:
                        xp.matmul(gs, k5[rows, heads, :, :kend, :], out=gq5[rows, heads, :, i0:i1, :])   # (c, kend) @ (kend, D)
                    gs_flat = gs.reshape(n, hk, g * c, kend)     # (b', h', g·c, kend)
                    if needs[1]:
                        q_flat = q_i[..., i0:i1, :].reshape(n, hk, g * c, d)   # (b', h', g·c, D)
                        _write_or_add(xp, gs_flat.swapaxes(-1, -2), q_flat, gk4[rows, heads, :kend, :], position == 0)
                    if needs[2]:
                        weights = a * self.keep[rows, heads, :, i0:i1, :kend] if dropped else a
                        gy_flat = gy_i[..., i0:i1, :].reshape(n, hk, g * c, d)   # (b', h', g·c, D)
                        _write_or_add(xp, weights.reshape(n, hk, g * c, kend).swapaxes(-1, -2), gy_flat,
                                      gv4[rows, heads, :kend, :], position == 0)
                if needs[0]:
                    gq5[rows, heads] *= self.scale
                if needs[1]:
                    gk4[rows, heads] *= self.scale

        self._run_items(run, items, b * h * t * s, gy)
        return _gradient_views(gq, gk, gv, (b, t, h, d))

    def flops(self):
        """For the profiler: what the products compute -- each query chunk's stops at its last
        visible key (the full square without the causal mask, or with one chunk), 2·B·H·c·kend·D
        per product over a chunk. Forward: Q K^T and A V; backward: G V^T always, then dL/dQ,
        dL/dK, dL/dV where wanted (softmax and its gradient are not counted)."""
        b, h, t, d = self.q.shape
        product = 2 * b * h * d * sum((i1 - i0) * kend for i0, i1, kend in self._chunks(t, self.k.shape[2]))
        return 2 * product, product * (1 + sum(self.needs_input_grad))


def _write_or_add(xp, a, b, out, write: bool) -> None:
    """out = a @ b (write) or out += a @ b: a chunk's share of dL/dK or dL/dV."""
    if write:
        xp.matmul(a, b, out=out)
    else:
        out += xp.matmul(a, b)


class ScaledDotProductAttentionCuda(Function):
    """Attention on a GPU without stored weights: softmax(scale · Q K^T + causal) V with GQA.

    Forward, per block of the batch and per chunk of queries: S = Q K^T (cuBLAS), one kernel turns
    each row of S into A = softmax(scale · S + M) in place and writes L = log Σ e^{scale·S + M}
    (the row's log-sum-exp), then O = A V. Backward, per block and chunk: S = Q K^T again and
    dL/dA = G V^T, then one kernel rebuilds A = e^{scale·S + M - L}, computes δ = Σ_j dL/dA_j A_j
    and writes dL/d(QK^T) = scale · A ⊙ (dL/dA - δ) and A in place; then dQ = dS K, and
    dK^T = Q^T dS, dV^T = G^T A (written this way round, the (T, S) matrices enter the products
    as they are: no transposed copy of them is ever made), summed over the chunks in float32.

    Causal chunks: with the causal mask, queries i0..i1-1 see only the keys before i1 + S - T, so
    the queries are split into up to ``_CAUSAL_CHUNKS`` chunks and each chunk's products stop at
    its last visible key: about 5/8 of the full square's work and memory traffic for 4 chunks.

    Under ``amp.autocast`` the products take the format's operands (float16 GEMMs; bfloat16-rounded
    float32 for bf16, see ``LowPrecisionFormat.batched_operand``), with float32 accumulation, and the
    kernels compute in float32 (A and dS rounded to the format before their products), as the
    array path's :class:`minillm.ops.lowp.attention.ScaledDotProductAttentionLowPrecision`; the
    scores come out of the GEMM in the format (float16; bf16-rounded float32 products for bf16).

    Shapes: q (B, H, T, D), k, v (B, H_kv, S, D), T <= S -> o (B, H, T, D), a view of a (B, T, H, D)
    buffer; the causal mask is aligned bottom-right (query i sees keys j <= i + S - T).
    Saves: q, k, v (graph arrays anyway) and L (B, H, T) float32.
    """

    def __init__(self, scale: float, causal: bool, fmt=None):
        self.scale, self.causal, self.fmt = scale, causal, fmt

    def _operand(self, x):
        return x if self.fmt is None else self.fmt.batched_operand(x)

    def _storage(self, x):
        return x if self.fmt is None else self.fmt.to_storage(x)

    def _chunks(self, t: int, s: int) -> list:
        """(i0, i1, kend): query chunks and the keys they can see (all of them without the mask)."""
        if not self.causal or t < 2 * _CAUSAL_MIN_CHUNK:
            return [(0, t, s)]
        size = -(-t // min(_CAUSAL_CHUNKS, t // _CAUSAL_MIN_CHUNK))
        return [(i0, min(t, i0 + size), min(s, min(t, i0 + size) + s - t)) for i0 in range(0, t, size)]

    def _blocks(self, b: int, per_item: int) -> list:
        size = max(1, min(b, _CUDA_BLOCK_ELEMENTS // max(per_item, 1)))
        return [slice(i, min(i + size, b)) for i in range(0, b, size)]

    def _launch(self, name: str, scores, grads, lse, queries: int, offset: int) -> None:
        """Run the forward (grads None) or backward softmax kernel over the rows of ``scores``
        (..., width): row r belongs to query r % queries, which sees keys j <= that + offset."""
        launch_softmax_kernel(name, scores, grads, lse, queries, offset, self.scale, self.causal,
                              self.fmt is not None and self.fmt.name == "bf16")

    def forward(self, q, k, v):
        cp = cupy_module()
        b, h, t, d = q.shape
        h_kv, s = k.shape[1], k.shape[2]
        g = h // h_kv
        chunks = self._chunks(t, s)
        out = cp.empty((b, t, h_kv, g, d), dtype=q.dtype)        # (B, T, Hkv, g, D) memory order
        lse = cp.empty((b, h_kv, g, t), dtype=cp.float32)        # (B, Hkv, g, T)
        q5 = q.reshape(b, h_kv, g, t, d)                         # a view when q is (B, T, H, D) memory
        widest = max((i1 - i0) * kend for i0, i1, kend in chunks)
        for rows in self._blocks(b, h * widest):
            n = rows.stop - rows.start
            for i0, i1, kend in chunks:
                c = i1 - i0
                qc = self._operand(q5[rows, :, :, i0:i1].reshape(n, h_kv, g * c, d))   # a group's queries stacked
                scores = cp.matmul(qc, self._operand(k[rows, :, :kend]).swapaxes(-1, -2))   # (n, Hkv, g·c, kend)
                part = cp.empty((n, h_kv, g, c), dtype=cp.float32)
                self._launch("attention_softmax_forward", scores, None, part, c, i0 + s - t)   # -> A in place
                lse[rows, :, :, i0:i1] = part
                o = self._storage(cp.matmul(scores, self._operand(v[rows, :, :kend])))   # (n, Hkv, g·c, D)
                out[rows, i0:i1] = o.reshape(n, h_kv, g, c, d).transpose(0, 3, 1, 2, 4)
        self.q, self.k, self.v, self.lse = q, k, v, lse
        return out.reshape(b, t, h, d).transpose(0, 2, 1, 3)     # (B, H, T, D) view

    def backward(self, gy):
        # dV^T = G^T A;  dS = scale · A ⊙ (G V^T - δ);  dQ = dS K;  dK^T = Q^T dS   (δ = rowsum(G V^T ⊙ A))
        cp = cupy_module()
        q, k, v = self.q, self.k, self.v
        b, h, t, d = q.shape
        h_kv, s = k.shape[1], k.shape[2]
        g = h // h_kv
        needs = self.needs_input_grad
        chunks = self._chunks(t, s)
        q5, gy5 = q.reshape(b, h_kv, g, t, d), gy.reshape(b, h_kv, g, t, d)
        gq = cp.empty((b, t, h_kv, g, d), dtype=q.dtype) if needs[0] else None   # (B, T, Hkv, g, D)
        gk = cp.empty((b, s, h_kv, d), dtype=k.dtype) if needs[1] else None      # (B, S, Hkv, D)
        gv = cp.empty((b, s, h_kv, d), dtype=v.dtype) if needs[2] else None      # (B, S, Hkv, D)
        widest = max((i1 - i0) * kend for i0, i1, kend in chunks)
        for rows in self._blocks(b, h * widest):
            n = rows.stop - rows.start
            # dK^T and dV^T (n, Hkv, D, S), summed over the query chunks in float32
            gk_t = cp.zeros((n, h_kv, d, s), dtype=cp.float32) if needs[1] else None
            gv_t = cp.zeros((n, h_kv, d, s), dtype=cp.float32) if needs[2] else None
            for i0, i1, kend in chunks:
                c = i1 - i0
                qc = self._operand(q5[rows, :, :, i0:i1].reshape(n, h_kv, g * c, d))   # (n, Hkv, g·c, D)
                gyc = self._operand(gy5[rows, :, :, i0:i1].reshape(n, h_kv, g * c, d))
                kc = self._operand(k[rows, :, :kend])                                 # (n, Hkv, kend, D)
                scores = cp.matmul(qc, kc.swapaxes(-1, -2))                           # (n, Hkv, g·c, kend) recomputed
                grads = cp.matmul(gyc, self._operand(v[rows, :, :kend]).swapaxes(-1, -2))   # dL/dA = G V^T
                part = cp.ascontiguousarray(self.lse[rows, :, :, i0:i1])              # (n, Hkv, g, c)
                self._launch("attention_softmax_backward", scores, grads, part, c, i0 + s - t)   # -> A, dS
                if needs[0]:
                    dq = self._storage(cp.matmul(grads, kc))                         # (n, Hkv, g·c, D)
                    gq[rows, i0:i1] = dq.reshape(n, h_kv, g, c, d).transpose(0, 3, 1, 2, 4)
                if needs[1]:                                                          # (n, Hkv, D, kend)
                    gk_t[..., :kend] += cp.matmul(qc.swapaxes(-1, -2), grads).astype(cp.float32, copy=False)
                if needs[2]:
                    gv_t[..., :kend] += cp.matmul(gyc.swapaxes(-1, -2), scores).astype(cp.float32, copy=False)
            if needs[1]:
                gk[rows] = self._storage(gk_t).transpose(0, 3, 1, 2)             # (n, S, Hkv, D)
            if needs[2]:
                gv[rows] = self._storage(gv_t).transpose(0, 3, 1, 2)
        return _gradient_views(gq, gk, gv, (b, t, h, d))

    def flops(self):
        """For the profiler: what the chunked products compute -- with the causal mask each query
        chunk stops at its last visible key (about 5/8 of the T·S square for 4 chunks, more than
        the mask's half), without it the full square; each product over a chunk is 2·B·H·c·kend·D.
        Forward: Q K^T and A V; backward: Q K^T again and G V^T, then dL/dQ, dL/dK, dL/dV where
        wanted (the softmax kernels are not counted)."""
        b, h, t, d = self.q.shape
        product = 2 * b * h * d * sum((i1 - i0) * kend for i0, i1, kend in self._chunks(t, self.k.shape[2]))
        return 2 * product, product * (2 + sum(self.needs_input_grad))


_CAUSAL_CHUNKS = 4           # query chunks of causal attention on the GPU (see ScaledDotProductAttentionCuda)
_CAUSAL_MIN_CHUNK = 128      # ... of at least this many queries (shorter sequences: one chunk)
_CACHED_ITEMS = 8            # the register-cached softmax kernels hold 8 values of a row per thread


def launch_softmax_kernel(name: str, scores, grads, lse, queries: int, offset: int, scale: float, causal: bool,
                          round_bf16: bool) -> None:
    """Run an attention softmax kernel over the rows of ``scores`` (..., width), in place.

    Rows of up to 8192 keys use the register-cached kernels (each value read once, written once:
    8 per thread, up to 1024 threads); longer rows the looping ones (they read a row again
    instead of keeping it). Row r belongs to query r % queries, which sees keys j <= that + offset.
    """
    width = scores.shape[-1]
    rows = scores.size // width if width else 0
    if rows == 0 or width == 0:
        return
    cached = width <= _CACHED_ITEMS * 1024
    if cached:
        per_thread = -(-width // _CACHED_ITEMS)                  # threads needed, rounded up to whole warps
        threads = 32 * -(-per_thread // 32)
    else:
        threads = _cuda.row_threads(width)
    kernel = _ATTENTION_KERNELS.get(name + ("_cached" if cached else ""), X=scores.dtype,
                                    G=(grads if grads is not None else scores).dtype)
    args = (scores,) + ((grads,) if grads is not None else ()) + (
        lse, _cuda.i64(width), _cuda.i64(queries), _cuda.i64(offset), _cuda.f32(scale), np.int32(causal),
        np.int32(round_bf16))
    kernel((rows,), (threads,), args)


_ATTENTION_KERNELS = _cuda.RowKernels(r"""
// Row r of the scores (S values) belongs to query i = r % T; with the causal mask it sees the keys
// j < limit = i + offset + 1 (offset = S - T for a whole sequence), the others get weight 0.
__device__ __forceinline__ long long visible_keys(long long row, long long width, long long queries,
                                                  long long offset, int causal) {
    if (!causal) return width;
    long long limit = row % queries + offset + 1;
    return limit < width ? limit : width;
}

// In place: scores (q k^T) -> A = softmax(scale * scores + mask); lse[row] = log sum exp.
extern "C" __global__ void attention_softmax_forward(
        X_T* scores, float* lse, long long width, long long queries, long long offset, float scale,
        int causal, int round_bf16) {
    __shared__ float scratch[32];
    long long row = blockIdx.x, base = row * width;
    long long limit = visible_keys(row, width, queries, offset, causal);
    float m = MINILLM_NEG_INF;
    for (long long j = threadIdx.x; j < limit; j += blockDim.x) m = fmaxf(m, LOAD_X(scores, base + j) * scale);
    m = minillm_block_max(m, scratch);
    float total = 0.0f;
    for (long long j = threadIdx.x; j < limit; j += blockDim.x) total += expf(LOAD_X(scores, base + j) * scale - m);
    total = minillm_block_sum(total, scratch);
    float inverse = 1.0f / total;
    for (long long j = threadIdx.x; j < width; j += blockDim.x) {
        float a = j < limit ? expf(LOAD_X(scores, base + j) * scale - m) * inverse : 0.0f;
        if (round_bf16) a = minillm_round_bf16(a);
        STORE_X(scores, base + j, a);
    }
    if (threadIdx.x == 0) lse[row] = m + logf(total);
}

// In place: scores (q k^T, recomputed) -> A = exp(scale * scores + mask - lse) and
// grads (dL/dA) -> dL/d(q k^T) = scale * A * (dL/dA - delta), delta = sum_j dL/dA_j A_j.
extern "C" __global__ void attention_softmax_backward(
        X_T* scores, G_T* grads, const float* lse, long long width, long long queries, long long offset,
        float scale, int causal, int round_bf16) {
    __shared__ float scratch[32];
    long long row = blockIdx.x, base = row * width;
    long long limit = visible_keys(row, width, queries, offset, causal);
    float l = lse[row];
    float delta = 0.0f;
    for (long long j = threadIdx.x; j < limit; j += blockDim.x)
        delta += expf(LOAD_X(scores, base + j) * scale - l) * LOAD_G(grads, base + j);
    delta = minillm_block_sum(delta, scratch);
    for (long long j = threadIdx.x; j < width; j += blockDim.x) {
        float a = 0.0f, ds = 0.0f;
        if (j < limit) {
            a = expf(LOAD_X(scores, base + j) * scale - l);
            ds = scale * a * (LOAD_G(grads, base + j) - delta);
        }
        if (round_bf16) {
            a = minillm_round_bf16(a);
            ds = minillm_round_bf16(ds);
        }
        STORE_X(scores, base + j, a);
        STORE_G(grads, base + j, ds);
    }
}

// The same two kernels for rows of at most 8 * blockDim.x values: each thread keeps its 8 values
// in registers, so every value is read once and written once.
#define CACHED_ITEMS 8
extern "C" __global__ void attention_softmax_forward_cached(
        X_T* scores, float* lse, long long width, long long queries, long long offset, float scale,
        int causal, int round_bf16) {
    __shared__ float scratch[32];
    long long row = blockIdx.x, base = row * width;
    long long limit = visible_keys(row, width, queries, offset, causal);
    float values[CACHED_ITEMS];
    float m = MINILLM_NEG_INF;
#pragma unroll
    for (int item = 0; item < CACHED_ITEMS; ++item) {
        long long j = threadIdx.x + (long long)item * blockDim.x;
        values[item] = j < limit ? LOAD_X(scores, base + j) * scale : MINILLM_NEG_INF;
        m = fmaxf(m, values[item]);
    }
    m = minillm_block_max(m, scratch);
    float total = 0.0f;
#pragma unroll
    for (int item = 0; item < CACHED_ITEMS; ++item) {
        long long j = threadIdx.x + (long long)item * blockDim.x;
        values[item] = j < limit ? expf(values[item] - m) : 0.0f;
        total += values[item];
    }
    total = minillm_block_sum(total, scratch);
    float inverse = 1.0f / total;
#pragma unroll
    for (int item = 0; item < CACHED_ITEMS; ++item) {
        long long j = threadIdx.x + (long long)item * blockDim.x;
        if (j < width) {
            float a = values[item] * inverse;
            if (round_bf16) a = minillm_round_bf16(a);
            STORE_X(scores, base + j, a);
        }
    }
    if (threadIdx.x == 0) lse[row] = m + logf(total);
}

extern "C" __global__ void attention_softmax_backward_cached(
        X_T* scores, G_T* grads, const float* lse, long long width, long long queries, long long offset,
        float scale, int causal, int round_bf16) {
    __shared__ float scratch[32];
    long long row = blockIdx.x, base = row * width;
    long long limit = visible_keys(row, width, queries, offset, causal);
    float l = lse[row];
    float a[CACHED_ITEMS], da[CACHED_ITEMS];
    float delta = 0.0f;
#pragma unroll
    for (int item = 0; item < CACHED_ITEMS; ++item) {
        long long j = threadIdx.x + (long long)item * blockDim.x;
        a[item] = j < limit ? expf(LOAD_X(scores, base + j) * scale - l) : 0.0f;
        da[item] = j < limit ? LOAD_G(grads, base + j) : 0.0f;
        delta += a[item] * da[item];
    }
    delta = minillm_block_sum(delta, scratch);
#pragma unroll
    for (int item = 0; item < CACHED_ITEMS; ++item) {
        long long j = threadIdx.x + (long long)item * blockDim.x;
        if (j < width) {
            float weight = a[item], ds = scale * a[item] * (da[item] - delta);
            if (round_bf16) {
                weight = minillm_round_bf16(weight);
                ds = minillm_round_bf16(ds);
            }
            STORE_X(scores, base + j, weight);
            STORE_G(grads, base + j, ds);
        }
    }
}
""", ("X", "G"))


def _prepare_mask(attn_mask, is_causal: bool, q: Tensor, k: Tensor, dtype=None):
    """Combine ``is_causal`` and ``attn_mask`` into one additive array broadcastable to
    (B, H_kv, g, T, S), or None (in ``dtype``, default q's)."""
    b, h, t, _ = q.shape
    h_kv, s = k.shape[1], k.shape[2]
    dtype, device = q.dtype if dtype is None else dtype, q.device
    mask = causal_mask(t, s, dtype, device) if is_causal else None     # (T, S)
    if attn_mask is None:
        return mask
    array = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
    if not hasattr(array, "dtype") or array.dtype.kind not in "bf":
        raise TypeError(f"scaled_dot_product_attention: attn_mask must be a boolean or floating "
                        f"array, got {getattr(array, 'dtype', type(attn_mask).__name__)}")
    if array.ndim > 4:
        raise ValueError(f"scaled_dot_product_attention: attn_mask has shape {tuple(array.shape)}; "
                         "expected at most 4 dims, broadcastable to (B, H, T, S)")
    shape4 = (1,) * (4 - array.ndim) + tuple(array.shape)
    target = (b, h, t, s)
    if any(m not in (1, want) for m, want in zip(shape4, target)):
        raise ValueError(f"scaled_dot_product_attention: attn_mask has shape {tuple(array.shape)}, "
                         f"which does not broadcast to (B, H, T, S) = {target}")
    xp = get_array_module(array)
    if device_of(array) != device:
        raise ValueError(f"scaled_dot_product_attention: attn_mask is on {device_of(array)!r} but q "
                         f"is on {device!r}; move it first")
    if array.dtype.kind == "b":                                  # True = attend (PyTorch's meaning)
        array = xp.where(array, 0.0, -math.inf).astype(dtype)
    else:
        array = array.astype(dtype, copy=False)
    array = array.reshape(shape4)                                # (b|1, h|1, T|1, S|1)
    if shape4[1] == h and h != 1:
        array = array.reshape(shape4[0], h_kv, h // h_kv, shape4[2], shape4[3])   # split heads
    else:
        array = array.reshape(shape4[0], 1, 1, shape4[2], shape4[3])
    return array if mask is None else array + mask


def _check_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, op: str) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{op}: {name} has shape {x.shape}; expected 4 dims (B, heads, T, D)")
        if x.dtype != q.dtype:
            raise TypeError(f"{op}: {name} has dtype {x.dtype} but q has {q.dtype}")
    b, h, _, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"{op}: shapes q {q.shape}, k {k.shape}, v {v.shape} do not match; expected "
                         "k and v of shape (B, H_kv, S, D) with q's B and D")
    if h % k.shape[1]:
        raise ValueError(f"{op}: q has {h} heads and k/v have {k.shape[1]}; expected the query heads "
                         "to be a multiple of the key/value heads (grouped-query attention)")
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p={dropout_p!r}; expected a probability in [0, 1)")


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask=None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None) -> Tensor:
    """Attention softmax(q k^T · scale + mask) v, fused (see :class:`ScaledDotProductAttention`).

    Args:
        q: (B, H, T, D); k, v: (B, H_kv, S, D) with H a multiple of H_kv (GQA/MQA).
        attn_mask: None, a boolean array (True = may attend, as in PyTorch) or an additive float
            array, broadcastable to (B, H, T, S).
        dropout_p: dropout on the attention weights (pass 0.0 in eval mode).
        is_causal: mask future keys (bottom-right aligned when T < S, see :func:`causal_mask`).
        scale: defaults to 1/sqrt(D).
    A row whose keys are all masked has no defined softmax and comes out as NaN.
    Under ``amp.autocast``: :class:`minillm.ops.lowp.attention.ScaledDotProductAttentionLowPrecision`
    (q, k, v are cast to the format's storage dtype first, e.g. float32 keys of a KV cache).
    """
    route = amp.dispatch("scaled_dot_product_attention", q)
    fmt = route.fmt if route.kind == amp.LOW else None
    if fmt is not None:
        q, k, v = (ew.cast(x, fmt.storage_dtype) if isinstance(x, Tensor) else x for x in (q, k, v))
    _check_attention(q, k, v, dropout_p, "scaled_dot_product_attention")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if attn_mask is None and dropout_p == 0.0 and q.shape[2] <= k.shape[2] and fusable(q.data, k.data, v.data):
        return ScaledDotProductAttentionCuda(scale, bool(is_causal), fmt).apply(q, k, v)
    if fmt is not None:
        # imported here: the low-precision op subclasses ScaledDotProductAttention (defined above)
        from minillm.ops.lowp.attention import ScaledDotProductAttentionLowPrecision  # noqa: PLC0415

        mask = _prepare_mask(attn_mask, is_causal, q, k, dtype=np.float32)
        return ScaledDotProductAttentionLowPrecision(scale, mask, float(dropout_p), fmt).apply(q, k, v)
    mask = _prepare_mask(attn_mask, is_causal, q, k)
    causal = bool(is_causal) and attn_mask is None and q.shape[2] <= k.shape[2]
    return ScaledDotProductAttention(scale, mask, float(dropout_p), causal).apply(q, k, v)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, H_kv, S, D) -> (B, H_kv·n_rep, S, D), each key/value head repeated n_rep times in a
    row (head h of the result is head h // n_rep of the input). Built from broadcast_to and
    reshape, so its gradient sums the copies."""
    if n_rep == 1:
        return x
    b, h_kv, s, d = x.shape
    x5 = sh.reshape(x, (b, h_kv, 1, s, d))                       # (B, Hkv, 1, S, D)
    x5 = sh.broadcast_to(x5, (b, h_kv, n_rep, s, d))             # (B, Hkv, n_rep, S, D)
    return sh.reshape(x5, (b, h_kv * n_rep, s, d))               # (B, H, S, D)


def scaled_dot_product_attention_composed(q: Tensor, k: Tensor, v: Tensor, attn_mask=None,
                                          dropout_p: float = 0.0, is_causal: bool = False,
                                          scale: float | None = None) -> Tensor:
    """The reference twin from primitives: repeat_kv, matmul, softmax_composed, dropout."""
    _check_attention(q, k, v, dropout_p, "scaled_dot_product_attention_composed")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)              # (B, H, S, D)
    scores = ew.mul(linalg.matmul(q, sh.swapaxes(k, -1, -2)), scale)   # (B, H, T, S)
    mask = _prepare_mask(attn_mask, is_causal, q, k)             # k now has H heads: no split
    if mask is not None:
        b, h, t, s = scores.shape
        if mask.ndim == 5:
            mask = mask.reshape(mask.shape[0], mask.shape[1] * mask.shape[2], t, s)
        scores = ew.add(scores, Tensor._from_op(mask, None))
    weights = act.softmax_composed(scores, axis=-1)
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p, training=True)
    return linalg.matmul(weights, v)                             # (B, H, T, S) @ (B, H, S, D) -> (B, H, T, D)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------------------------
def rope_tables(head_dim: int, max_positions: int, theta: float = 10000.0, dtype=np.float32,
                device: str = "cpu"):
    """cos and sin tables (max_positions, head_dim/2) for :func:`rope`.

    Pair i rotates by angle p · θ^(-2i/D) at position p (computed in float64, then cast).
    """
    if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"rope_tables: head_dim={head_dim!r}; expected a positive even int")
    if not isinstance(max_positions, int) or max_positions <= 0:
        raise ValueError(f"rope_tables: max_positions={max_positions!r}; expected a positive int")
    if not isinstance(theta, (int, float)) or theta <= 1.0:
        raise ValueError(f"rope_tables: theta={theta!r}; expected a number > 1")
    xp = module_for_device(device)
    exponents = xp.arange(0, head_dim, 2, dtype=np.float64) / head_dim      # (D/2,)
    inv_freq = 1.0 / (float(theta) ** exponents)                             # (D/2,)
    positions = xp.arange(max_positions, dtype=np.float64).reshape(-1, 1)   # (P, 1)
    angles = positions * inv_freq.reshape(1, -1)                             # (P, D/2)
    return xp.cos(angles).astype(dtype), xp.sin(angles).astype(dtype)


class Rope(Function):
    """Rotary position embedding (Su et al. 2021), half-split layout (GPT-NeoX, HF Llama): the
    pair (x_i, x_{i+D/2}) at position p is rotated by the angle p·θ_i:

        y_i       = x_i cos - x_{i+D/2} sin
        y_{i+D/2} = x_{i+D/2} cos + x_i sin

    Shapes: x (..., T, D), cos and sin (T, D/2) -> y (..., T, D), in x's memory order (so a
    (B, H, T, D) view of a (B, T, H, D) projection stays free to transpose back).
    Saves: cos and sin (the rows used; constants).
    """

    def __init__(self, cos, sin):
        self.cos, self.sin = cos, sin

    def forward(self, x):
        xp = get_array_module(x)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]                    # (..., T, D/2) each
        y = xp.empty_like(x)                                     # x's memory order (often B, T, H, D)
        y1, y2 = y[..., :half], y[..., half:]
        scratch = x2 * self.sin
        xp.multiply(x1, self.cos, out=y1)
        y1 -= scratch
        xp.multiply(x1, self.sin, out=scratch)
        xp.multiply(x2, self.cos, out=y2)
        y2 += scratch
        return y

    def backward(self, gy):
        # the rotation's transpose (angle -p·θ_i):
        #   dL/dx_i = g_i cos + g_{i+D/2} sin,  dL/dx_{i+D/2} = g_{i+D/2} cos - g_i sin
        xp = get_array_module(gy)
        half = gy.shape[-1] // 2
        g1, g2 = gy[..., :half], gy[..., half:]
        gx = xp.empty_like(gy)                                   # gy's memory order
        gx1, gx2 = gx[..., :half], gx[..., half:]
        scratch = g2 * self.sin
        xp.multiply(g1, self.cos, out=gx1)
        gx1 += scratch
        xp.multiply(g1, self.sin, out=scratch)
        xp.multiply(g2, self.cos, out=gx2)
        gx2 -= scratch
        return gx


def _rope_rows(x: Tensor, cos, sin, position_offset: int, op: str):
    cos = cos.data if isinstance(cos, Tensor) else cos
    sin = sin.data if isinstance(sin, Tensor) else sin
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"{op}: x must be a Tensor of shape (..., T, D), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    t, d = x.shape[-2], x.shape[-1]
    if d % 2:
        raise ValueError(f"{op}: the head size D={d} is odd; rotary embedding needs an even D")
    if cos.ndim != 2 or cos.shape != sin.shape or cos.shape[1] != d // 2:
        raise ValueError(f"{op}: cos/sin tables have shapes {tuple(cos.shape)} and "
                         f"{tuple(sin.shape)}; expected (positions, {d // 2}) for head size {d}")
    if not isinstance(position_offset, int) or position_offset < 0:
        raise ValueError(f"{op}: position_offset={position_offset!r}; expected an int >= 0")
    if position_offset + t > cos.shape[0]:
        raise ValueError(f"{op}: positions {position_offset}..{position_offset + t - 1} exceed the "
                         f"table of {cos.shape[0]} positions; build longer tables (rope_tables)")
    if cos.dtype != x.dtype and not (x.dtype == np.float16 and cos.dtype == np.float32):
        raise TypeError(f"{op}: tables have dtype {cos.dtype} but x has {x.dtype}; expected equal "
                        "(or float16 x with float32 tables)")
    rows = slice(position_offset, position_offset + t)
    return cos[rows], sin[rows]                                  # (T, D/2) each


def rope(x: Tensor, cos, sin, position_offset: int = 0) -> Tensor:
    """Apply rotary embeddings to x (..., T, D) at positions position_offset..+T-1, using rows
    of the tables from :func:`rope_tables` (see :class:`Rope`)."""
    c, s = _rope_rows(x, cos, sin, position_offset, "rope")
    return adapt(Rope(c, s), amp.dispatch("rope", x)).apply(x)  # a float16 x: rotated in float32


def rope_composed(x: Tensor, cos, sin, position_offset: int = 0) -> Tensor:
    """rope from primitives: x · cos + rotate_half(x) · sin, rotate_half(x) = (-x2, x1)."""
    c, s = _rope_rows(x, cos, sin, position_offset, "rope_composed")
    x1, x2 = sh.split(x, 2, axis=-1)
    c_full = Tensor._from_op(get_array_module(c).concatenate([c, c], axis=-1), None)   # (T, D)
    s_full = Tensor._from_op(get_array_module(s).concatenate([s, s], axis=-1), None)
    rotated = sh.concatenate([ew.neg(x2), x1], axis=-1)
    return ew.add(ew.mul(x, c_full), ew.mul(rotated, s_full))
