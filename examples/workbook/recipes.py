"""What chapters 07-10 share, written once: chapter 06's training loop (``fit``) and the tiny
byte-level model that chapters 07 and 08 start from (``pretrain_tiny_model``).

Each chapter still runs on its own in a fresh kernel: it imports this file (the notebooks run with
this folder as their working directory) and trains what it needs itself; no files pass between
chapters. Chapter 06 derives every line of ``fit``: AdamW, warmup + cosine, clipping by the
global norm.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

import minillm as mm
from minillm.data import default_corpus_path
from minillm.data.documents import read_text_file
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, CosineSchedule, clip_grad_norm_, decay_groups, set_lr
from minillm.tokenizer import BPETokenizer


def fit(optimizer, loss_of_step: Callable[[int], mm.Tensor], steps: int, clipped: Iterable,
        schedule: Callable[[int], float] | None = None, max_norm: float = 1.0) -> list[float]:
    """Chapter 06's loop, ``steps`` times: set the learning rate from ``schedule`` (if any), take
    ``loss = loss_of_step(step)`` (a scalar Tensor: the forward pass on this step's batch),
    backward, clip the global gradient norm of the parameters ``clipped`` to ``max_norm``, take the
    optimizer's step and clear the gradients. Returns the loss of every step (floats)."""
    clipped = list(clipped)
    losses = []
    for step in range(steps):
        if schedule is not None:
            set_lr(optimizer, schedule(step))
        loss = loss_of_step(step)
        loss.backward()
        clip_grad_norm_(clipped, max_norm)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def pretrain_tiny_model(steps: int, seed: int = 0):
    """The base model of chapters 07 and 08: a byte-level GPT (256 byte ids + ``<|endoftext|>``,
    V = 257), GPT-2 style, 2 layers, 4 heads, C = 64, context 128, trained for ``steps`` steps on
    random windows (batch 8) of the embedded corpus with AdamW, warmup + cosine and clipping.

    Returns (model in eval mode, tokenizer, training losses per step)."""
    text = read_text_file(default_corpus_path())
    tokenizer = BPETokenizer([], special_tokens=["<|endoftext|>"])     # 256 byte ids + 1 special = 257
    data = np.asarray(tokenizer.encode_ordinary(text), dtype=np.int64)
    mm.manual_seed(seed)
    config = GPTConfig.gpt2(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=2, n_head=4, n_embd=64)
    model = GPT(config)
    schedule = CosineSchedule(lr=3e-3, min_lr=3e-4, warmup_steps=50, total_steps=steps)
    optimizer = AdamW(decay_groups(model.named_parameters(), 0.1), lr=schedule(0), betas=(0.9, 0.95))
    rng = np.random.default_rng(seed)
    batch_size, block = 8, config.block_size

    def window_loss(step: int) -> mm.Tensor:
        starts = rng.integers(0, len(data) - block - 1, size=batch_size)
        x = np.stack([data[s:s + block] for s in starts])             # (B, T) inputs
        y = np.stack([data[s + 1:s + block + 1] for s in starts])     # (B, T) next tokens
        return model(x, y)[1]

    losses = fit(optimizer, window_loss, steps, model.parameters(), schedule)
    model.eval()
    return model, tokenizer, losses
