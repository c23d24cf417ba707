"""``scaled_dot_product_attention`` under ``amp.autocast`` (the array path; the GPU's
:class:`minillm.ops.attention.ScaledDotProductAttentionCuda` takes the format itself): the
low-precision algorithm of :class:`minillm.ops.attention.ScaledDotProductAttention` (see
:mod:`minillm.ops.lowp` and the policy in :mod:`minillm.amp`)."""
from __future__ import annotations

import numpy as np

from minillm.backend import device_of, dropout_keep_mask, get_array_module
from minillm.ops.attention import ScaledDotProductAttention, _gradient_views


class ScaledDotProductAttentionLowPrecision(ScaledDotProductAttention):
    """:class:`ScaledDotProductAttention` in a low-precision format (``amp.autocast``).

    Q, K, V, the weights A, dL/dO and dL/dS enter the four matrix products as the format's values
    (float32 sums: see :mod:`minillm.amp`); the scale, the mask, softmax and the row sums δ run
    in float32. The output and the input gradients are in the format's storage dtype.

    Shapes: as the float32 op; q, k, v arrive in the format's storage dtype (the wrapper casts).
    Saves: q, k, v, o (graph arrays in the format), A *packed* (float16, or bfloat16 bits for bf16:
    half the bytes of the float32 op's A) and the dropout mask as float16. The scores are computed
    block by block in a float32 scratch, so no float32 (B, H, T, S) array is ever allocated.
    """

    def __init__(self, scale: float, mask, dropout_p: float, fmt):
        super().__init__(scale, mask, dropout_p)
        self.fmt = fmt

    def forward(self, q, k, v):
        xp = get_array_module(q)
        fmt = self.fmt
        b, h, t, d = q.shape
        h_kv, s = k.shape[1], k.shape[2]
        g = h // h_kv
        q5 = q.reshape(b, h_kv, g, t, d)                         # (B, Hkv, g, T, D)
        k5 = k.reshape(b, h_kv, 1, s, d)                         # (B, Hkv, 1, S, D)
        v5 = v.reshape(b, h_kv, 1, s, d)                         # (B, Hkv, 1, S, D)
        att = xp.empty((b, h_kv, g, t, s), dtype=fmt.packed_dtype)   # (B, Hkv, g, T, S) packed A
        out = xp.empty((b, t, h_kv, g, d), dtype=fmt.storage_dtype)  # (B, T, Hkv, g, D) memory order
        out5 = out.transpose(0, 2, 3, 1, 4)                      # (B, Hkv, g, T, D) view
        dropped = self.dropout_p > 0.0
        if dropped:
            self.keep = dropout_keep_mask(att.shape, 1.0 - self.dropout_p, np.float16, device_of(att))
        for rows in self._blocks(b, h * t * s)[0]:
            v_op = fmt.batched_operand(v5[rows])                         # the block's operands in the format
            a = xp.matmul(fmt.batched_operand(q5[rows]), fmt.batched_operand(k5[rows]).swapaxes(-1, -2))   # (.., T, D) @ (.., D, S)
            a = a.astype(np.float32, copy=False)                 # scores in float32 (a GPU GEMM gives fp16)
            a *= self.scale
            mask = self._mask_block(rows)
            if mask is not None:
                a += mask
            a -= a.max(axis=-1, keepdims=True)                   # softmax in float32, in place
            xp.exp(a, out=a)
            norm = a.sum(axis=-1, keepdims=True)
            a *= xp.reciprocal(norm, out=norm)
            packed = fmt.pack(a)                                 # A rounded to the format
            att[rows] = packed
            weights = fmt.batched_unpack_operand(packed)
            if dropped:
                weights = fmt.batched_operand(fmt.unpack(packed) * self.keep[rows])
            out5[rows] = fmt.to_storage(xp.matmul(weights, v_op))   # (.., T, S) @ (.., S, D) -> (.., T, D)
        out = out.reshape(b, t, h, d).transpose(0, 2, 1, 3)      # (B, H, T, D) view
        self.q, self.k, self.v, self.att, self.out = q, k, v, att, out
        return out

    def backward(self, gy):
        # as the float32 op: dV = A_d^T G;  dS = A ⊙ ((G V^T) ⊙ m - δ);  dQ = scale dS K;  dK = scale dS^T Q
        xp = get_array_module(gy)
        fmt, q, k, v, att = self.fmt, self.q, self.k, self.v, self.att
        b, h, t, d = q.shape
        h_kv, s = k.shape[1], k.shape[2]
        g = h // h_kv
        needs = self.needs_input_grad
        dropped = self.dropout_p > 0.0
        gy5 = gy.reshape(b, h_kv, g, t, d)                       # (B, Hkv, g, T, D)
        out5 = self.out.reshape(b, h_kv, g, t, d)
        q_flat = q.reshape(b, h_kv, g * t, d)                    # (B, Hkv, g·T, D)
        k5 = k.reshape(b, h_kv, 1, s, d)                         # (B, Hkv, 1, S, D)
        v5 = v.reshape(b, h_kv, 1, s, d)
        # the gradients, in the inputs' dtypes and (B, T, heads, D) memory order like the float32 op
        gq = xp.empty((b, t, h_kv, g, d), dtype=q.dtype) if needs[0] else None   # (B, T, Hkv, g, D)
        gk = xp.empty((b, s, h_kv, d), dtype=k.dtype) if needs[1] else None      # (B, S, Hkv, D)
        gv = xp.empty((b, s, h_kv, d), dtype=v.dtype) if needs[2] else None      # (B, S, Hkv, D)
        for rows in self._blocks(b, h * t * s)[0]:
            n = rows.stop - rows.start
            gy_op = fmt.batched_operand(gy5[rows])                       # (b', Hkv, g, T, D) G in the format
            gy32 = gy_op.astype(np.float32, copy=False)
            delta = xp.einsum("...td,...td->...t", gy32, out5[rows].astype(np.float32, copy=False))
            weights = fmt.unpack(att[rows])                      # (b', Hkv, g, T, S) A as float32
            gs = xp.matmul(gy_op, fmt.batched_operand(v5[rows]).swapaxes(-1, -2))   # G V^T (.., T, S)
            gs = gs.astype(np.float32, copy=False)
            if dropped:
                gs *= self.keep[rows]
            gs -= delta[..., None]
            gs *= weights                                        # dL/dS (float32)
            gs_op = fmt.batched_operand(gs)                              # ... entering two products in the format
            if needs[0]:
                part = xp.matmul(gs_op, fmt.batched_operand(k5[rows]))   # (.., T, S) @ (.., S, D) -> (.., T, D)
                part = part.astype(np.float32, copy=False) * self.scale
                gq[rows].transpose(0, 2, 3, 1, 4)[...] = fmt.to_storage(part)
            gs_flat = gs_op.reshape(n, h_kv, g * t, s)           # (b', Hkv, g·T, S)
            if needs[1]:
                part = xp.matmul(gs_flat.swapaxes(-1, -2), fmt.batched_operand(q_flat[rows]))   # (.., S, g·T) @ (.., g·T, D)
                part = part.astype(np.float32, copy=False) * self.scale
                gk[rows].transpose(0, 2, 1, 3)[...] = fmt.to_storage(part)
            if needs[2]:
                weights = fmt.batched_operand(weights * self.keep[rows]) if dropped else fmt.batched_unpack_operand(att[rows])
                w_flat = weights.reshape(n, h_kv, g * t, s)
                part = xp.matmul(w_flat.swapaxes(-1, -2), gy_op.reshape(n, h_kv, g * t, d))   # (.., S, g·T) @ (.., g·T, D)
                gv[rows].transpose(0, 2, 1, 3)[...] = fmt.to_storage(part)
        return _gradient_views(gq, gk, gv, (b, t, h, d))
