"""Language-model evaluation: loss, perplexity and bits per byte over a whole token split.

Every target position of the split is scored exactly once by sliding windows
(:func:`minillm.data.sequential_windows`). With S the summed negative log-likelihood in nats
over N scored tokens that decode to B bytes of text:

    loss = S / N (nats per token),   perplexity = e^loss,   bits per byte = S / (B · ln 2).

Bits per byte does not depend on the tokenizer, so a BPE model and a character-level model of
the same text can be compared with it (for ASCII text one character is one byte).
"""
from __future__ import annotations

import math

from minillm.autograd import no_grad
from minillm.data import sequential_windows

IGNORE_INDEX = -100


def evaluate_language_model(model, tokens, block_size: int, batch_size: int, num_bytes: int | None = None,
                            device: str = "cpu", stride: int | None = None, max_batches: int = 0,
                            prefix: str = "val_") -> dict:
    """Mean loss, perplexity (and bits per byte when ``num_bytes`` is given) of ``model`` on
    ``tokens`` (a 1-D host integer array). ``max_batches`` > 0 stops early (an estimate).
    The windows stay host arrays until the model moves them to its own device (``device`` is
    that device; kept for callers that pass it)."""
    was_training = model.training
    model.eval()
    total_nats, total_tokens, batches = 0.0, 0, 0
    try:
        with no_grad():
            for x, y, mask in sequential_windows(tokens, block_size, batch_size, stride):
                targets = y.copy()
                targets[~mask] = IGNORE_INDEX                      # score each position once
                count = int(mask.sum())
                if count == 0:
                    continue
                # host batches: the model checks the ids on the host and moves them to its device
                _, loss = model(x, targets)
                total_nats += loss.item() * count                  # the loss is a mean over scored targets
                total_tokens += count
                batches += 1
                if max_batches and batches >= max_batches:
                    break
    finally:
        model.train(was_training)
    mean = total_nats / total_tokens
    result = {f"{prefix}loss": mean, f"{prefix}ppl": math.exp(min(mean, 700.0)), f"{prefix}tokens": total_tokens}
    if num_bytes and not max_batches:
        result[f"{prefix}bpb"] = total_nats / (num_bytes * math.log(2))
    elif num_bytes:
        # an estimate from the first batches: the bytes behind the scored tokens, pro rata
        bytes_seen = num_bytes * total_tokens / max(1, len(tokens) - 1)
        result[f"{prefix}bpb"] = total_nats / (bytes_seen * math.log(2))
    return result
