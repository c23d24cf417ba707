"""Padded SFT and DPO batches (host NumPy) and seeded batch samplers that resume exactly.

``sft_batch`` and ``dpo_batch`` return host NumPy int64 arrays; targets hold ``IGNORE_INDEX``
(-100, what ``F.cross_entropy(..., ignore_index=-100)`` skips) wherever a position is not trained.
Rows are right-padded with ``pad_id`` to the longest row of the batch (capped at ``block_size``):
the model is causal, so padding after a sequence never changes the real positions, and its targets
are -100. Any valid token id works as ``pad_id`` (the ``<|end|>`` id is a natural choice).
"""
from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

IGNORE_INDEX = -100


class RenderedPair(NamedTuple):
    """Token ids of a preference pair: ``prompt_ids`` ends with ``<|assistant|>``; ``chosen_ids`` and
    ``rejected_ids`` are the two replies as the model produces them (content then ``<|end|>``)."""
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def _check_list(items, name: str) -> list:
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{name} has type {type(items).__name__}; expected a list")
    if not items:
        raise ValueError(f"{name} is empty; expected at least one item (an empty data file cannot be loaded)")
    return list(items)


# ------------------------------------------------------------------------------------------------
# batches
# ------------------------------------------------------------------------------------------------

def sft_batch(examples_rendered, block_size: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets for a batch of rendered SFT examples ``[(ids, loss_mask), ...]``.

    For an example of L tokens: ``x = ids[:-1]``, ``y[t] = ids[t+1]`` if ``loss_mask[t+1]`` else -100.
    Truncation: an example longer than ``block_size + 1`` tokens keeps its LAST ``block_size + 1``
    tokens (the start of the conversation is dropped, so the final answer and its ``<|end|>`` stay).
    Shapes: x, y are (B, T) int64 with ``T = min(block_size, max L - 1)``; shorter rows are padded on
    the right with ``pad_id`` in x and -100 in y.

    Raises ValueError when every target of the batch is -100 (the mean loss would be 0/0 = NaN).
    """
    examples = _check_list(examples_rendered, "examples_rendered")
    _check_positive_int("block_size", block_size)
    _check_token_id("pad_id", pad_id)
    rows = []
    for index, example in enumerate(examples):
        ids, mask = _check_rendered_example(example, f"examples_rendered[{index}]")
        rows.append((ids[-(block_size + 1):], mask[-(block_size + 1):]))
    width = max(len(ids) for ids, _ in rows) - 1
    x = np.full((len(rows), width), pad_id, dtype=np.int64)                 # (B, T)
    y = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)           # (B, T)
    for row, (ids, mask) in enumerate(rows):
        n = len(ids) - 1
        x[row, :n] = ids[:-1]
        y[row, :n] = np.where(mask[1:], ids[1:], IGNORE_INDEX)
    if not (y != IGNORE_INDEX).any():
        raise ValueError(f"every target in this batch of {len(rows)} example(s) is masked (no assistant token "
                         f"within the last block_size + 1 = {block_size + 1} tokens); the loss would be NaN. "
                         "Check the loss masks or use a larger block_size")
    return x, y


def dpo_batch(pairs_rendered, block_size: int, pad_id: int) -> dict[str, np.ndarray]:
    """Chosen and rejected sequences of a batch of ``RenderedPair``s, with targets on the replies only.

    Sequence = ``prompt_ids + reply_ids``; ``x = seq[:-1]``, ``y[t] = seq[t+1]`` for targets inside the
    reply (its content and ``<|end|>``), -100 elsewhere, so ``log p(reply | prompt)`` is
    ``sum over t with y[t] != -100 of log_softmax(logits[t])[y[t]]``, one sum per row.

    Truncation keeps both sequences of a pair conditioned on the SAME prompt: when the longer of
    the two exceeds ``block_size + 1`` tokens, the prompt loses tokens from its start until it fits
    (both replies keep all their tokens). A reply longer than ``block_size`` tokens leaves no room
    for the prompt's last token, ``<|assistant|>``, and raises ValueError.

    Returns ``{"chosen_x", "chosen_y", "rejected_x", "rejected_y"}``, each (B, T) int64 with one T
    for all four (the longest row, capped at ``block_size``), so chosen and rejected can be stacked
    into one (2B, T) forward pass. Padding: ``pad_id`` in x, -100 in y.
    """
    pairs = _check_list(pairs_rendered, "pairs_rendered")
    _check_positive_int("block_size", block_size)
    _check_token_id("pad_id", pad_id)
    sequences = []   # (chosen_seq, chosen_prompt_len, rejected_seq, rejected_prompt_len)
    for index, pair in enumerate(pairs):
        prompt, chosen, rejected = _check_rendered_pair(pair, f"pairs_rendered[{index}]")
        longest_reply = max(len(chosen), len(rejected))
        room = block_size + 1 - longest_reply           # prompt tokens that fit beside the longer reply
        if room < 1:
            raise ValueError(f"pairs_rendered[{index}]: a reply of {longest_reply} tokens does not fit "
                             f"block_size={block_size} with at least the <|assistant|> token before it; "
                             f"expected replies of at most {block_size} tokens")
        prompt = prompt[-room:]
        sequences.append((prompt + chosen, len(prompt), prompt + rejected, len(prompt)))
    width = max(max(len(c), len(r)) for c, _, r, _ in sequences) - 1
    batch = {}
    for side, offset in (("chosen", 0), ("rejected", 2)):
        x = np.full((len(sequences), width), pad_id, dtype=np.int64)         # (B, T)
        y = np.full((len(sequences), width), IGNORE_INDEX, dtype=np.int64)   # (B, T)
        for row, entry in enumerate(sequences):
            seq, prompt_len = entry[offset], entry[offset + 1]
            n = len(seq) - 1
            x[row, :n] = seq[:-1]
            # Target t is seq[t+1]; it belongs to the reply iff t + 1 >= prompt_len.
            y[row, prompt_len - 1:n] = seq[prompt_len:]
        batch[f"{side}_x"], batch[f"{side}_y"] = x, y
    return batch


def _check_rendered_example(example, where: str) -> tuple[list[int], list[bool]]:
    if not isinstance(example, (tuple, list)) or len(example) != 2:
        raise TypeError(f"{where} has type {type(example).__name__}; expected a pair (ids, loss_mask) as "
                        "returned by ChatTemplate.render")
    ids = _check_id_list(example[0], f"{where} ids")
    mask = [bool(flag) for flag in example[1]]
    if len(ids) != len(mask):
        raise ValueError(f"{where}: ids has {len(ids)} tokens but loss_mask has {len(mask)}; expected equal lengths")
    if len(ids) < 2:
        raise ValueError(f"{where}: {len(ids)} token(s); expected at least 2 (one input and one target)")
    return ids, mask


def _check_rendered_pair(pair, where: str) -> tuple[list[int], list[int], list[int]]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 3:
        raise TypeError(f"{where} has type {type(pair).__name__}; expected a RenderedPair "
                        "(prompt_ids, chosen_ids, rejected_ids)")
    prompt, chosen, rejected = (_check_id_list(ids, f"{where}.{name}")
                                for ids, name in zip(pair, RenderedPair._fields))
    for ids, name in ((prompt, "prompt_ids"), (chosen, "chosen_ids"), (rejected, "rejected_ids")):
        if not ids:
            raise ValueError(f"{where}.{name} is empty; expected at least one token")
    return prompt, chosen, rejected


def _check_id_list(ids, where: str) -> list[int]:
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"{where}: array of shape {ids.shape}, dtype {ids.dtype}; expected 1-D integers")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"{where} has type {type(ids).__name__}; expected a list of int token ids")
    for position, token in enumerate(ids):
        if isinstance(token, bool) or not hasattr(token, "__index__") or token < 0:
            raise ValueError(f"{where}[{position}]={token!r}; expected a non-negative int token id")
    return [int(token) for token in ids]


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}; expected an int >= 1")


def _check_token_id(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r}; expected a non-negative int token id")


# ------------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------------

class _EpochOrder:
    """Which examples each batch takes: every example once per epoch, in a seeded random order.

    Epoch e visits the examples in ``Generator(PCG64([seed, e])).permutation(n)``; a batch that
    reaches the end of an epoch continues with the next epoch's order. The position is the pair
    (epoch, index into that epoch's order; 0 <= index < n): two ints, so the state is tiny and
    JSON-friendly, and a restored sampler draws exactly the batches an uninterrupted one would.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(self.num_examples)

    def next_indices(self) -> list[int]:
        indices: list[int] = []
        while len(indices) < self.batch_size:
            take = min(self.batch_size - len(indices), self.num_examples - self.position)
            indices += self._order[self.position:self.position + take].tolist()
            self.position += take
            if self.position == self.num_examples:   # roll over now: epoch = completed passes
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return indices

    def restore(self, epoch: int, position: int) -> None:
        self.epoch, self.position = epoch, position
        self._order = self._permutation(epoch)


def _check_sampler_args(name: str, batch_size, block_size, pad_id, seed) -> None:
    for arg, value in (("batch_size", batch_size), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: {arg}={value!r}; expected an int >= 1")
    if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)) or pad_id < 0:
        raise ValueError(f"{name}: pad_id={pad_id!r}; expected a non-negative int token id")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name}: seed={seed!r}; expected an int >= 0")


class _BatchSamplerBase:
    """Shared constructor checks and state handling of the SFT and DPO samplers."""

    kind = ""

    def __init__(self, num_examples: int, batch_size: int, block_size: int, pad_id: int, seed: int,
                 data_crc32: int):
        # The arguments were checked by _check_sampler_args before the examples were.
        self.batch_size, self.block_size = int(batch_size), int(block_size)
        self.pad_id, self.seed = int(pad_id), int(seed)
        self.num_examples = num_examples
        self.data_crc32 = data_crc32
        self.batches_served = 0
        self._order = _EpochOrder(num_examples, self.batch_size, self.seed)

    @property
    def epoch(self) -> int:
        """Completed passes over the data (= the epoch the next example comes from)."""
        return self._order.epoch

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()

    def state_dict(self) -> dict:
        """JSON-serialisable position: epoch and index in its order, batches served, and what it applies to."""
        return {
            "kind": self.kind,
            "epoch": self._order.epoch,
            "position": self._order.position,
            "batches_served": self.batches_served,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "num_examples": self.num_examples,
            "data_crc32": self.data_crc32,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; the data, seed, batch size and block size must match."""
        name = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"{name}.load_state_dict: state has type {type(state).__name__}; expected a dict")
        required = ("kind", "epoch", "position", "batches_served", "seed", "batch_size", "block_size",
                    "num_examples", "data_crc32")
        missing = [key for key in required if key not in state]
        if missing:
            raise ValueError(f"{name}.load_state_dict: state lacks keys {missing}; expected a state_dict() "
                             f"of {name}")
        for key in ("kind", "seed", "batch_size", "block_size", "num_examples", "data_crc32"):
            if state[key] != getattr(self, key):
                raise ValueError(f"{name}.load_state_dict: saved {key}={state[key]!r} but this sampler has "
                                 f"{key}={getattr(self, key)!r}; the saved position would mean other batches")
        epoch, position = state["epoch"], state["position"]
        if (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0 or isinstance(position, bool)
                or not isinstance(position, int) or not 0 <= position < self.num_examples):
            raise ValueError(f"{name}.load_state_dict: epoch={epoch!r}, position={position!r}; expected ints with "
                             f"epoch >= 0 and 0 <= position < {self.num_examples}")
        self._order.restore(epoch, position)
        self.batches_served = int(state["batches_served"])


class SFTBatchSampler(_BatchSamplerBase):
    """Seeded SFT batches ``(x, y)`` (see ``sft_batch``) from rendered examples, resumable exactly.

    Every example is used once per epoch in a seeded random order (see ``_EpochOrder``).
    At construction every example is checked to keep at least one supervised target after
    truncation to ``block_size``, so ``next_batch`` never meets an all-masked batch mid-run.
    ``num_truncated`` counts the examples longer than ``block_size + 1`` (their starts are dropped).
    """

    kind = "sft"

    def __init__(self, rendered, batch_size: int, block_size: int, pad_id: int, seed: int = 0):
        _check_sampler_args("SFTBatchSampler", batch_size, block_size, pad_id, seed)
        examples = _check_list(rendered, "rendered")
        checked = [_check_rendered_example(example, f"rendered[{index}]") for index, example in enumerate(examples)]
        for index, (ids, mask) in enumerate(checked):
            # After truncation the example's targets are mask[1:] of its last block_size + 1 tokens.
            if not any(mask[-(block_size + 1):][1:]):
                raise ValueError(f"rendered[{index}] has no supervised target within its last block_size + 1 = "
                                 f"{block_size + 1} tokens; expected every example to train on something")
        crc = 0   # a fingerprint of the data, so a state is never restored onto other examples
        for ids, mask in checked:
            crc = zlib.crc32(np.asarray([len(ids)] + ids, dtype=np.int64).tobytes(), crc)
            crc = zlib.crc32(np.asarray(mask, dtype=np.bool_).tobytes(), crc)
        super().__init__(len(checked), batch_size, block_size, pad_id, seed, crc)
        self.examples = checked
        self.num_truncated = sum(len(ids) > self.block_size + 1 for ids, _ in checked)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``(x, y)``: (batch_size, T) int64 each, T <= block_size."""
        indices = self._order.next_indices()
        self.batches_served += 1
        return sft_batch([self.examples[i] for i in indices], self.block_size, self.pad_id)


class DPOBatchSampler(_BatchSamplerBase):
    """Seeded DPO batches (the dict of ``dpo_batch``) from ``RenderedPair``s, resumable exactly.

    Replies longer than ``block_size`` tokens are rejected at construction (see ``dpo_batch``).
    """

    kind = "dpo"

    def __init__(self, rendered, batch_size: int, block_size: int, pad_id: int, seed: int = 0):
        _check_sampler_args("DPOBatchSampler", batch_size, block_size, pad_id, seed)
        pairs = _check_list(rendered, "rendered")
        checked = [RenderedPair(*_check_rendered_pair(pair, f"rendered[{index}]")) for index, pair in enumerate(pairs)]
        for index, pair in enumerate(checked):
            longest = max(len(pair.chosen_ids), len(pair.rejected_ids))
            if longest > block_size:
                raise ValueError(f"rendered[{index}] has a reply of {longest} tokens; expected at most "
                                 f"block_size={block_size} so the prompt's <|assistant|> token fits before it")
        crc = 0   # a fingerprint of the data, so a state is never restored onto other pairs
        for pair in checked:
            for ids in pair:
                crc = zlib.crc32(np.asarray([len(ids)] + ids, dtype=np.int64).tobytes(), crc)
        super().__init__(len(checked), batch_size, block_size, pad_id, seed, crc)
        self.pairs = checked
        self.num_truncated = sum(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) > self.block_size + 1
                                 for p in checked)

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next batch: ``{"chosen_x", "chosen_y", "rejected_x", "rejected_y"}``, (batch_size, T) int64."""
        indices = self._order.next_indices()
        self.batches_served += 1
        return dpo_batch([self.pairs[i] for i in indices], self.block_size, self.pad_id)
