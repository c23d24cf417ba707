"""The transformer block: attention and feed-forward, each wrapped in a residual connection.

Two placements of the normalisation:

- pre-norm (GPT-2, Llama):   x = x + drop(attn(norm1(x)));   x = x + drop(mlp(norm2(x)))
  The residual stream is never normalised, so gradients reach early layers undamped; the model
  adds one final norm before the head.
- post-norm (the original transformer's "Add & Norm"):
                             x = norm1(x + drop(attn(x)));   x = norm2(x + drop(mlp(x)))
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from minillm.nn.attention import CausalSelfAttention
from minillm.nn.layers import Dropout, LayerNorm, RMSNorm
from minillm.nn.mlp import MLP, SwiGLUMLP
from minillm.nn.module import Module
from minillm.nn.positions import RotaryEmbedding
from minillm.tensor import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from minillm.nn.gpt import GPTConfig


def make_norm(config: "GPTConfig", dtype, device: str) -> Module:
    """LayerNorm (with a bias when ``config.bias``) or RMSNorm, as ``config.norm`` says."""
    if config.norm == "layernorm":
        return LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias, dtype=dtype, device=device)
    return RMSNorm(config.n_embd, eps=config.norm_eps, dtype=dtype, device=device)


def make_mlp(config: "GPTConfig", dtype, device: str) -> Module:
    """The GELU MLP or SwiGLU feed-forward, as ``config.mlp`` says."""
    if config.mlp == "gelu":
        return MLP(config.n_embd, config.mlp_hidden, bias=config.bias,
                   approximate=config.gelu_approximate, dtype=dtype, device=device)
    return SwiGLUMLP(config.n_embd, config.mlp_hidden, bias=config.bias,
                     multiple_of=config.mlp_multiple_of, dtype=dtype, device=device)


class Block(Module):
    """One transformer layer (see the module docstring for both norm placements).

    Submodules: norm1, attn, norm2, mlp, and the residual dropout ``drop``.
    """

    def __init__(self, config: "GPTConfig", rotary: RotaryEmbedding | None = None, dtype=None,
                 device: str = "cpu"):
        super().__init__()
        dtype = dtype or "float32"
        self.pre_norm = config.norm_position == "pre"
        self.norm1 = make_norm(config, dtype, device)
        self.attn = CausalSelfAttention(config.n_embd, config.n_head, config.n_kv_head,
                                        bias=config.bias, dropout=config.dropout, rotary=rotary,
                                        dtype=dtype, device=device)
        self.norm2 = make_norm(config, dtype, device)
        self.mlp = make_mlp(config, dtype, device)
        self.drop = Dropout(config.dropout)

    def forward(self, x: Tensor, position_offset: int = 0, kv_cache=None) -> Tensor:
        """x (B, T, C) -> (B, T, C); ``position_offset`` (RoPE) and ``kv_cache`` (this layer's
        LayerKVCache, generation only) are passed to attention."""
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), position_offset, kv_cache))
            return x + self.drop(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, position_offset, kv_cache)))
        return self.norm2(x + self.drop(self.mlp(x)))
