"""Choosing the next token from the logits: greedy, temperature, top-k, top-p, repetition penalty.

The choice is made on the host, on a float64 copy of the last position's logits l (B, V)
(``backend.to_numpy``: one (B, V) transfer per step on a GPU, tiny next to the forward pass), so
one seeded host generator gives the same tokens on every device. Per row and step, in this order
(the order of Hugging Face's logits processors):

1. repetition penalty θ (CTRL, Keskar et al. 2019), for every id already in the row (its prompt
   and what was generated so far): l_i <- l_i / θ if l_i > 0 else l_i · θ. θ > 1 makes repeats
   less likely, θ < 1 more likely, θ = 1 (or None) changes nothing.
2. temperature τ = 0: greedy, the argmax (ties go to the lowest id); no random number is drawn,
   and top-k/top-p cannot change the choice (the argmax is always kept). Otherwise τ >= 1e-3
   (``MIN_TEMPERATURE``): below it sampling is greedy to float64 precision anyway (logits 0.04
   apart already differ in probability by e^40 > 1e17), and a tiny τ such as 1e-320 makes l / τ
   overflow to inf and the probabilities NaN.
3. l <- l / τ.
4. top-k: keep the k largest logits (exactly k ids; ties at the k-th value are broken by
   ``argpartition``'s fixed order). k >= V keeps every id.
5. p = softmax over the kept ids (computed stably: exp(l - max l) / sum).
6. top-p, the nucleus (Holtzman et al. 2020): sort the kept probabilities descending and keep the
   smallest prefix whose mass reaches top_p (the most likely id always stays); renormalise.
7. draw u ~ U[0, 1) from the row's generator; the token is the first id (in that order) whose
   cumulative probability exceeds u · sum(p).

Random numbers (``seed``): None draws from minillm's global generator (``minillm.manual_seed``);
an int uses a local PCG64 generator seeded with it (``numpy.random.Generator``), shared by the
rows, one draw per unfinished row per step, in row order, so the result does not depend on the
global state;
a list of ints (one per row) gives each row its own generator, so a row samples exactly as it
would alone with that seed.
"""
from __future__ import annotations

import math

import numpy as np

from minillm.backend import generator as global_generator
from minillm.backend import get_array_module
from minillm.errors import NumericalError

MIN_TEMPERATURE = 1e-3    # the smallest temperature above 0 (module docstring, step 2)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_sampling_args(temperature, top_k, top_p, repetition_penalty) -> None:
    """Raise ValueError/TypeError naming the argument, its value and what is expected."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature={temperature!r}; expected a finite number >= 0 (0 = greedy)")
    if 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(temperature_too_small("temperature", temperature))
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k={top_k!r}; expected None or an int >= 1")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.floating))
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p={top_p!r}; expected None or a probability in (0, 1]")
    if repetition_penalty is not None and (
            isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, (int, float, np.floating))
            or not math.isfinite(repetition_penalty) or repetition_penalty <= 0):
        raise ValueError(f"repetition_penalty={repetition_penalty!r}; expected None or a finite number > 0 "
                         "(1 = off, > 1 discourages repeats)")


def temperature_too_small(where: str, temperature) -> str:
    """The message for a temperature in (0, MIN_TEMPERATURE)."""
    return (f"{where}={temperature!r} is too small; expected 0 (greedy) or a temperature >= {MIN_TEMPERATURE:g}: "
            "below that sampling is greedy to float64 precision anyway, and tiny values overflow the logits")


def make_generators(seed, n_rows: int) -> list:
    """One generator per row (see the module docstring for the three kinds of ``seed``)."""
    if seed is None:
        return [global_generator()] * n_rows
    if _is_int(seed):
        if seed < 0:
            raise ValueError(f"seed={seed!r}; expected None, an int >= 0 or a list of {n_rows} of them")
        shared = np.random.Generator(np.random.PCG64(int(seed)))  # host: the draw happens on the host
        return [shared] * n_rows
    if isinstance(seed, (list, tuple)) and len(seed) == n_rows and all(_is_int(s) and s >= 0 for s in seed):
        return [np.random.Generator(np.random.PCG64(int(s))) for s in seed]  # host: one per row
    raise ValueError(f"seed={seed!r:.80}; expected None, an int >= 0, or a list of {n_rows} ints >= 0 "
                     "(one per prompt)")


def apply_repetition_penalty(logits, seen, penalty: float):
    """CTRL's rule on the ids where ``seen`` (B, V) is True: l / θ where l > 0, l · θ elsewhere.
    logits (B, V) -> a new (B, V) array."""
    xp = get_array_module(logits)
    penalized = xp.where(logits > 0, logits / penalty, logits * penalty)     # (B, V)
    return xp.where(seen, penalized, logits)


def candidates(row, temperature: float, top_k: int | None, top_p: float | None):
    """The ids that may be drawn and their probabilities, for one row of logits (V,) with
    temperature > 0: steps 3-6 of the module docstring. Returns (ids (N,), probs (N,))."""
    xp = get_array_module(row)
    scaled = row / temperature                                   # (V,)
    v = scaled.shape[0]
    if top_k is not None and top_k < v:
        ids = xp.argpartition(-scaled, top_k - 1)[:top_k]        # (k,) the k largest, unordered
    else:
        ids = xp.arange(v)
    values = scaled[ids]
    if top_p is not None and top_p < 1.0:
        order = xp.argsort(-values, kind="stable")               # most likely first
        ids, values = ids[order], values[order]
    probs = xp.exp(values - values.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        mass = xp.cumsum(probs)
        keep = min(int(xp.searchsorted(mass, top_p)) + 1, probs.shape[0])   # smallest prefix reaching top_p
        ids, probs = ids[:keep], probs[:keep] / mass[keep - 1]
    return ids, probs


def draw(ids, probs, rng) -> int:
    """The id at which the cumulative probability first exceeds u · sum(probs), u ~ U[0, 1)."""
    xp = get_array_module(probs)
    cdf = xp.cumsum(probs)
    index = int(xp.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(ids[min(index, ids.shape[0] - 1)])


class Sampler:
    """The per-row state of sampling: each row's generator and, with a repetition penalty, the
    (rows, V) mask of the ids seen so far (host arrays).

    ``choose(rows, logits)`` picks one token for each listed row from its logits (len(rows), V)
    (a host array) and marks the chosen tokens as seen.
    """

    def __init__(self, prompts: list[list[int]], vocab_size: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 repetition_penalty: float | None = None, seed=None):
        check_sampling_args(temperature, top_k, top_p, repetition_penalty)
        self.temperature, self.top_k, self.top_p = float(temperature), top_k, top_p
        self.penalty = None if repetition_penalty in (None, 1, 1.0) else float(repetition_penalty)
        self.generators = make_generators(seed, len(prompts))
        self.seen = None
        if self.penalty is not None:
            self.seen = np.zeros((len(prompts), vocab_size), dtype=bool)  # host: per-row seen ids
            for row, prompt in enumerate(prompts):
                self.seen[row, prompt] = True

    def choose(self, rows: list[int], logits) -> list[int]:
        """One token id per row of ``logits`` (len(rows), V), a host float array."""
        xp = get_array_module(logits)
        logits = logits.astype(np.float64)                       # (R, V) exact filtering and softmax
        if xp.isnan(logits).any():
            bad = [rows[i] for i in range(len(rows)) if bool(xp.isnan(logits[i]).any())]
            raise NumericalError(f"generate: the model produced NaN logits for prompt rows {bad}; its weights "
                                 "are broken: check the checkpoint (minillm.debug.detect_anomaly finds where)")
        if self.penalty is not None:
            logits = apply_repetition_penalty(logits, self.seen[rows], self.penalty)
        if self.temperature == 0.0:
            tokens = [int(i) for i in xp.argmax(logits, axis=-1)]
        else:
            tokens = []
            for i, row in enumerate(rows):
                ids, probs = candidates(logits[i], self.temperature, self.top_k, self.top_p)
                tokens.append(draw(ids, probs, self.generators[row]))
        if self.seen is not None:
            self.seen[rows, tokens] = True
        return tokens
