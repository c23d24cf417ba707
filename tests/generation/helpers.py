"""Tiny models and tokenizers shared by the generation tests."""
import numpy as np

import minillm as mm
from minillm.nn import GPT, GPTConfig

TINY = dict(vocab_size=24, block_size=16, n_layer=2, n_head=4, n_embd=16, init_std=0.3)
CONFIGS = {
    "gpt2-learned": lambda **kw: GPTConfig.gpt2(**{**TINY, **kw}),
    "gpt2-sinusoidal": lambda **kw: GPTConfig.gpt2(**{**TINY, "pos": "sinusoidal", **kw}),
    "gpt2-gqa-postnorm": lambda **kw: GPTConfig.gpt2(**{**TINY, "n_kv_head": 2, "norm_position": "post", **kw}),
    "llama-gqa-rope": lambda **kw: GPTConfig.llama(**{**TINY, "n_kv_head": 2, "mlp_multiple_of": 8, **kw}),
    "llama-mqa-rope": lambda **kw: GPTConfig.llama(**{**TINY, "n_kv_head": 1, "mlp_multiple_of": 8, **kw}),
}


def make_model(name="gpt2-learned", dtype=np.float64, seed=0, **overrides):
    """A tiny GPT in eval mode (float64 by default: cache and recompute compare tightly)."""
    mm.manual_seed(seed)
    model = GPT(CONFIGS[name](**overrides))
    if dtype != np.float32:
        model.to_dtype(dtype)
    return model.eval()


def prompts(lengths, vocab=TINY["vocab_size"], seed=0):
    rng = np.random.Generator(np.random.PCG64(seed))
    return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


class BytesTokenizer:
    """A tokenizer given by its token byte strings (e.g. tokens that split an emoji's bytes)."""

    def __init__(self, pieces):
        self.pieces = [bytes(p) for p in pieces]
        self.special_tokens = {}
        self.vocab_size = len(self.pieces)

    def decode_bytes(self, ids):
        return b"".join(self.pieces[i] for i in ids)

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
