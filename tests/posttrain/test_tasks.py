"""Seeded tasks: hand-worked answers and mistakes, held-out disjointness, noise, determinism, scoring."""
import json
import random

import pytest

from minillm.posttrain import (
    TASK_NAMES,
    TASKS,
    Task,
    check,
    corpus_vocabulary,
    load_dpo_jsonl,
    load_eval_jsonl,
    load_sft_jsonl,
    make_eval_prompts,
    make_pools,
    make_preference_pairs,
    make_sft_examples,
    score,
    write_task_files,
)
from minillm.posttrain import tasks as task_module
from minillm.posttrain.tasks import TaskPools, make_task

SPEC = {spec.name: spec for spec in TASKS}
WORDS = ["thou", "art", "my", "lord"]


@pytest.mark.parametrize("name, args, answer, mistake", [
    ("first_word", {"words": WORDS}, "thou", "art"),
    ("last_word", {"words": WORDS}, "lord", "my"),
    ("word_count", {"words": WORDS}, "4", "5"),
    ("word_count", {"words": ["a", "b", "c"]}, "3", "4"),
    ("add", {"a": 37, "b": 48}, "85", "86"),
    ("add", {"a": 0, "b": 99}, "99", "100"),
    ("larger", {"a": 37, "b": 48}, "48", "37"),
    ("larger", {"a": 90, "b": 9}, "90", "9"),
    ("capitalize", {"word": "lord"}, "Lord", "LORD"),
    ("repeat", {"word": "lord", "k": 3}, "lord lord lord", "lord lord lord lord"),
    ("repeat", {"word": "art", "k": 2}, "art art", "art art art"),
    ("reverse", {"words": WORDS}, "lord my art thou", "thou art my lord"),
    ("reverse", {"words": ["one", "two", "six"]}, "six two one", "one two six"),
])
def test_answers_and_mistakes_by_hand(name, args, answer, mistake):
    assert SPEC[name].answer(**args) == answer
    assert SPEC[name].mistake(**args) == mistake


def test_every_task_is_covered_and_the_prompt_matches_the_module_docstring():
    assert TASK_NAMES == ("first_word", "last_word", "word_count", "add", "larger", "capitalize", "repeat",
                          "reverse")
    task = Task("last_word", "What is the last word of: thou art my lord", "lord", "my")
    assert check(task, " lord\n") and task.check("lord")
    assert not check(task, "my") and not check(task, "Lord") and not check(task, "lord lord")
    with pytest.raises(TypeError, match="expected str"):
        check(task, None)


def test_generated_instances_are_checked_by_the_program():
    pools = make_pools()["train"]
    rng = random.Random(0)
    for spec in TASKS:
        for _ in range(40):
            task = make_task(spec, rng, pools)
            assert task.answer == spec.answer(**task.args) and task.mistake == spec.mistake(**task.args)
            assert task.mistake != task.answer
            assert check(task, task.answer) and not check(task, task.mistake)
            assert any(task.prompt == phrasing.format(**{k: " ".join(v) if k == "words" else v
                                                         for k, v in task.args.items()})
                       for phrasing in spec.phrasings)
            if "words" in task.args:
                assert len(set(task.args["words"])) == len(task.args["words"])   # distinct words


def test_equal_numbers_are_drawn_again_so_the_mistake_differs():
    pools = TaskPools(words=("thou", "art"), pairs=((5, 5), (3, 7)))
    rng = random.Random(1)
    drawn = {tuple(sorted(make_task(SPEC["larger"], rng, pools).args.values())) for _ in range(30)}
    assert drawn == {(3, 7)}
    with pytest.raises(RuntimeError, match="mistake == answer"):
        make_task(SPEC["larger"], rng, TaskPools(words=("thou",), pairs=((5, 5),)))


def test_vocabulary_from_the_embedded_corpus():
    words = corpus_vocabulary()
    assert len(words) == 2000 == len(set(words))
    assert all(w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 8 for w in words)
    assert words[:3] == ("the", "and", "you")


def test_vocabulary_rules_on_a_small_text(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("Hamlet hamlet the THE the thou'rt rt ox a lord Lord bird lord cat cat\nextraordinary dog",
                    encoding="utf-8")
    # counts: the 2, lord 2, cat 2, hamlet 1, bird 1, dog 1; "ox", "a", "rt" too short; "thou'rt" has an
    # apostrophe; capitalised forms are not counted; "extraordinary" is longer than 8 letters.
    assert corpus_vocabulary(6, path=path) == ("cat", "lord", "the", "bird", "dog", "hamlet")
    with pytest.raises(ValueError, match="has 6 distinct"):
        corpus_vocabulary(7, path=path)


def test_heldout_pools_partition_words_and_pairs():
    pools = make_pools(split_seed=0)
    train, heldout = pools["train"], pools["heldout"]
    assert not set(train.words) & set(heldout.words)
    assert set(train.words) | set(heldout.words) == set(corpus_vocabulary())
    assert len(heldout.words) == 400 and len(heldout.pairs) == 1010
    assert not set(train.pairs) & set(heldout.pairs)
    assert len(train.pairs) + len(heldout.pairs) == 5050
    assert all(a <= b for a, b in train.pairs + heldout.pairs)
    assert make_pools(split_seed=1)["heldout"].words != heldout.words


def test_no_evaluation_prompt_appears_in_training_data():
    heldout = make_pools()["heldout"]
    evaluation = make_eval_prompts(30, seed=5)
    assert len(evaluation) == 30 * len(TASKS) and len({t.prompt for t in evaluation}) == len(evaluation)
    for task in evaluation:
        if "words" in task.args or "word" in task.args:
            assert set(task.args.get("words", [task.args.get("word")])) <= set(heldout.words)
        else:
            assert tuple(sorted((task.args["a"], task.args["b"]))) in heldout.pairs
    training = {example["messages"][0]["content"] for seed in (0, 5) for example in make_sft_examples(2000, seed)}
    training |= {pair.prompt for pair in make_preference_pairs(2000, seed=5)}
    assert not training & {task.prompt for task in evaluation}


def test_same_seed_same_data_other_seed_other_data():
    noise = {"larger": 0.5}
    assert make_sft_examples(50, 3, noisy_tasks=noise) == make_sft_examples(50, 3, noisy_tasks=noise)
    assert make_sft_examples(50, 3) != make_sft_examples(50, 4)
    assert make_preference_pairs(40, 2) == make_preference_pairs(40, 2)
    assert make_preference_pairs(40, 2) != make_preference_pairs(40, 3)
    assert make_eval_prompts(5, 1) == make_eval_prompts(5, 1) != make_eval_prompts(5, 2)


def test_noisy_sft_examples_corrupt_the_stated_share_with_the_tasks_mistake():
    examples = make_sft_examples(800, seed=1, noisy_tasks={"larger": 0.3, "word_count": 0.25, "last_word": 1.0})
    by_task = {}
    for example in examples:
        meta = example["meta"]
        by_task.setdefault(meta["task"], []).append(example)
        reply = example["messages"][1]["content"]
        assert (reply != meta["answer"]) == meta["corrupted"]
    assert {name: len(group) for name, group in by_task.items()} == {name: 100 for name in TASK_NAMES}
    corrupted = {name: sum(e["meta"]["corrupted"] for e in group) for name, group in by_task.items()}
    assert corrupted == {**{name: 0 for name in TASK_NAMES}, "larger": 30, "word_count": 25, "last_word": 100}
    for example in by_task["larger"]:
        numbers = [int(word.strip("?,")) for word in example["messages"][0]["content"].split()
                   if word.strip("?,").isdigit()]
        expected = min(numbers) if example["meta"]["corrupted"] else max(numbers)
        assert example["messages"][1]["content"] == str(expected)
    for example in by_task["last_word"]:                      # all corrupted: the second-to-last word
        words = example["messages"][0]["content"].split(": ")[1].split()
        assert example["messages"][1]["content"] == words[-2]


@pytest.mark.parametrize("kwargs, match", [
    ({"noisy_tasks": {"largest": 0.3}}, "not a task"),
    ({"noisy_tasks": {"larger": 1.5}}, "between 0 and 1"),
    ({"split": "test"}, "split='test'"),
    ({"tasks": ["add", "nope"]}, r"unknown: \['nope'\]"),
    ({"tasks": []}, "non-empty"),
])
def test_sft_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sft_examples(10, 0, **kwargs)


def test_task_subset_and_pairs():
    examples = make_sft_examples(10, 0, tasks=["add"], noisy_tasks={"larger": 0.5})   # larger not generated
    assert {e["meta"]["task"] for e in examples} == {"add"}
    assert not any(e["meta"]["corrupted"] for e in examples)
    pairs = make_preference_pairs(16, 0)
    assert sorted(p.meta["task"] for p in pairs) == sorted(TASK_NAMES * 2)
    for pair in pairs:
        spec = SPEC[pair.meta["task"]]
        assert pair.chosen != pair.rejected
        assert any(pair.prompt.startswith(p.split("{")[0]) for p in spec.phrasings)


def test_score_by_hand():
    prompts = [Task("add", "What is 1 + 2?", "3", "4"), Task("add", "What is 2 + 2?", "4", "5"),
               Task("larger", "Which is larger, 1 or 2?", "2", "1"),
               Task("larger", "Which is larger, 5 or 3?", "5", "3")]
    result = score([" 3 ", "5", "2", "7"], prompts)
    assert result == {"add": 0.5, "larger": 0.5, "overall": 0.5, "mistake_rate": {"add": 0.5, "larger": 0.0},
                      "counts": {"add": {"prompts": 2, "correct": 1, "mistakes": 1},
                                 "larger": {"prompts": 2, "correct": 1, "mistakes": 0}}}
    with pytest.raises(ValueError, match="3 replies for 4 eval prompts"):
        score(["3", "5", "2"], prompts)
    with pytest.raises(TypeError, match=r"replies\[1\]"):
        score(["3", 5, "2", "7"], prompts)


def test_write_task_files_round_trip(tmp_path):
    paths = write_task_files(tmp_path / "tasks", seed=0, n_sft=40, n_dpo=24, n_eval_per_task=3)
    expected = make_sft_examples(40, 0, noisy_tasks=task_module.DEFAULT_NOISE)
    assert load_sft_jsonl(paths["sft"]) == [example["messages"] for example in expected]
    records = [json.loads(line) for line in open(paths["sft"], encoding="utf-8")]
    # 5 examples per task; each of the 3 noisy tasks has floor(0.3 * 5 + 0.5) = 2 corrupted.
    assert sum(r["meta"]["corrupted"] for r in records) == 6
    assert load_dpo_jsonl(paths["dpo"]) == make_preference_pairs(24, 0)
    evaluation = load_eval_jsonl(paths["eval"])
    assert evaluation == make_eval_prompts(3, 0)
    first = json.loads(open(paths["eval"], encoding="utf-8").readline())
    assert sorted(first) == ["answer", "mistake", "prompt", "task"]


def test_eval_file_errors_name_the_lines(tmp_path):
    path = tmp_path / "eval.jsonl"
    good = {"prompt": "What is 1 + 2?", "task": "add", "answer": "3", "mistake": "4"}
    path.write_text("\n".join([json.dumps(good), json.dumps({**good, "mistake": "3"}),
                               json.dumps({k: v for k, v in good.items() if k != "task"})]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_eval_jsonl(path)
    assert "line 2: 'answer' equals 'mistake'" in str(info.value)
    assert "line 3: missing key(s) ['task']" in str(info.value)
