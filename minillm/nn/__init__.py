"""Neural-network building blocks and the GPT model.

    from minillm.nn import GPT, GPTConfig, Module, Linear, Embedding, LayerNorm, RMSNorm

Modules hold Parameters and call the fused ops of :mod:`minillm.functional`; see
:mod:`minillm.nn.module` for registration, ``state_dict`` and device moves.
"""
from minillm.nn.attention import CausalSelfAttention
from minillm.nn.block import Block
from minillm.nn.gpt import GPT, GPTConfig
from minillm.nn.kv_cache import KVCache, LayerKVCache
from minillm.nn.layers import Dropout, Embedding, LayerNorm, Linear, RMSNorm
from minillm.nn.mlp import MLP, SwiGLUMLP, swiglu_hidden
from minillm.nn.module import Module, ModuleList, Parameter, functional_call
from minillm.nn.positions import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    sinusoidal_table,
)
from minillm.nn.vocab import resize_token_embeddings

__all__ = [
    "Block", "CausalSelfAttention", "Dropout", "Embedding", "GPT", "GPTConfig", "KVCache",
    "LayerKVCache", "LayerNorm", "LearnedPositionalEmbedding", "Linear", "MLP", "Module", "ModuleList", "Parameter",
    "RMSNorm", "RotaryEmbedding", "SinusoidalPositionalEmbedding", "SwiGLUMLP",
    "functional_call", "resize_token_embeddings", "sinusoidal_table", "swiglu_hidden",
]
