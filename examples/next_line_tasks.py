"""Write a multiple-choice task file from Shakespeare: which line comes next?

    python examples/next_line_tasks.py --output next_line.jsonl        # 200 questions
    python examples/next_line_tasks.py --output word_order.jsonl --distractors shuffled
    minillm eval --checkpoint runs/shakespeare/best.safetensors --tasks next_line.jsonl

The questions come from the validation split of the embedded corpus (its last 10%, the split
``minillm train`` holds out and ``minillm eval`` scores), so a model trained by the main job has
never seen them. Each question: the ``--context_lines`` lines before a verse line in the middle
of a speech (the line before it is verse too), that line as the right choice, and ``--choices`` - 1
wrong ones: with ``--distractors other_lines`` (the default) other verse lines of the split drawn
at random (does the line follow from what came before? hard for a small model), with
``--distractors shuffled`` the right line with its words in a random order (is the word order
English? the same characters, so acc and acc_norm agree). A verse line here has at least 25
characters and does not open with '[' (a stage direction). Same seed, same file.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

from minillm.data import clean_documents, default_corpus_path, read_corpus, split_train_val
from minillm.fileio import atomic_write_text, refuse_to_overwrite

MIN_VERSE_CHARS = 25
DISTRACTORS = ("other_lines", "shuffled")


def is_verse(line: str) -> bool:
    return len(line) >= MIN_VERSE_CHARS and not line.startswith("[")


def shuffled_lines(line: str, count: int, rng: random.Random) -> list[str]:
    """``count`` distinct orders of the words of ``line``, none the original one."""
    words, found = line.split(" "), set()
    while len(found) < count:
        order = words[:]
        rng.shuffle(order)
        if order != words:
            found.add(" ".join(order))
    return sorted(found)


def make_questions(count: int, context_lines: int, choices: int, seed: int, distractors: str = "other_lines",
                   val_fraction: float = 0.1) -> list[dict]:
    """``count`` questions (see the module docstring) as dicts {context, choices, label}."""
    if distractors not in DISTRACTORS:
        raise ValueError(f"distractors={distractors!r}; expected one of {DISTRACTORS}")
    docs, _ = clean_documents(read_corpus(default_corpus_path()))
    lines = "".join(split_train_val(docs, val_fraction)[1]).split("\n")
    verse = sorted({line for line in lines if is_verse(line)})
    candidates = [i for i in range(context_lines, len(lines)) if is_verse(lines[i]) and is_verse(lines[i - 1])
                  and len(set(lines[i].split(" "))) >= 5]       # enough words for several distinct shuffles
    rng = random.Random(seed)
    if count > len(candidates):
        raise ValueError(f"--count {count} is more than the {len(candidates)} candidate lines of the validation split")
    questions = []
    for index in sorted(rng.sample(candidates, count)):
        answer = lines[index]
        if distractors == "shuffled":
            wrong = shuffled_lines(answer, choices - 1, rng)
        else:
            wrong = rng.sample([line for line in verse if line != answer], choices - 1)
        options = wrong + [answer]
        rng.shuffle(options)
        questions.append({"context": "\n".join(lines[index - context_lines:index]) + "\n", "choices": options,
                          "label": options.index(answer)})
    return questions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the JSONL file to write")
    parser.add_argument("--count", type=int, default=200, help="questions (default 200)")
    parser.add_argument("--context_lines", type=int, default=4, help="lines of context (default 4)")
    parser.add_argument("--choices", type=int, default=4, help="choices per question (default 4)")
    parser.add_argument("--distractors", choices=DISTRACTORS, default="other_lines",
                        help="wrong choices: other lines of the split, or the right line's words shuffled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    if args.count < 1 or args.context_lines < 1 or args.choices < 2:
        parser.error("--count and --context_lines must be >= 1, --choices >= 2")
    refuse_to_overwrite(f"--output {args.output!r}", "", [args.output] if os.path.lexists(args.output) else [],
                        args.overwrite, "pass --overwrite to replace it")
    questions = make_questions(args.count, args.context_lines, args.choices, args.seed, args.distractors)
    atomic_write_text(args.output, "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions))
    print(f"wrote {len(questions)} questions to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
