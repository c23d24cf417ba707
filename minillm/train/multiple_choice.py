"""Multiple-choice evaluation by log-likelihood, the way lm-evaluation-harness and llm.c score
HellaSwag: the model picks the choice it finds most probable after the context.

Task file (JSONL, one question per line; blank lines are skipped, other keys ignored)::

    {"context": "The cat sat on the", "choices": [" mat", " moon", " idea"], "label": 0}

Scoring one question
--------------------
Context and choice are tokenized separately and concatenated (as lm-evaluation-harness did for
years and llm.c's HellaSwag does), and whitespace at the end of the context is moved to the front
of every choice first, so the space before a word belongs to the word's token (``" mat"``), as it
does in running text. With c = the context's tokens and x_1..x_n a choice's tokens:

    logprob(choice) = sum_i log p(x_i | c, x_1..x_{i-1})

Two predictions per question, each the argmax over the choices (the first on ties):

- ``acc``: by ``logprob`` (favours short choices: every token costs probability).
- ``acc_norm``: by ``logprob / characters``, the scored choice text's length in characters
  (lm-evaluation-harness's ``acc_norm``; for ASCII text that is its bytes). It does not depend on
  the tokenizer. (llm.c divides by the number of tokens instead; not reported here.)

Each accuracy comes with its standard error over the N questions, sqrt(p (1 - p) / (N - 1)) (the
sample standard deviation of the 0/1 scores over sqrt(N), as lm-evaluation-harness reports), and
``chance`` is the accuracy of guessing, the mean of 1 / (number of choices).

Context length: the context keeps its last ``block_size + 1 - m`` tokens, m = the longest
choice of the question in tokens, so every choice is scored after the same context within the
model's window (a choice longer than the window cannot be scored and is an error).
``truncated`` counts the questions whose context was cut.

Batching
--------
With the key/value cache (``use_cache=True``, the default) a question costs two forwards: the
context without its last token once (batch 1, ``only_last``: no output layer over the context),
its keys/values copied to every row of a cache of batch = number of choices, then all choices at
once, each row ``[last context token, x_1 .. x_{n-1}]`` padded on the right. Without the cache
(``use_cache=False``) each row is the whole ``context + choice[:-1]``, and several questions
share one forward (up to ``batch_size`` rows; a question's choices always go together). Right
padding needs no attention mask: attention is causal, so padding after a row's last real token
changes none of its scored logits. Both paths give the same log-probabilities up to float
rounding (tested against one plain forward per choice).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from minillm.autograd import no_grad
from minillm.backend import get_array_module, to_device, to_numpy
from minillm.fileio import read_text_file
from minillm.nn.kv_cache import KVCache
from minillm.serialization import JSONTooDeepError, _reject_duplicate_keys, loads_json_bounded
from minillm.tokenizer.special import END_OF_TEXT

TASK_FIELDS = ("context", "choices", "label")
_TASK_JSON_DEPTH = 2          # {"choices": [...]}: an object holding a list


@dataclass(frozen=True)
class Question:
    """One line of a task file: ``context``, ``choices`` (at least two), ``label`` (the index of
    the right choice) and ``line`` (its line number in the file, for messages)."""

    context: str
    choices: tuple[str, ...]
    label: int
    line: int


# ---------------------------------------------------------------------------------------------
# The task file
# ---------------------------------------------------------------------------------------------
def read_tasks(path: str | os.PathLike) -> list[Question]:
    """The questions of a JSONL task file; a bad line raises ValueError naming the file, the line
    number and the field."""
    path = os.fspath(path)
    source = f"tasks file {path!r}"
    text = read_text_file(path, "tasks file")
    questions = [parse_question(line, f"{source}, line {number}", number)
                 for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not questions:
        raise ValueError(f"{source} holds no questions; expected JSON lines "
                         '{"context": str, "choices": [str, ...], "label": int}')
    return questions


def parse_question(line: str, where: str, number: int = 0) -> Question:
    """One JSON line -> :class:`Question`; ``where`` names it in errors."""
    try:
        data = loads_json_bounded(line, _TASK_JSON_DEPTH, object_pairs_hook=_reject_duplicate_keys)
    except JSONTooDeepError:
        raise ValueError(f"{where}: nests JSON deeper than an object holding a list; expected "
                         '{"context": str, "choices": [str, ...], "label": int}') from None
    except ValueError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc}); expected one object per line") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: is a JSON {type(data).__name__}; expected an object "
                         '{"context": str, "choices": [str, ...], "label": int}')
    missing = [key for key in TASK_FIELDS if key not in data]
    if missing:
        raise ValueError(f"{where}: missing the field {missing[0]!r}; expected the fields {list(TASK_FIELDS)}")
    context, choices, label = data["context"], data["choices"], data["label"]
    if not isinstance(context, str):
        raise ValueError(f"{where}: field 'context' is {type(context).__name__} {context!r:.60}; expected a string")
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError(f"{where}: field 'choices' is {json.dumps(choices)[:80]}; expected a list of at least "
                         "2 strings")
    for index, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice:
            raise ValueError(f"{where}: field 'choices[{index}]' is {choice!r:.60}; expected a non-empty string")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise ValueError(f"{where}: field 'label' is {label!r:.60}; expected an int in [0, {len(choices) - 1}] "
                         "(the index of the right choice)")
    return Question(context, tuple(choices), label, number)


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------
def split_whitespace(context: str, choice: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the front of the choice (see the module docstring)."""
    kept = context.rstrip()
    return kept, context[len(kept):] + choice


def encode_question(tokenizer, question: Question, block_size: int) -> tuple[list[int], list[list[int]], list[int], bool]:
    """``(context ids, ids per choice, characters per choice, truncated)`` for ``question``.

    Text is encoded with ``encode_ordinary`` (task text never becomes control tokens). An empty
    context stands for the start of a document: the ``<|endoftext|>`` token if the tokenizer has
    it. The context is left-truncated as the module docstring says.
    """
    where = f"line {question.line}"
    context_text, _ = split_whitespace(question.context, "")
    continuations = [split_whitespace(question.context, choice)[1] for choice in question.choices]
    context = tokenizer.encode_ordinary(context_text) if context_text else []
    if not context:
        eot = tokenizer.special_tokens.get(END_OF_TEXT)
        if eot is None:
            raise ValueError(f"{where}: field 'context' is {question.context!r}, which has no tokens, and the "
                             f"tokenizer has no {END_OF_TEXT} token to start from; expected a non-empty context")
        context = [eot]
    choices = [tokenizer.encode_ordinary(text) for text in continuations]
    for index, ids in enumerate(choices):
        if not ids:
            raise ValueError(f"{where}: field 'choices[{index}]' encodes to no tokens; expected text")
    longest = max(len(ids) for ids in choices)
    keep = block_size + 1 - longest
    if keep < 1:
        index = max(range(len(choices)), key=lambda i: len(choices[i]))
        raise ValueError(f"{where}: field 'choices[{index}]' is {longest} tokens long, more than the model's "
                         f"context of block_size={block_size} tokens can score; expected shorter choices")
    truncated = len(context) > keep
    return context[-keep:], choices, [len(text) for text in continuations], truncated


# ---------------------------------------------------------------------------------------------
# Log-probabilities
# ---------------------------------------------------------------------------------------------
def gather_logprobs(logits, rows, positions, targets, device: str) -> np.ndarray:
    """log softmax(logits[row, position])[target] for each triple, in float64: a host array.

    ``logits``: the (B, T, V) array of one forward; ``rows``, ``positions``, ``targets``: host
    int arrays of equal length N. Only the N needed rows of V logits are normalised.
    """
    xp = get_array_module(logits)
    picked = logits[to_device(rows, device), to_device(positions, device)].astype(xp.float64)   # (N, V)
    peak = picked.max(axis=-1, keepdims=True)                                                   # (N, 1)
    log_normaliser = peak[:, 0] + xp.log(xp.exp(picked - peak).sum(axis=-1))                    # (N,)
    chosen = picked[xp.arange(picked.shape[0]), to_device(targets, device)]                      # (N,)
    return to_numpy(chosen - log_normaliser)


def _sum_per_choice(logprobs: np.ndarray, lengths: list[int]) -> list[float]:
    ends = np.cumsum(lengths)                                    # host: segment boundaries
    return [float(logprobs[end - length:end].sum()) for end, length in zip(ends, lengths)]


def score_with_cache(model, context: list[int], choices: list[list[int]]) -> list[float]:
    """Summed log-probability of each choice after ``context``: the context's keys/values are
    computed once and shared by all choices (module docstring). Needs ``no_grad``."""
    count, width = len(choices), max(len(ids) for ids in choices)
    cache = KVCache.for_model(model, count, len(context) - 1 + width)
    if len(context) > 1:
        prefix = KVCache.for_model(model, 1, len(context) - 1)
        model(np.array([context[:-1]], dtype=np.int64), kv_cache=prefix, only_last=True)  # host: ids
        for shared, single in zip(cache.layers, prefix.layers):
            shared.keys[:, :, :prefix.length] = single.keys      # (1, H_kv, L-1, D) -> every row
            shared.values[:, :, :prefix.length] = single.values
        cache.advance(prefix.length)
    rows = np.zeros((count, width), dtype=np.int64)              # host: [last context token, choice[:-1]], padded
    rows[:, 0] = context[-1]
    for row, ids in enumerate(choices):
        rows[row, 1:len(ids)] = ids[:-1]
    logits, _ = model(rows, kv_cache=cache)                      # (count, width, V)
    lengths = [len(ids) for ids in choices]
    row_index = np.repeat(np.arange(count), lengths)                       # host: gather indices (ints)
    positions = np.array([p for length in lengths for p in range(length)])  # host: gather indices (ints)
    targets = np.array([token for ids in choices for token in ids])         # host: token ids
    logprobs = gather_logprobs(logits.data, row_index, positions, targets, model.device)
    return _sum_per_choice(logprobs, [len(ids) for ids in choices])


def score_batch(model, items: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
    """Summed log-probabilities for several questions ``(context, choices)`` in one forward
    without the cache: one row ``context + choice[:-1]`` per choice, padded on the right."""
    sequences = [(context, ids) for context, choices in items for ids in choices]
    width = max(len(context) + len(ids) - 1 for context, ids in sequences)
    rows = np.zeros((len(sequences), width), dtype=np.int64)     # host: token ids, padded
    row_index, positions, targets = [], [], []
    for row, (context, ids) in enumerate(sequences):
        full = context + ids[:-1]
        rows[row, :len(full)] = full
        row_index += [row] * len(ids)
        positions += range(len(context) - 1, len(context) - 1 + len(ids))
        targets += ids
    logits, _ = model(rows)                                      # (rows, width, V)
    indices = np.array([row_index, positions, targets], dtype=np.int64)   # host: gather indices and token ids
    logprobs = gather_logprobs(logits.data, indices[0], indices[1], indices[2], model.device)
    sums = iter(_sum_per_choice(logprobs, [len(ids) for _, ids in sequences]))
    return [[next(sums) for _ in choices] for _, choices in items]


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def evaluate_multiple_choice(model, tokenizer, questions: list[Question], use_cache: bool = True,
                             batch_size: int = 16) -> dict:
    """Accuracy and normalised accuracy of ``model`` on ``questions`` (see the module docstring).

    Returns ``{"questions", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance",
    "truncated", "details"}``; ``details`` holds per question its line, label, the two predictions
    and the summed log-probability and character count of every choice. ``batch_size``: rows per
    forward without the cache.
    """
    if not questions:
        raise ValueError("questions is empty; expected at least one question")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive int")
    block_size = model.config.block_size
    encoded = [encode_question(tokenizer, question, block_size) for question in questions]
    was_training = model.training
    model.eval()
    scores: list[list[float]] = []
    try:
        with no_grad():
            if use_cache:
                scores = [score_with_cache(model, context, choices) for context, choices, _, _ in encoded]
            else:
                for group in _groups([len(choices) for _, choices, _, _ in encoded], batch_size):
                    scores += score_batch(model, [encoded[i][:2] for i in group])
    finally:
        model.train(was_training)
    details = []
    for question, (_, _, characters, _), logprobs in zip(questions, encoded, scores):
        per_character = [value / count for value, count in zip(logprobs, characters)]
        details.append({"line": question.line, "label": question.label,
                        "predicted": _first_argmax(logprobs), "predicted_norm": _first_argmax(per_character),
                        "logprobs": logprobs, "characters": characters})
    correct = [d["predicted"] == d["label"] for d in details]
    correct_norm = [d["predicted_norm"] == d["label"] for d in details]
    acc, acc_stderr = _mean_and_stderr(correct)
    acc_norm, acc_norm_stderr = _mean_and_stderr(correct_norm)
    return {"questions": len(questions), "acc": acc, "acc_stderr": acc_stderr, "acc_norm": acc_norm,
            "acc_norm_stderr": acc_norm_stderr,
            "chance": sum(1 / len(q.choices) for q in questions) / len(questions),
            "truncated": sum(truncated for _, _, _, truncated in encoded), "details": details}


def _first_argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)   # max keeps the first of equal values


def _groups(choice_counts: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive questions whose choices add up to at most ``batch_size`` rows (one question at
    least, whatever its size)."""
    groups: list[list[int]] = []
    rows = 0
    for index, count in enumerate(choice_counts):
        if groups and rows + count <= batch_size:
            groups[-1].append(index)
            rows += count
        else:
            groups.append([index])
            rows = count
    return groups


def _mean_and_stderr(scores: list[bool]) -> tuple[float, float | None]:
    n = len(scores)
    mean = sum(scores) / n
    return mean, (math.sqrt(mean * (1 - mean) / (n - 1)) if n > 1 else None)


def format_report(result: dict, source: str) -> str:
    """The table ``minillm eval --tasks`` prints."""
    def cell(value):
        return "-" if value is None else f"{value:.4f}"

    lines = [f"{result['questions']} questions from {source}"
             + (f" ({result['truncated']} contexts left-truncated to the model's window)" if result["truncated"] else ""),
             f"{'metric':<9} {'value':>7} {'stderr':>7}  meaning",
             f"{'acc':<9} {cell(result['acc']):>7} {cell(result['acc_stderr']):>7}  the choice with the highest "
             "summed log-probability is the label",
             f"{'acc_norm':<9} {cell(result['acc_norm']):>7} {cell(result['acc_norm_stderr']):>7}  the same, "
             "log-probability per character of the choice",
             f"{'chance':<9} {cell(result['chance']):>7} {'':>7}  accuracy of guessing"]
    return "\n".join(lines)
