"""Growing a model's vocabulary: new token ids (chat markers, added special tokens) get rows.

Post-training adds special tokens the pretrained tokenizer lacked (``<|user|>``, ``<|end|>``...);
the model then needs a row for each new id in its token embedding (and in an untied output head).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from minillm.backend import get_array_module, item, random_normal
from minillm.nn.gpt import GPT
from minillm.nn.layers import Linear
from minillm.nn.module import Parameter


def resize_token_embeddings(model: GPT, new_vocab_size: int, noise_scale: float = 0.1) -> GPT:
    """Grow ``model``'s vocabulary to ``new_vocab_size`` ids (the token embedding, and the output
    head when it is untied; a tied head follows the embedding). Returns ``model``.

    New row i (for a new id) = mean of the existing rows + N(0, (noise_scale · σ)²), with σ the
    standard deviation of the existing rows' entries. The mean makes a new token's logit h·ē the
    average of the old tokens' logits (Hewitt 2021), so the grown model predicts what it did
    before (a new id gets about the probability of a typical old token, not a random share); the
    small noise gives each new token a distinct input embedding (``<|user|>`` and
    ``<|assistant|>`` must be told apart). Random numbers come from the global generator.

    ``model.config`` is replaced by a copy with the new ``vocab_size``, so checkpoints saved
    afterwards carry it and ``load_model`` rebuilds the grown shape. Build the optimizer after
    resizing: the grown matrices are new Parameters.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"resize_token_embeddings: model has type {type(model).__name__}; expected a GPT")
    old = model.config.vocab_size
    if isinstance(new_vocab_size, bool) or not isinstance(new_vocab_size, (int, np.integer)) or new_vocab_size < old:
        raise ValueError(f"resize_token_embeddings: new_vocab_size={new_vocab_size!r}; expected an int >= the "
                         f"current vocab_size={old} (shrinking would drop trained rows)")
    if isinstance(noise_scale, bool) or not isinstance(noise_scale, (int, float)) or noise_scale < 0:
        raise ValueError(f"resize_token_embeddings: noise_scale={noise_scale!r}; expected a number >= 0")
    new_vocab_size = int(new_vocab_size)
    if new_vocab_size == old:
        return model
    model.tok_emb.weight = _grown(model.tok_emb.weight, new_vocab_size, noise_scale)
    model.tok_emb.num_embeddings = new_vocab_size
    if model.lm_head is not None:
        if type(model.lm_head) is not Linear:
            raise TypeError(f"resize_token_embeddings: lm_head is a {type(model.lm_head).__name__}; resize "
                            "before applying adapters (apply_lora) to it")
        model.lm_head.weight = _grown(model.lm_head.weight, new_vocab_size, noise_scale)
        model.lm_head.out_features = new_vocab_size
    model.config = dataclasses.replace(model.config, vocab_size=new_vocab_size)
    return model


def _grown(weight: Parameter, rows: int, noise_scale: float) -> Parameter:
    """(V, C) -> (rows, C): the old rows, then mean + noise rows (see resize_token_embeddings)."""
    xp = get_array_module(weight.data)
    old = weight.data                                                   # (V, C)
    extra = rows - old.shape[0]
    mean = old.mean(axis=0, keepdims=True)                              # (1, C)
    std = item(old.std()) * noise_scale
    new_rows = random_normal((extra, old.shape[1]), old.dtype, weight.device, std=std) if std > 0 else \
        xp.zeros((extra, old.shape[1]), dtype=old.dtype)
    new_rows += mean                                                    # (extra, C)
    return Parameter(xp.concatenate([old, new_rows], axis=0), requires_grad=weight.requires_grad)
