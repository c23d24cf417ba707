"""A running batch for continuous batching: every row at its own position in one key/value cache.

:func:`minillm.generation.decode` batches prompts of equal length only, all of them starting
together. A server wants more: requests arrive and finish at any time, so the batch that decodes
together holds sequences of different lengths, each at its own position. :class:`DecodeBatch`
keeps them in one preallocated pool of cache rows, per layer

    keys, values: (max_rows, H_kv, capacity, D)       row r holds sequence r's positions 0..L_r-1

and the host array of lengths L (rows,). The rows in use are always 0..rows-1 (a row that
leaves is replaced by the last row, so the pool stays compact and the attention reads one view).

- ``add(prompts)``: prefill new sequences into the next free rows (prompts of equal length are
  prefilled together, through the model's own cached forward) and return the logits (k, V)
  that predict each one's first new token.
- ``step(tokens)``: feed one token per row, row r's at position L_r: token and position
  embeddings (learned/sinusoidal rows at L_r, or RoPE angles of L_r for q and k), then per layer
  q, k, v of the new tokens (R, H, 1, D) / (R, H_kv, 1, D), written at keys[r, :, L_r], and
  attention of each query over its own row's keys 0..L_r only:

      mask[r, s] = s <= L_r          (R, 1, 1, S), S = max_r L_r + 1

  so positions past a row's length (another sequence's leftovers, or nothing yet) get weight
  exactly 0. Returns the logits (R, V) predicting each row's next token; every L_r grows by 1.
- ``remove(key)``: the sequence leaves (finished or cancelled); its row is reused.

The arithmetic per row is the model's own: the same modules (norms, projections, MLP, head) and
the same attention op, on a batch of rows instead of one. A row's logits therefore equal those of
its sequence decoded alone up to float rounding of the batched matrix products
(tests/generation/test_batch.py checks this for every architecture variant, and that greedy
tokens are identical). The model runs in eval mode under ``no_grad`` (inference only: nothing
here is differentiated). Sequences are identified by caller-chosen keys; ``keys`` lists them in
row order, the order of ``step``'s tokens and logits.
"""
from __future__ import annotations

import numpy as np

from minillm import functional as F
from minillm.autograd import no_grad
from minillm.backend import module_for_device, to_device, to_numpy
from minillm.generation.decode import _eval_mode
from minillm.nn.block import Block
from minillm.nn.kv_cache import KVCache, LayerKVCache
from minillm.nn.positions import LearnedPositionalEmbedding, SinusoidalPositionalEmbedding
from minillm.ops.attention import Rope
from minillm.tensor import Tensor


class _RowsCache(KVCache):
    """A KVCache over rows [first, first + count) of a DecodeBatch's pool (views, no copy), used to
    prefill new sequences with the model's own cached forward."""

    def __init__(self, pool: "DecodeBatch", first: int, count: int):    # noqa: D107 (no KVCache.__init__)
        self.capacity, self.length = pool.capacity, 0
        rows = slice(first, first + count)
        self.layers = [LayerKVCache(self, keys[rows], values[rows]) for keys, values in pool.buffers]


class DecodeBatch:
    """Sequences decoded together, each at its own position (see the module docstring).

    Args:
        model: a GPT (its blocks must be :class:`minillm.nn.block.Block`).
        max_rows: the most sequences held at once.
        capacity: positions per sequence, at most (and by default) ``model.config.block_size``.
    Attributes: ``keys`` (the sequences' keys in row order), ``lengths`` (a host int64 array, the
    positions filled per row), ``rows``, ``max_rows``, ``capacity``.
    """

    def __init__(self, model, max_rows: int, capacity: int | None = None):
        c = model.config
        capacity = c.block_size if capacity is None else capacity
        if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
            raise ValueError(f"DecodeBatch: max_rows={max_rows!r}; expected an int >= 1")
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) \
                or not 1 <= capacity <= c.block_size:
            raise ValueError(f"DecodeBatch: capacity={capacity!r}; expected an int in [1, block_size={c.block_size}]")
        for index, block in enumerate(model.blocks):
            if type(block) is not Block:
                raise TypeError(f"DecodeBatch: model.blocks[{index}] is a {type(block).__name__}; expected "
                                "minillm.nn.block.Block (the layer whose forward the batched step mirrors)")
        self.model, self.max_rows, self.capacity = model, int(max_rows), int(capacity)
        self.device = model.device
        self.xp = module_for_device(self.device)
        shape = (self.max_rows, c.n_kv_head, self.capacity, c.head_dim)     # (N, H_kv, capacity, D)
        self.buffers = [(self.xp.zeros(shape, dtype=model.dtype), self.xp.zeros(shape, dtype=model.dtype))
                        for _ in range(c.n_layer)]
        self.lengths = np.zeros(self.max_rows, dtype=np.int64)  # host: positions filled per row
        self.keys: list = []

    @property
    def rows(self) -> int:
        return len(self.keys)

    @property
    def free(self) -> int:
        return self.max_rows - self.rows

    @property
    def nbytes(self) -> int:
        """Bytes held by the key/value pool."""
        return sum(k.nbytes + v.nbytes for k, v in self.buffers)

    def length(self, key) -> int:
        return int(self.lengths[self.keys.index(key)])

    # -- joining and leaving ---------------------------------------------------------------------
    def add(self, items) -> np.ndarray:
        """Prefill new sequences: ``items`` is a list of (key, prompt ids); each prompt has
        1..capacity ids in [0, vocab_size). Returns the host logits (k, V) predicting each one's
        next token, in the order of ``items``."""
        items = list(items)
        if len(items) > self.free:
            raise ValueError(f"DecodeBatch.add: {len(items)} new sequences but only {self.free} of "
                             f"{self.max_rows} rows are free")
        v = self.model.config.vocab_size
        for key, prompt in items:
            if key in self.keys:
                raise ValueError(f"DecodeBatch.add: key {key!r} is already in the batch")
            if not 1 <= len(prompt) <= self.capacity:
                raise ValueError(f"DecodeBatch.add: the prompt of {key!r} has {len(prompt)} tokens; expected "
                                 f"1..{self.capacity}")
            if min(prompt) < 0 or max(prompt) >= v:
                raise ValueError(f"DecodeBatch.add: the prompt of {key!r} holds ids outside [0, vocab_size={v})")
        by_length: dict[int, list[int]] = {}
        for index, (_, prompt) in enumerate(items):
            by_length.setdefault(len(prompt), []).append(index)
        logits = [None] * len(items)
        with no_grad(), _eval_mode(self.model):
            for length, indices in by_length.items():
                first = self.rows
                ids = np.array([items[i][1] for i in indices], dtype=np.int64)   # host: (k, T) prompt ids
                out, _ = self.model(ids, kv_cache=_RowsCache(self, first, len(indices)), only_last=True)
                host = to_numpy(out.data[:, 0])                  # (k, V)
                for offset, i in enumerate(indices):
                    self.keys.append(items[i][0])
                    self.lengths[first + offset] = length
                    logits[i] = host[offset]
        return np.stack(logits) if logits else np.zeros((0, v))   # host: (k, V) in the order given

    def remove(self, key) -> None:
        """The sequence ``key`` leaves; the last row moves into its place (its filled positions
        are copied, once)."""
        row = self.keys.index(key)
        last = self.rows - 1
        if row != last:
            filled = int(self.lengths[last])
            for keys, values in self.buffers:
                keys[row, :, :filled] = keys[last, :, :filled]
                values[row, :, :filled] = values[last, :, :filled]
            self.lengths[row] = filled
            self.keys[row] = self.keys[last]
        self.keys.pop()
        self.lengths[last] = 0

    def clear(self) -> None:
        """Every sequence leaves."""
        self.keys.clear()
        self.lengths[:] = 0

    # -- one step --------------------------------------------------------------------------------
    def step(self, tokens) -> np.ndarray:
        """Feed ``tokens`` (one id per row, in the order of ``keys``) at each row's own position;
        returns the host logits (rows, V) predicting each row's next token."""
        r = self.rows
        if r == 0:
            raise ValueError("DecodeBatch.step: the batch is empty; add() sequences first")
        if len(tokens) != r:
            raise ValueError(f"DecodeBatch.step: {len(tokens)} tokens for {r} rows; expected one per row")
        positions = self.lengths[:r].copy()                      # host (R,): where each token goes
        full = [self.keys[i] for i in range(r) if positions[i] >= self.capacity]
        if full:
            raise ValueError(f"DecodeBatch.step: sequences {full} already fill the capacity of {self.capacity} "
                             "positions; remove them first")
        ids = np.asarray(tokens, dtype=np.int64).reshape(r, 1)   # host: (R, 1) checked like the model does
        v = self.model.config.vocab_size
        if ids.min() < 0 or ids.max() >= v:
            raise ValueError(f"DecodeBatch.step: tokens hold ids outside [0, vocab_size={v})")
        with no_grad(), _eval_mode(self.model):
            logits = self._forward(to_device(ids, self.device), positions)
        self.lengths[:r] += 1
        return to_numpy(logits.data[:, 0])                       # (R, V)

    def _forward(self, ids, positions: np.ndarray) -> Tensor:
        """GPT.forward for one new token per row at per-row positions: ids (R, 1) -> logits (R, 1, V)."""
        model, xp = self.model, self.xp
        r = ids.shape[0]
        where = to_device(positions, self.device)                # (R,) on the model's device
        span = int(positions.max()) + 1                          # S: the keys any row may read
        visible = xp.arange(span).reshape(1, span) <= where.reshape(r, 1)    # (R, S): s <= L_r
        mask = visible.reshape(r, 1, 1, span)                    # (R, 1, 1, S) True = attend
        x = model.tok_emb(ids, check_range=False)                # (R, 1, C)
        if isinstance(model.pos_emb, LearnedPositionalEmbedding):
            x = x + Tensor._from_op(model.pos_emb.weight.data[where].reshape(r, 1, -1), None)
        elif isinstance(model.pos_emb, SinusoidalPositionalEmbedding):
            x = x + Tensor._from_op(model.pos_emb.table[where].reshape(r, 1, -1), None)
        rotation = None
        if model.rotary is not None:                             # (R, 1, 1, D/2) angles of each row's position
            half = model.rotary.cos.shape[1]
            rotation = (model.rotary.cos[where].reshape(r, 1, 1, half),
                        model.rotary.sin[where].reshape(r, 1, 1, half))
        rows = xp.arange(r)
        for block, (keys, values) in zip(model.blocks, self.buffers):
            cache = (keys, values, rows, where, span, mask, rotation)
            if block.pre_norm:                                   # Block.forward, eval mode (no dropout)
                x = x + self._attention(block.attn, block.norm1(x), *cache)
                x = x + block.mlp(block.norm2(x))
            else:
                x = block.norm1(x + self._attention(block.attn, x, *cache))
                x = block.norm2(x + block.mlp(x))
        if model.norm_f is not None:
            x = model.norm_f(x)
        if model.lm_head is None:
            return F.linear(x, model.tok_emb.weight)             # (R, 1, V)
        return model.lm_head(x)

    @staticmethod
    def _attention(attn, h: Tensor, keys, values, rows, where, span: int, mask, rotation) -> Tensor:
        """One layer's attention for h (R, 1, C): q, k, v of the new tokens, k and v written at
        each row's position, q attending over its row's positions 0..L_r -> (R, 1, C)."""
        r = h.shape[0]
        q = attn._heads(attn.q_proj(h), attn.n_head)             # (R, H, 1, D)
        k = attn._heads(attn.k_proj(h), attn.n_kv_head)          # (R, H_kv, 1, D)
        v = attn._heads(attn.v_proj(h), attn.n_kv_head)
        q_data, k_data = q.data, k.data
        if rotation is not None:
            q_data = Rope(*rotation).forward(q_data)             # row r rotated by L_r's angles
            k_data = Rope(*rotation).forward(k_data)
        keys[rows, :, where] = k_data[:, :, 0]                   # (R, H_kv, D) at (r, :, L_r)
        values[rows, :, where] = v.data[:, :, 0]
        k_all = Tensor._from_op(keys[:r, :, :span], None)        # (R, H_kv, S, D) views
        v_all = Tensor._from_op(values[:r, :, :span], None)
        y = F.scaled_dot_product_attention(Tensor._from_op(q_data, None), k_all, v_all, attn_mask=mask)
        y = F.transpose(y, (0, 2, 1, 3))                         # (R, 1, H, D)
        y = F.reshape(y, (r, 1, attn.n_embd))                    # (R, 1, C)
        return attn.o_proj(y)


# ---------------------------------------------------------------------------------------------
# Sampling many rows, each with its own sampler
# ---------------------------------------------------------------------------------------------
def nucleus(scaled, top_p: float):
    """The top-p candidates of one row of scaled logits l / τ (V,) float64, without sorting all V:
    (ids, probs), ids most likely first (ties: the smaller id first, as a stable sort orders them),
    the smallest prefix whose probability reaches ``top_p``, probs renormalised over it.

    p = exp(l - max l) / Σ exp(l - max l) is computed over the whole row; the k most likely ids
    (``argpartition``, k = 64, then x4 while needed) are sorted by (-l, id), and the prefix is
    accepted once its mass reaches top_p before the k-th id (and strictly above the k-th value,
    so ids tied at the cut cannot be missing). It is the candidate set of
    :func:`~minillm.generation.sampling.candidates` (top_k None), whose full stable sort of V
    values cost 0.3 ms a row (a third of a 16-row decode step of the main job's model); the
    probabilities are the same up to the order of the float sum that normalises them."""
    v = scaled.shape[0]
    weights = np.exp(scaled - scaled.max())                      # host: (V,) unnormalised p
    total = weights.sum()
    k = min(64, v)
    while True:
        top = np.arange(v) if k >= v else np.argpartition(-scaled, k - 1)[:k]   # host: the k largest
        order = top[np.lexsort((top, -scaled[top]))]             # host: by value, then id
        mass = np.cumsum(weights[order]) / total                 # host: (k,) prefix masses
        keep = min(int(np.searchsorted(mass, top_p)) + 1, order.shape[0])   # host: smallest prefix
        if k >= v or (keep < k and scaled[order[keep - 1]] > scaled[order[k - 1]]):
            ids = order[:keep]
            return ids, weights[ids] / total / mass[keep - 1]
        k *= 4


def choose_rows(samplers: list, logits) -> list[int]:
    """One token per row of the host logits (R, V): row i as ``samplers[i].choose([0], logits[i:i+1])``
    (each a one-row :class:`~minillm.generation.sampling.Sampler`) would choose it.

    Rows whose samplers share temperature and top-p, with no top-k and no repetition penalty (the
    usual server request), are filtered together: one float64 conversion and NaN check, the
    softmax over (G, V) at once, or with top-p < 1 the nucleus found by partial selection
    (:func:`nucleus`); then each row draws from its own generator exactly as
    :func:`~minillm.generation.sampling.draw` does. The candidates and the draw are the per-row
    path's; the probabilities may differ from it in the last bits (the normalising sum is taken
    in another order), which changes a token only when the uniform draw falls within that
    rounding of a boundary (tests/generation/test_batch.py finds the same tokens). Other rows, and
    logits holding NaN (so the per-row path raises its error), go through ``choose`` itself.
    The server samples every row here, alone or batched, so a seeded request repeats exactly.
    """
    from minillm.generation.sampling import draw  # noqa: PLC0415

    tokens: list[int | None] = [None] * len(samplers)
    groups: dict[tuple, list[int]] = {}
    for i, sampler in enumerate(samplers):
        if sampler.penalty is None and sampler.top_k is None:
            groups.setdefault((sampler.temperature, sampler.top_p), []).append(i)
        else:
            tokens[i] = sampler.choose([0], logits[i:i + 1])[0]
    for (temperature, top_p), rows in groups.items():
        block = logits[rows].astype(np.float64)                 # (G, V) host
        if np.isnan(block).any():                                # host: the per-row path names the rows
            for i in rows:
                tokens[i] = samplers[i].choose([0], logits[i:i + 1])[0]
            continue
        if temperature == 0.0:
            greedy = np.argmax(block, axis=-1).tolist()          # host: the logits are host arrays here
            for i, token in zip(rows, greedy):
                tokens[i] = int(token)
            continue
        scaled = block / temperature                             # (G, V)
        if top_p is not None and top_p < 1.0:
            for g, i in enumerate(rows):
                tokens[i] = draw(*nucleus(scaled[g], top_p), samplers[i].generators[0])
            continue
        probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))   # host: (G, V)
        probs /= probs.sum(axis=-1, keepdims=True)
        ids = np.arange(scaled.shape[1])                         # host: every id
        for g, i in enumerate(rows):
            tokens[i] = draw(ids, probs[g], samplers[i].generators[0])
    return tokens
