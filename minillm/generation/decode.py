"""Autoregressive decoding with a key/value cache: ``generate`` and ``stream``.

Each step appends one token to every unfinished prompt:

    prefill:  logits = model(prompt, kv_cache=cache, only_last=True)     # (B, 1, V), fills the cache
    decode:   token = sampler.choose(logits); logits = model(token, kv_cache=cache, only_last=True)

With the cache (``use_cache=True``, the default) a step runs the model on the newest token only,
so its cost barely grows with the context; ``use_cache=False`` recomputes the whole window at
every step (the reference the cache is tested and benchmarked against; both give the same
tokens). The model runs under ``no_grad()`` and in eval mode (dropout off), both switched on
around each step's forward passes only, so a paused ``stream`` leaves the caller's grad mode and
the model's training mode as they were. Each step copies the last position's logits (B, V) to
the host (``backend.to_numpy``), where the token is chosen (:mod:`minillm.generation.sampling`).

Ragged batches (prompts of different lengths). Prompts are grouped by length; each group is one
rectangular batch with its own cache, and every step runs one forward per group that still has
unfinished rows. No padding token ever enters the model, so batching cannot change a prompt's
logits (they equal those of the prompt decoded alone, up to float rounding of the batched matrix
products), and positions are those of the prompt alone. The cost is one forward per distinct
prompt length per step: fine for the small batches of interactive use and evaluation; pad
prompts to a common length yourself when you have many lengths and want one forward.

Context overflow (the sequence outgrows ``block_size``): ``overflow="slide"`` (default) keeps a
window of the newest tokens. When the window would exceed block_size tokens, the oldest ``slide``
tokens of that block_size + 1 are dropped (default slide = max(1, block_size // 4)), the cache is
reset, and the kept block_size + 1 - slide tokens are prefilled again at positions 0, 1, ...:
positions are always those of the window, never past the tables. ``slide=1`` is nanoGPT's
``idx[:, -block_size:]`` crop (a full re-prefill each step once the context is full); a larger
slide re-prefills once every ``slide`` steps. ``use_cache=False`` uses the very same windows.
``overflow="stop"`` ends a prompt's generation instead: no token is ever predicted from a cut
context (the result then holds at most block_size + 1 tokens).
"""
from __future__ import annotations

import contextlib

import numpy as np

from minillm.autograd import no_grad
from minillm.backend import to_device, to_numpy
from minillm.generation.sampling import Sampler
from minillm.generation.text import IncrementalDetokenizer, split_stop
from minillm.nn.kv_cache import KVCache
from minillm.tensor import Tensor

OVERFLOW_POLICIES = ("slide", "stop")


def generate(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, repetition_penalty: float | None = None, stop=None, seed=None,
             tokenizer=None, use_cache: bool = True, overflow: str = "slide", slide: int | None = None,
             pad_id: int = -1):
    """Continue each prompt of ``idx`` by up to ``max_new_tokens`` tokens.

    Args:
        idx: the prompts: a (B, T) integer array (NumPy/CuPy) or Tensor; a list of token-id lists
            of any lengths (a ragged batch, see the module docstring); or one flat list of ids.
            Every prompt needs 1..block_size tokens, each in [0, vocab_size).
        max_new_tokens: an int >= 0.
        temperature, top_k, top_p, repetition_penalty, seed: see :mod:`minillm.generation.sampling`
            (temperature 0 is greedy).
        stop: a token id, a stop string, or a list of them. A row ends right after it emits a stop
            id (kept as its last id), or once its generated text (decoded with ``tokenizer``, which
            stop strings require) contains a stop string (the ids end with the token that completed
            it; cut the text with :class:`~minillm.generation.text.IncrementalDetokenizer`).
        use_cache: decode with the key/value cache (True) or recompute each window (False).
        overflow, slide: the context-overflow policy (module docstring).
        pad_id: fills the rows of an array result after a row has stopped (-1: never a valid id).
    Returns:
        array input: an int64 array (B, T + n) on the model's device, n = the most tokens any row
        generated; lists in: lists out (prompt + continuation per row; a flat list for a flat list).
    """
    prompts, kind = as_prompts(model, idx)
    outputs = [list(p) for p in prompts]
    for step in decode_steps(model, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                             stop, seed, tokenizer, use_cache, overflow, slide):
        for row, token in step:
            outputs[row].append(token)
    if kind == "flat":
        return outputs[0]
    if kind == "lists":
        return outputs
    if not isinstance(pad_id, int):
        raise TypeError(f"pad_id={pad_id!r}; expected an int")
    width = max(len(o) for o in outputs)
    result = np.full((len(outputs), width), pad_id, dtype=np.int64)   # host: (B, T + n) ids, padded
    for row, ids in enumerate(outputs):
        result[row, :len(ids)] = ids
    return to_device(result, model.device)


def stream(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, repetition_penalty: float | None = None, stop=None, seed=None,
           tokenizer=None, use_cache: bool = True, overflow: str = "slide", slide: int | None = None):
    """Yield the new token ids (Python ints) of ONE prompt as they are produced.

    ``idx``: a flat list of ids, a 1-D array, a (1, T) array/Tensor or ``[[ids]]``; the other
    arguments are :func:`generate`'s. A stop id is yielded, then the generator ends. The
    arguments are checked when this is called, not at the first ``next()``.
    """
    prompts, _ = as_prompts(model, idx)
    if len(prompts) != 1:
        raise ValueError(f"stream: idx holds {len(prompts)} prompts; expected exactly one (use generate "
                         "for a batch)")
    steps = decode_steps(model, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                         stop, seed, tokenizer, use_cache, overflow, slide)
    return (token for step in steps for _, token in step)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def as_prompts(model, idx) -> tuple[list[list[int]], str]:
    """(prompts as lists of ints, kind) with kind "array", "lists" or "flat"; every prompt checked."""
    data = idx.data if isinstance(idx, Tensor) else idx
    if hasattr(data, "dtype") and hasattr(data, "ndim"):
        if data.dtype.kind not in "iu":
            raise TypeError(f"idx has dtype {data.dtype}; expected integer token ids")
        if data.ndim not in (1, 2):
            raise ValueError(f"idx has shape {tuple(data.shape)}; expected (B, T) or (T,)")
        host = to_numpy(data)
        prompts, kind = (host.tolist(), "array") if host.ndim == 2 else ([host.tolist()], "flat")
    elif isinstance(data, (list, tuple)):
        if not data:
            raise ValueError("idx=[] is empty; expected token ids or a list of token-id lists")
        if all(isinstance(p, (list, tuple)) or getattr(p, "ndim", 0) == 1 for p in data):
            kind = "lists"
            prompts = [[_token(t, f"idx[{r}][{i}]") for i, t in enumerate(p)] for r, p in enumerate(data)]
        else:
            prompts, kind = [[_token(t, f"idx[{i}]") for i, t in enumerate(data)]], "flat"
    else:
        raise TypeError(f"idx has type {type(idx).__name__}; expected a (B, T) integer array or Tensor, or "
                        "lists of token ids")
    if not prompts:
        raise ValueError("idx holds no prompts (B = 0); expected at least one")
    v, block = model.config.vocab_size, model.config.block_size
    for row, prompt in enumerate(prompts):
        where = "idx" if kind == "flat" else f"idx[{row}]"
        if not prompt:
            raise ValueError(f"{where} is an empty prompt; expected at least one token id (start from a "
                             "BOS or <|endoftext|> id)")
        if len(prompt) > block:
            raise ValueError(f"{where} has {len(prompt)} tokens, longer than the context block_size={block}; "
                             f"expected at most {block} (keep its last {block} tokens)")
        low, high = min(prompt), max(prompt)
        if low < 0 or high >= v:
            bad = low if low < 0 else high
            raise ValueError(f"{where} holds token id {bad}, out of range; expected ids in [0, vocab_size={v})")
    return prompts, kind


def _token(value, where: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{where}={value!r} has type {type(value).__name__}; expected an int token id")
    return int(value)


def _check_options(model, max_new_tokens, stop, tokenizer, overflow, slide) -> tuple[list[int], list[str], int]:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}; expected an int >= 0")
    stop_ids, stop_strings = split_stop(stop)
    v, block = model.config.vocab_size, model.config.block_size
    for token in stop_ids:
        if not 0 <= token < v:
            raise ValueError(f"stop holds token id {token}, out of range; expected ids in [0, vocab_size={v})")
    if stop_strings and (tokenizer is None or not hasattr(tokenizer, "decode_bytes")):
        raise ValueError(f"stop={stop_strings!r} holds stop strings but tokenizer={tokenizer!r}; expected a "
                         "tokenizer= with decode_bytes to match them in the generated text")
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow={overflow!r}; expected one of {OVERFLOW_POLICIES}")
    slide = max(1, block // 4) if slide is None else slide
    if isinstance(slide, bool) or not isinstance(slide, (int, np.integer)) or not 1 <= slide <= block:
        raise ValueError(f"slide={slide!r}; expected an int in [1, block_size={block}] (tokens dropped when "
                         "the window overflows)")
    return stop_ids, stop_strings, int(slide)


# ---------------------------------------------------------------------------------------------
# The decoding loop
# ---------------------------------------------------------------------------------------------
class _Group:
    """Prompts of one length decoded together: a host buffer of all their tokens (rows, T + n),
    the window start, and a cache (or None) holding the window's first ``cache.length`` tokens."""

    def __init__(self, model, rows: list[int], prompts: list[list[int]], max_new_tokens: int,
                 use_cache: bool, overflow: str, slide: int):
        self.model, self.rows, self.overflow, self.slide = model, rows, overflow, slide
        self.device = model.device                               # looked up once (it walks the modules)
        length = len(prompts[0])
        self.tokens = np.zeros((len(rows), length + max_new_tokens), dtype=np.int64)  # host: token ids
        self.tokens[:, :length] = prompts
        self.n, self.start = length, 0
        capacity = min(model.config.block_size, length + max_new_tokens)
        self.cache = KVCache.for_model(model, len(rows), capacity) if use_cache else None
        self.live = True

    def next_logits(self):
        """The logits (rows, V) that predict token ``n`` (a host array), or None when the context
        is full and the policy is "stop"."""
        block = self.model.config.block_size
        if self.n - self.start > block:                          # the window outgrew the context
            if self.overflow == "stop":
                return None
            self.start = self.n - (block + 1 - self.slide)       # keep block + 1 - slide tokens
            if self.cache is not None:
                self.cache.reset()                               # re-prefill them at positions 0..
        first = self.start if self.cache is None else self.start + self.cache.length
        feed = self.tokens[:, first:self.n]                      # (rows, T_new) host ids: the model checks
        # them on the host and then moves them, so a step reads nothing back but its logits
        logits, _ = self.model(feed, kv_cache=self.cache, only_last=True)   # (rows, 1, V)
        return to_numpy(logits.data[:, 0])                       # (rows, V) host

    def append(self, tokens: list[int]) -> None:
        self.tokens[:, self.n] = tokens
        self.n += 1


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def decode_steps(model, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 repetition_penalty=None, stop=None, seed=None, tokenizer=None, use_cache=True,
                 overflow="slide", slide=None):
    """Check the arguments now and return the generator of steps: each step is a list of
    (row, token) for the rows that produced a token (rows end at a stop or a full context)."""
    stop_ids, stop_strings, slide = _check_options(model, max_new_tokens, stop, tokenizer, overflow, slide)
    sampler = Sampler(prompts, model.config.vocab_size, temperature, top_k, top_p, repetition_penalty, seed)
    return _steps(model, prompts, max_new_tokens, sampler, set(stop_ids), stop_strings, tokenizer,
                  use_cache, overflow, slide)


def _steps(model, prompts, max_new_tokens, sampler, stop_ids, stop_strings, tokenizer, use_cache,
           overflow, slide):
    if max_new_tokens == 0:
        return
    by_length: dict[int, list[int]] = {}
    for row, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(row)
    detokenizers = {row: IncrementalDetokenizer(tokenizer, stop_strings) for row in range(len(prompts))} \
        if stop_strings else {}
    active = set(range(len(prompts)))
    groups = [_Group(model, rows, [prompts[r] for r in rows], max_new_tokens, use_cache, overflow, slide)
              for rows in by_length.values()]
    for _ in range(max_new_tokens):
        rows, blocks = [], []
        # no_grad and eval mode only around the model calls: a paused stream leaves both alone
        with no_grad(), _eval_mode(model):
            for group in groups:
                if not group.live:
                    continue
                logits = group.next_logits()                     # (group rows, V) host
                if logits is None:                               # "stop" policy: context full
                    group.live = False
                    active.difference_update(group.rows)
                    continue
                keep = [i for i, row in enumerate(group.rows) if row in active]
                rows += [group.rows[i] for i in keep]
                blocks.append(logits[keep])
        if not rows:
            return
        tokens = sampler.choose(rows, blocks[0] if len(blocks) == 1 else _concat(blocks))
        chosen = dict(zip(rows, tokens))
        for row, token in chosen.items():
            if token in stop_ids:
                active.discard(row)
            elif stop_strings:
                detokenizer = detokenizers[row]
                detokenizer.push(token)
                if detokenizer.stopped:
                    active.discard(row)
        for group in groups:
            if group.live:
                # finished rows keep their place in the group's batch: feed them their last token
                group.append([chosen.get(row, int(group.tokens[i, group.n - 1]))
                              for i, row in enumerate(group.rows)])
                group.live = any(row in active for row in group.rows)
        yield list(chosen.items())
        if not active:
            return


def _concat(blocks):
    return np.concatenate(blocks, axis=0)  # host: (rows, V) logits of several groups
