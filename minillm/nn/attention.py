"""Causal multi-head self-attention with grouped-query attention (GQA).

H query heads share H_kv key/value heads (H a multiple of H_kv): H_kv = H is classic multi-head
attention (MHA), H_kv = 1 multi-query attention (MQA); in between, groups of g = H / H_kv query
heads read one key/value head (Llama 2/3). Fewer key/value heads shrink the k/v projections and,
at generation time, the key/value cache.

The computation is split in two steps so that a key/value cache can sit between them:

    q, k, v = attn.project_qkv(x, position_offset)    # (B, H, T, D), (B, H_kv, T, D) x 2
    # ... a cache would append k, v to the keys/values of earlier positions here ...
    y = attn.attend(q, k, v)                          # (B, T, C)

``forward(x, position_offset=0)`` does both, for self-attention over x alone.
``forward(x, position_offset, kv_cache=layer_cache)`` (generation, under ``no_grad``) writes the
new keys/values into a preallocated :class:`~minillm.nn.kv_cache.LayerKVCache` and attends over
every cached position (see ``minillm/nn/kv_cache.py``).
"""
from __future__ import annotations

import numpy as np

from minillm import functional as F
from minillm.nn.layers import Linear
from minillm.nn.module import Module
from minillm.nn.positions import RotaryEmbedding
from minillm.tensor import Tensor


class CausalSelfAttention(Module):
    """Causal self-attention: y = W_o · concat_h softmax(q_h k_{h//g}^T / sqrt(D) + causal) v_{h//g}.

    Args:
        n_embd: C, the model width; the head size is D = C / n_head.
        n_head: H, query heads. n_kv_head: H_kv, key/value heads (default H).
        bias: biases in the four projections.
        dropout: dropout probability on the attention weights (training mode only).
        rotary: a :class:`RotaryEmbedding` applied to q and k (Llama), or None (GPT-2: positions
            are added to the embeddings instead). It may be shared by every layer.
    Submodules: q_proj (C -> H·D), k_proj and v_proj (C -> H_kv·D), o_proj (C -> C).
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, bias: bool = True,
                 dropout: float = 0.0, rotary: RotaryEmbedding | None = None,
                 dtype=np.float32, device: str = "cpu"):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_embd % n_head:
            raise ValueError(f"CausalSelfAttention: n_embd={n_embd} is not divisible by "
                             f"n_head={n_head}; expected n_embd = n_head * head_size")
        if n_kv_head <= 0 or n_head % n_kv_head:
            raise ValueError(f"CausalSelfAttention: n_head={n_head} is not a multiple of "
                             f"n_kv_head={n_kv_head}; expected groups of equal size")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"CausalSelfAttention: dropout={dropout!r}; expected a probability in [0, 1)")
        self.n_embd, self.n_head, self.n_kv_head = n_embd, n_head, n_kv_head
        self.head_dim = n_embd // n_head
        self.dropout = float(dropout)
        kv_width = n_kv_head * self.head_dim
        self.q_proj = Linear(n_embd, n_embd, bias=bias, dtype=dtype, device=device)
        self.k_proj = Linear(n_embd, kv_width, bias=bias, dtype=dtype, device=device)
        self.v_proj = Linear(n_embd, kv_width, bias=bias, dtype=dtype, device=device)
        self.o_proj = Linear(n_embd, n_embd, bias=bias, dtype=dtype, device=device)
        self.rotary = rotary

    def _heads(self, y: Tensor, n: int) -> Tensor:
        """(B, T, n·D) -> (B, n, T, D), a view."""
        b, t, _ = y.shape
        y = F.reshape(y, (b, t, n, self.head_dim))               # (B, T, n, D)
        return F.transpose(y, (0, 2, 1, 3))                      # (B, n, T, D)

    def project_qkv(self, x: Tensor, position_offset: int = 0):
        """Queries (B, H, T, D) and keys, values (B, H_kv, T, D) for x (B, T, C) at absolute
        positions position_offset..position_offset+T-1 (RoPE already applied to q and k)."""
        q = self._heads(self.q_proj(x), self.n_head)             # (B, H, T, D)
        k = self._heads(self.k_proj(x), self.n_kv_head)          # (B, Hkv, T, D)
        v = self._heads(self.v_proj(x), self.n_kv_head)          # (B, Hkv, T, D)
        if self.rotary is not None:
            q = self.rotary(q, position_offset)
            k = self.rotary(k, position_offset)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True) -> Tensor:
        """Attention of q (B, H, T, D) over k, v (B, H_kv, S, D), merged heads, output
        projection -> (B, T, C). With S > T the causal mask is aligned to the last T keys."""
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=is_causal)   # (B, H, T, D)
        b, _, t, _ = y.shape
        y = F.transpose(y, (0, 2, 1, 3))                         # (B, T, H, D) (contiguous: no copy)
        y = F.reshape(y, (b, t, self.n_embd))                    # (B, T, C)
        return self.o_proj(y)

    def forward(self, x: Tensor, position_offset: int = 0, kv_cache=None) -> Tensor:
        """x (B, T, C) -> (B, T, C).

        With ``kv_cache`` (a LayerKVCache whose length is ``position_offset``): k, v (B, H_kv, T, D)
        are written into the cache and q attends over all S = length + T cached keys/values, the
        causal mask aligned to the last T (a single new query sees every key: no mask). The cache
        holds plain arrays, so this path records no graph (generation runs under no_grad).
        """
        if x.ndim != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(f"CausalSelfAttention: x has shape {x.shape}; expected (B, T, {self.n_embd})")
        q, k, v = self.project_qkv(x, position_offset)
        if kv_cache is None:
            return self.attend(q, k, v)
        keys, values = kv_cache.update(k.data, v.data)           # (B, H_kv, S, D) views of the cache
        k_all, v_all = Tensor._from_op(keys, None), Tensor._from_op(values, None)
        return self.attend(q, k_all, v_all, is_causal=q.shape[2] > 1)

    def extra_repr(self) -> str:
        return (f"n_embd={self.n_embd}, n_head={self.n_head}, n_kv_head={self.n_kv_head}, "
                f"dropout={self.dropout}")
