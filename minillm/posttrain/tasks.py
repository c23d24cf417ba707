"""Seeded instruction tasks with program-checked answers, to measure what SFT and DPO change.

No downloads: the words come from the embedded Shakespeare corpus (``corpus_vocabulary``: the
2,000 most common all-lowercase alphabetic words of 3-8 letters), the numbers are 0-99.

Tasks (``TASKS``), each with one or two fixed phrasings, an answer and one systematic, plausible
mistake (the wrong answer a half-trained model tends to give, used for noisy SFT data, for the
rejected side of DPO pairs, and to measure how often a model makes exactly that mistake):

    name        example prompt                               answer            mistake
    first_word  What is the first word of: thou art my lord  thou              art (the second word)
    last_word   What is the last word of: thou art my lord   lord              my (second-to-last)
    word_count  How many words are in: thou art my lord      4                 5 (off by one)
    add         What is 37 + 48?                             85                86 (off by one)
    larger      Which is larger, 37 or 48?                   48                37 (the smaller)
    capitalize  Capitalise the word: lord                    Lord              LORD (all capitals)
    repeat      Repeat the word lord 3 times.                lord lord lord    k + 1 copies
    reverse     Reverse the order of: thou art my lord       lord my art thou  thou art my lord (unchanged)

Word lists hold distinct words (3-8 of them; 3-5 for ``reverse``), ``repeat`` uses k in 2-4. A
mistake always differs from the answer: an instance where they would coincide (``larger`` with
equal numbers) is drawn again. ``check(task, reply)`` is exact match after stripping whitespace.

Held-out split
--------------
``make_pools(split_seed)`` partitions, with its own seed, the vocabulary into train and held-out
words (``HELDOUT_FRACTION`` = 20% held out) and the 5,050 unordered number pairs {a, b} (0 <= a <= b
<= 99) into train and held-out pairs; a prompt shows the pair in either order. Held out are *pairs*,
not digits: every number occurs in both splits, but "37 + 48" and "48 + 37" are both held out, or
both not. Every prompt draws all its words, or its number pair, from one split, so no held-out
prompt can equal a training prompt. ``make_eval_prompts`` uses the held-out split. The partition
depends only on ``split_seed`` (default 0), never on the data seeds, so training data made with any
seed stays disjoint from evaluation prompts made with any other seed.

Randomness: ``random.Random`` seeded with strings such as ``"sft:3"`` (string seeds are hashed with
SHA-512, independent of ``PYTHONHASHSEED``), so the same arguments give the same data on every run
and platform. (Python reserves the right to change ``shuffle``/``sample`` between versions, and
the vocabulary follows the corpus file: regenerate the files rather than mix versions.)
"""
from __future__ import annotations

import functools
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable

from minillm.data.documents import read_text_file
from minillm.fileio import atomic_write_text
from minillm.posttrain.datasets import PreferencePair, read_jsonl_records, save_dpo_jsonl, save_sft_jsonl

HELDOUT_FRACTION = 0.2
NUMBER_RANGE = 100                 # numbers are 0 .. NUMBER_RANGE - 1
# Read-only, since it is a default argument: a caller cannot change it for later calls by accident.
DEFAULT_NOISE = MappingProxyType({"larger": 0.3, "word_count": 0.3, "last_word": 0.3})
SPLITS = ("train", "heldout")
DEFAULT_EVAL_PER_TASK = 300        # held-out prompts per task: a rate near 0.5 is then known to about +-0.06
Z_95 = 1.959963984540054           # the standard normal quantile Phi^-1(0.975) of a two-sided 95% interval
EVAL_FILE_KEYS = ("prompt", "task", "answer", "mistake")

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_CANDIDATES = (
    os.path.join(_PACKAGE_DIR, "data", "corpus", "shakespeare_tragedies.txt"),
    # a source checkout next to the shared data folder (used when the embedded copy is absent)
    os.path.normpath(os.path.join(_PACKAGE_DIR, "..", "..", "shared", "data", "shakespeare_tragedies.txt")),
)
_WORD_PATTERN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")   # "thou'rt" stays one token and is then rejected


# ------------------------------------------------------------------------------------------------
# answers and mistakes (plain functions, checked by hand in the tests)
# ------------------------------------------------------------------------------------------------

def answer_first_word(words: list[str]) -> str:
    return words[0]


def mistake_first_word(words: list[str]) -> str:
    return words[1]                     # one position too far


def answer_last_word(words: list[str]) -> str:
    return words[-1]


def mistake_last_word(words: list[str]) -> str:
    return words[-2]                    # one position too early


def answer_word_count(words: list[str]) -> str:
    return str(len(words))


def mistake_word_count(words: list[str]) -> str:
    return str(len(words) + 1)          # off by one


def answer_add(a: int, b: int) -> str:
    return str(a + b)


def mistake_add(a: int, b: int) -> str:
    return str(a + b + 1)               # off by one


def answer_larger(a: int, b: int) -> str:
    return str(max(a, b))


def mistake_larger(a: int, b: int) -> str:
    return str(min(a, b))               # the smaller one


def answer_capitalize(word: str) -> str:
    return word[:1].upper() + word[1:]


def mistake_capitalize(word: str) -> str:
    return word.upper()                 # every letter instead of the first


def answer_repeat(word: str, k: int) -> str:
    return " ".join([word] * k)


def mistake_repeat(word: str, k: int) -> str:
    return " ".join([word] * (k + 1))   # one copy too many


def answer_reverse(words: list[str]) -> str:
    return " ".join(reversed(words))


def mistake_reverse(words: list[str]) -> str:
    return " ".join(words)              # copied unchanged


# ------------------------------------------------------------------------------------------------
# vocabulary and split pools
# ------------------------------------------------------------------------------------------------

def corpus_vocabulary(n_words: int = 2000, min_length: int = 3, max_length: int = 8,
                      path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The ``n_words`` most common words of the corpus that are all-lowercase ASCII letters with
    ``min_length``..``max_length`` letters, most common first (ties in alphabetical order).

    Words are maximal runs of letters (apostrophes inside a word keep it whole, so ``"thou'rt"`` is
    one word and is rejected; it never yields a fragment ``"rt"``). Capitalised forms are not counted,
    which keeps names (``Hamlet``) and sentence starts out. ``path`` defaults to the embedded corpus,
    or to ``shared/data`` beside a source checkout when the embedded copy is missing.
    """
    for name, value in (("n_words", n_words), ("min_length", min_length), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; expected an int >= 1")
    if min_length > max_length:
        raise ValueError(f"min_length={min_length} > max_length={max_length}; expected min_length <= max_length")
    if path is None:
        path = next((candidate for candidate in CORPUS_CANDIDATES if os.path.isfile(candidate)), None)
        if path is None:
            raise FileNotFoundError(f"no Shakespeare corpus found at {list(CORPUS_CANDIDATES)}; pass path=")
    return _vocabulary(os.path.abspath(os.fspath(path)), n_words, min_length, max_length)


@functools.lru_cache(maxsize=8)
def _vocabulary(path: str, n_words: int, min_length: int, max_length: int) -> tuple[str, ...]:
    counts = Counter(token for token in _WORD_PATTERN.findall(read_text_file(path))
                     if token.isalpha() and token.islower() and min_length <= len(token) <= max_length)
    if len(counts) < n_words:
        raise ValueError(f"corpus {path!r} has {len(counts)} distinct lowercase words of {min_length}-{max_length} "
                         f"letters; expected at least n_words={n_words}")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(word for word, _count in ranked[:n_words])


@dataclass(frozen=True)
class TaskPools:
    """The words and unordered number pairs (a <= b) one split may use."""
    words: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]


def make_pools(split_seed: int = 0) -> dict[str, TaskPools]:
    """``{"train": TaskPools, "heldout": TaskPools}``: a seeded partition of the vocabulary and of the
    number pairs, ``HELDOUT_FRACTION`` of each held out (see the module docstring)."""
    _check_seed("split_seed", split_seed)
    return _pools(split_seed)


@functools.lru_cache(maxsize=4)
def _pools(split_seed: int) -> dict[str, TaskPools]:
    rng = random.Random(f"split:{split_seed}")
    words = sorted(corpus_vocabulary())
    rng.shuffle(words)
    pairs = [(a, b) for a in range(NUMBER_RANGE) for b in range(a, NUMBER_RANGE)]
    rng.shuffle(pairs)
    n_words, n_pairs = round(HELDOUT_FRACTION * len(words)), round(HELDOUT_FRACTION * len(pairs))
    # Sorted within each pool so a pool's contents, not the shuffle, define what a draw sees.
    return {
        "heldout": TaskPools(tuple(sorted(words[:n_words])), tuple(sorted(pairs[:n_pairs]))),
        "train": TaskPools(tuple(sorted(words[n_words:])), tuple(sorted(pairs[n_pairs:]))),
    }


# ------------------------------------------------------------------------------------------------
# task specs and instances
# ------------------------------------------------------------------------------------------------

def _draw_words(lowest: int, highest: int) -> Callable[[random.Random, TaskPools], dict]:
    def draw(rng: random.Random, pools: TaskPools) -> dict:
        return {"words": rng.sample(pools.words, rng.randint(lowest, highest))}   # distinct words
    return draw


def _draw_word(rng: random.Random, pools: TaskPools) -> dict:
    return {"word": rng.choice(pools.words)}


def _draw_word_and_k(rng: random.Random, pools: TaskPools) -> dict:
    return {"word": rng.choice(pools.words), "k": rng.randint(2, 4)}


def _draw_pair(rng: random.Random, pools: TaskPools) -> dict:
    low, high = rng.choice(pools.pairs)
    return {"a": low, "b": high} if rng.random() < 0.5 else {"a": high, "b": low}


@dataclass(frozen=True)
class TaskSpec:
    """A task kind: its phrasings (``str.format`` templates), how to draw its arguments from a
    split's pools, and its answer and mistake functions (called as ``answer(**args)``)."""
    name: str
    phrasings: tuple[str, ...]
    draw: Callable[[random.Random, TaskPools], dict]
    answer: Callable[..., str]
    mistake: Callable[..., str]


TASKS = (
    TaskSpec("first_word", ("What is the first word of: {words}", "First word of: {words}"),
             _draw_words(3, 8), answer_first_word, mistake_first_word),
    TaskSpec("last_word", ("What is the last word of: {words}", "Last word of: {words}"),
             _draw_words(3, 8), answer_last_word, mistake_last_word),
    TaskSpec("word_count", ("How many words are in: {words}", "Count the words: {words}"),
             _draw_words(3, 8), answer_word_count, mistake_word_count),
    TaskSpec("add", ("What is {a} + {b}?", "Add {a} and {b}."), _draw_pair, answer_add, mistake_add),
    TaskSpec("larger", ("Which is larger, {a} or {b}?", "What is the larger of {a} and {b}?"),
             _draw_pair, answer_larger, mistake_larger),
    TaskSpec("capitalize", ("Capitalise the word: {word}", "Write {word} with a capital first letter."),
             _draw_word, answer_capitalize, mistake_capitalize),
    TaskSpec("repeat", ("Repeat the word {word} {k} times.", "Say {word} {k} times."),
             _draw_word_and_k, answer_repeat, mistake_repeat),
    TaskSpec("reverse", ("Reverse the order of: {words}", "Write in reverse order: {words}"),
             _draw_words(3, 5), answer_reverse, mistake_reverse),
)
TASK_NAMES = tuple(spec.name for spec in TASKS)
_SPEC_BY_NAME = {spec.name: spec for spec in TASKS}


@dataclass(frozen=True)
class Task:
    """One task instance: ``prompt`` (the user turn), the correct ``answer``, the task's systematic
    ``mistake`` for these arguments, and ``args`` (what was drawn; empty when loaded from a file)."""
    name: str
    prompt: str
    answer: str
    mistake: str
    args: dict = field(default_factory=dict, compare=False)

    def check(self, reply: str) -> bool:
        return check(self, reply)


def check(task: Task, reply: str) -> bool:
    """Exact match: ``reply.strip() == task.answer``."""
    if not isinstance(reply, str):
        raise TypeError(f"reply={reply!r:.80} has type {type(reply).__name__}; expected str")
    return reply.strip() == task.answer


def make_task(spec: TaskSpec, rng: random.Random, pools: TaskPools, max_draws: int = 100) -> Task:
    """Draw one instance of ``spec`` from ``pools``; drawn again while its mistake equals its answer."""
    for _ in range(max_draws):
        args = spec.draw(rng, pools)
        answer, mistake = spec.answer(**args), spec.mistake(**args)
        if mistake != answer:
            break
    else:
        raise RuntimeError(f"task {spec.name!r}: {max_draws} draws all had mistake == answer; the pools are "
                           "too small for this task")
    fields = {key: " ".join(value) if key == "words" else value for key, value in args.items()}
    prompt = rng.choice(spec.phrasings).format(**fields)
    return Task(spec.name, prompt, answer, mistake, args)


def _select_tasks(tasks) -> tuple[TaskSpec, ...]:
    if tasks is None:
        return TASKS
    if isinstance(tasks, str) or not isinstance(tasks, (list, tuple, set, frozenset)):
        raise TypeError(f"tasks={tasks!r}; expected a list of task names from {list(TASK_NAMES)} or None (all)")
    unknown = [name for name in tasks if name not in _SPEC_BY_NAME]
    if unknown or not tasks:
        raise ValueError(f"tasks={sorted(tasks, key=str)} (unknown: {unknown}); expected a non-empty list of "
                         f"names from {list(TASK_NAMES)}")
    return tuple(spec for spec in TASKS if spec.name in tasks)   # TASKS order: independent of set order


def _check_seed(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r}; expected an int >= 0")


def _check_count(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}; expected an int >= {minimum}")


def _split_pools(split: str, split_seed: int) -> TaskPools:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {list(SPLITS)}")
    return make_pools(split_seed)[split]


def _balanced_tasks(n: int, specs: tuple[TaskSpec, ...], rng: random.Random) -> list[TaskSpec]:
    """``n`` task kinds, as equal in number as possible (counts differ by at most one), shuffled."""
    order = [specs[index % len(specs)] for index in range(n)]
    rng.shuffle(order)
    return order


# ------------------------------------------------------------------------------------------------
# data sets
# ------------------------------------------------------------------------------------------------

def make_sft_examples(n: int, seed: int, split: str = "train", noisy_tasks: Mapping[str, float] | None = None,
                      tasks=None, split_seed: int = 0) -> list[dict]:
    """``n`` SFT examples ``{"messages": [user, assistant], "meta": {"task", "answer", "corrupted"}}``.

    Task kinds are balanced (counts differ by at most one). ``noisy_tasks`` maps a task name to a
    share s in [0, 1]: of the m examples of that task, exactly ``floor(s * m + 0.5)``, chosen at
    random, get the task's mistake as the assistant reply (``meta["corrupted"] = True``;
    ``meta["answer"]`` keeps the correct answer). ``DEFAULT_NOISE`` is a ready-made setting; a named
    task that ``tasks`` leaves out has no examples, so nothing of it is corrupted.
    """
    _check_count("n", n)
    _check_seed("seed", seed)
    specs = _select_tasks(tasks)
    pools = _split_pools(split, split_seed)
    noise = _check_noise(noisy_tasks, specs)
    rng = random.Random(f"sft:{seed}")
    instances = [make_task(spec, rng, pools) for spec in _balanced_tasks(n, specs, rng)]
    corrupted: set[int] = set()
    for name, share in sorted(noise.items()):   # sorted: the draws do not depend on the dict's order
        positions = [index for index, task in enumerate(instances) if task.name == name]
        corrupted.update(rng.sample(positions, int(share * len(positions) + 0.5)))
    examples = []
    for index, task in enumerate(instances):
        is_corrupted = index in corrupted
        examples.append({
            "messages": [{"role": "user", "content": task.prompt},
                         {"role": "assistant", "content": task.mistake if is_corrupted else task.answer}],
            "meta": {"task": task.name, "answer": task.answer, "corrupted": is_corrupted},
        })
    return examples


def _check_noise(noisy_tasks, specs: tuple[TaskSpec, ...]) -> dict[str, float]:
    if noisy_tasks is None:
        return {}
    if not isinstance(noisy_tasks, Mapping):
        raise TypeError(f"noisy_tasks has type {type(noisy_tasks).__name__}; expected a dict task name -> share")
    for name, share in noisy_tasks.items():
        if name not in _SPEC_BY_NAME:
            raise ValueError(f"noisy_tasks names {name!r}, which is not a task; expected names from {list(TASK_NAMES)}")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise ValueError(f"noisy_tasks[{name!r}]={share!r}; expected a share between 0 and 1")
    # A task that is not generated (not in ``tasks``) has no examples, so its share corrupts none.
    selected = {spec.name for spec in specs}
    return {name: float(share) for name, share in noisy_tasks.items() if name in selected}


def make_preference_pairs(n: int, seed: int, split: str = "train", tasks=None,
                          split_seed: int = 0) -> list[PreferencePair]:
    """``n`` DPO pairs: prompt, chosen = the verified answer, rejected = the task's mistake
    (balanced task kinds; ``meta = {"task": name}``)."""
    _check_count("n", n)
    _check_seed("seed", seed)
    specs = _select_tasks(tasks)
    pools = _split_pools(split, split_seed)
    rng = random.Random(f"dpo:{seed}")
    pairs = []
    for spec in _balanced_tasks(n, specs, rng):
        task = make_task(spec, rng, pools)
        pairs.append(PreferencePair(task.prompt, task.answer, task.mistake, {"task": task.name}))
    return pairs


def make_eval_prompts(n_per_task: int, seed: int, tasks=None, split_seed: int = 0) -> list[Task]:
    """``n_per_task`` distinct held-out prompts of each task (in ``TASKS`` order, task by task).

    Prompts are drawn again until distinct; a pool too small for ``n_per_task`` distinct prompts
    raises ValueError.
    """
    _check_count("n_per_task", n_per_task)
    _check_seed("seed", seed)
    specs = _select_tasks(tasks)
    pools = _split_pools("heldout", split_seed)
    rng = random.Random(f"eval:{seed}")
    prompts: list[Task] = []
    for spec in specs:
        seen: set[str] = set()
        for _ in range(100 * n_per_task):
            if len(seen) == n_per_task:
                break
            task = make_task(spec, rng, pools)
            if task.prompt not in seen:
                seen.add(task.prompt)
                prompts.append(task)
        if len(seen) < n_per_task:
            raise ValueError(f"task {spec.name!r}: found only {len(seen)} distinct held-out prompts after "
                             f"{100 * n_per_task} draws; expected n_per_task={n_per_task} (use fewer)")
    return prompts


def score(replies: list[str], eval_prompts: list[Task]) -> dict:
    """Exact-match accuracy per task and overall, and how often each task's mistake was made.

    Returns ``{task: accuracy, ..., "overall": accuracy over all prompts, "mistake_rate": {task:
    share of that task's replies equal to its mistake}, "counts": {task: {"prompts", "correct",
    "mistakes"}}}`` (replies compared after ``strip()``; the counts give the rates' intervals, see
    :func:`wilson_interval`).
    """
    if not isinstance(replies, (list, tuple)) or not isinstance(eval_prompts, (list, tuple)):
        raise TypeError(f"replies ({type(replies).__name__}) and eval_prompts ({type(eval_prompts).__name__}) "
                        "must be lists")
    if len(replies) != len(eval_prompts):
        raise ValueError(f"{len(replies)} replies for {len(eval_prompts)} eval prompts; expected one reply each")
    if not eval_prompts:
        raise ValueError("eval_prompts is empty; expected at least one prompt")
    totals: dict[str, list[int]] = {}     # task -> [prompts, correct, mistakes]
    for index, (reply, task) in enumerate(zip(replies, eval_prompts)):
        if not isinstance(task, Task):
            raise TypeError(f"eval_prompts[{index}] has type {type(task).__name__}; expected Task")
        if not isinstance(reply, str):
            raise TypeError(f"replies[{index}]={reply!r:.80} has type {type(reply).__name__}; expected str")
        if task.name in RESERVED_SCORE_KEYS:           # these keys of the result are taken
            raise ValueError(f"eval_prompts[{index}] has task name {task.name!r}, a reserved key of the score")
        counts = totals.setdefault(task.name, [0, 0, 0])
        counts[0] += 1
        counts[1] += check(task, reply)
        counts[2] += reply.strip() == task.mistake
    result: dict = {name: correct / count for name, (count, correct, _) in totals.items()}
    result["overall"] = sum(correct for _, correct, _ in totals.values()) / len(eval_prompts)
    result["mistake_rate"] = {name: mistakes / count for name, (count, _, mistakes) in totals.items()}
    result["counts"] = {name: {"prompts": count, "correct": correct, "mistakes": mistakes}
                        for name, (count, correct, mistakes) in totals.items()}
    return result


RESERVED_SCORE_KEYS = ("overall", "mistake_rate", "counts")


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate: ``(low, high)`` around p = successes / trials.

    With n = ``trials`` and z = ``z`` (1.96 for 95%), the interval is the set of true rates q for
    which |p - q| <= z * sqrt(q (1 - q) / n), i.e. the roots of a quadratic in q::

        centre     = (p + z^2 / (2 n)) / (1 + z^2 / n)
        half_width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))
        interval   = [centre - half_width, centre + half_width]

    Unlike the normal ("Wald") interval p +- z sqrt(p (1 - p) / n) it never leaves [0, 1] and does
    not shrink to a point at p = 0 or 1 (0 of 10 gives [0, 0.278]), which matters for the mistake
    rates here, often near 0. It always contains p.
    """
    for name, value in (("successes", successes), ("trials", trials)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r}; expected an int >= 0")
    if trials == 0 or successes > trials:
        raise ValueError(f"successes={successes}, trials={trials}; expected 0 <= successes <= trials and trials >= 1")
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not z > 0:
        raise ValueError(f"z={z!r}; expected a number > 0")
    p, n = successes / trials, trials
    shrink = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half_width = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at p = 0 or 1 the bound equals p exactly; clamp float round-off so the interval holds p
    return max(0.0, min(p, centre - half_width)), min(1.0, max(p, centre + half_width))


def pooled_count(result: dict, tasks, kind: str) -> tuple[int, int]:
    """``(successes, prompts)`` summed over ``tasks`` in a :func:`score` result; ``kind`` is
    ``"correct"`` or ``"mistakes"``. E.g. the taught-mistake rate of the noisy tasks with its
    interval: ``wilson_interval(*pooled_count(result, DEFAULT_NOISE, "mistakes"))``."""
    if kind not in ("correct", "mistakes"):
        raise ValueError(f"kind={kind!r}; expected 'correct' or 'mistakes'")
    counts = result["counts"]
    missing = [name for name in tasks if name not in counts]
    if missing:
        raise ValueError(f"tasks {missing} are not in this score (it has {sorted(counts)})")
    return sum(counts[name][kind] for name in tasks), sum(counts[name]["prompts"] for name in tasks)


def format_rate(successes: int, trials: int) -> str:
    """``"0.450 [0.421, 0.479]"``: the rate and its 95% Wilson interval."""
    low, high = wilson_interval(successes, trials)
    return f"{successes / trials:.3f} [{low:.3f}, {high:.3f}]"


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------

def save_eval_jsonl(path: str | os.PathLike, eval_prompts: list[Task]) -> None:
    """Write ``{"prompt", "task", "answer", "mistake"}`` lines, atomically."""
    if not isinstance(eval_prompts, (list, tuple)) or not eval_prompts:
        raise ValueError(f"eval_prompts={eval_prompts!r:.80}; expected a non-empty list of Task")
    lines = []
    for index, task in enumerate(eval_prompts):
        if not isinstance(task, Task):
            raise TypeError(f"eval_prompts[{index}] has type {type(task).__name__}; expected Task")
        record = {"prompt": task.prompt, "task": task.name, "answer": task.answer, "mistake": task.mistake}
        _parse_eval_record(record)
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))


def load_eval_jsonl(path: str | os.PathLike) -> list[Task]:
    """Read an eval file (``prompt``, ``task``, ``answer``, ``mistake``: non-empty strings, answer !=
    mistake); malformed lines are all reported, as for the SFT and DPO loaders."""
    return read_jsonl_records(path, "eval", _parse_eval_record)


def _parse_eval_record(obj) -> Task:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [key for key in EVAL_FILE_KEYS if key not in obj]
    unexpected = sorted(set(obj) - set(EVAL_FILE_KEYS))
    if missing or unexpected:
        raise ValueError(f"missing key(s) {missing}, unexpected key(s) {unexpected}; expected exactly "
                         f"{list(EVAL_FILE_KEYS)}")
    for key in EVAL_FILE_KEYS:
        value = obj[key]
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key!r}={value!r:.80}; expected a non-empty string")
    if obj["answer"] == obj["mistake"]:
        raise ValueError(f"'answer' equals 'mistake' ({obj['answer']!r}); expected a mistake that differs")
    return Task(obj["task"], obj["prompt"], obj["answer"], obj["mistake"])


def write_task_files(out_dir: str | os.PathLike, seed: int, n_sft: int, n_dpo: int,
                     noisy: Mapping[str, float] | None = DEFAULT_NOISE,
                     n_eval_per_task: int = DEFAULT_EVAL_PER_TASK,
                     tasks=None, split_seed: int = 0) -> dict[str, str]:
    """Write ``sft_train.jsonl`` (``make_sft_examples`` with ``noisy``), ``dpo_train.jsonl`` and
    ``eval.jsonl`` (held-out) into ``out_dir``; returns ``{"sft": path, "dpo": path, "eval": path}``."""
    out_dir = os.fspath(out_dir)
    paths = {"sft": os.path.join(out_dir, "sft_train.jsonl"), "dpo": os.path.join(out_dir, "dpo_train.jsonl"),
             "eval": os.path.join(out_dir, "eval.jsonl")}
    sft = make_sft_examples(n_sft, seed, "train", noisy_tasks=noisy, tasks=tasks, split_seed=split_seed)
    pairs = make_preference_pairs(n_dpo, seed, "train", tasks=tasks, split_seed=split_seed)
    eval_prompts = make_eval_prompts(n_eval_per_task, seed, tasks=tasks, split_seed=split_seed)
    save_sft_jsonl(paths["sft"], sft)
    save_dpo_jsonl(paths["dpo"], pairs)
    save_eval_jsonl(paths["eval"], eval_prompts)
    return paths
