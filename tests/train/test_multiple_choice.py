"""Multiple-choice evaluation (minillm.train.multiple_choice, ``minillm eval --tasks``).

The scores equal a hand computation (one plain forward per choice, log-softmax in float64), the
cached path equals the batched one and both equal scoring one question at a time, bad task files
exit 2 naming the line and the field, and a tiny model trained on a pattern answers questions
about the pattern far above chance.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import minillm as mm
from minillm.cli import main
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW
from minillm.tokenizer import CharTokenizer
from minillm.train.checkpoint import save_checkpoint
from minillm.train.multiple_choice import Question, encode_question, evaluate_multiple_choice, read_tasks

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def tiny_model(preset: str = "gpt2", vocab_size: int = 28, block_size: int = 12, dtype=np.float64, seed: int = 0):
    mm.manual_seed(seed)
    make = GPTConfig.gpt2 if preset == "gpt2" else GPTConfig.llama
    extra = {} if preset == "gpt2" else {"n_kv_head": 1, "mlp_multiple_of": 8}
    model = GPT(make(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16, init_std=0.3,
                     **extra))
    if dtype != np.float32:
        model.to_dtype(dtype)
    return model.eval()


@pytest.fixture(scope="module")
def letters() -> CharTokenizer:
    """Letters a..z and the space: ids 0..26 (space first); <|endoftext|> 27."""
    return CharTokenizer.train(" " + ALPHABET, special_tokens=["<|endoftext|>"])


QUESTIONS = [
    Question("abc", ("d", "xy", "dzz"), 0, 1),
    Question("hello wor", (" ld", "ld", " x y"), 1, 2),
    Question("the cat ", ("sat", "ran away"), 0, 3),          # trailing space moves to the choices
    Question("", ("a", "bc"), 1, 4),                           # empty context: starts from <|endoftext|>
    Question("a long context that does not fit the window", ("xyz", "q", "abcdefg"), 2, 5),   # truncated
]


def hand_logprobs(model, tokenizer, question: Question) -> list[float]:
    """One plain forward per choice over context + choice, log-softmax in float64 on the host."""
    block = model.config.block_size
    context, _ = question.context.rstrip(), None
    space = question.context[len(context):]
    choices = [tokenizer.encode(space + choice) for choice in question.choices]
    context_ids = tokenizer.encode(context) if context else [tokenizer.special_tokens["<|endoftext|>"]]
    context_ids = context_ids[-(block + 1 - max(map(len, choices))):]
    sums = []
    for ids in choices:
        full = context_ids + ids
        with mm.no_grad():
            logits, _ = model(np.array([full[:-1]]))
        z = mm.backend.to_numpy(logits.data)[0].astype(np.float64)
        logp = z - z.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        sums.append(sum(logp[len(context_ids) - 1 + i, token] for i, token in enumerate(ids)))
    return sums


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_scores_equal_a_hand_computation_on_both_paths(letters, preset):
    model = tiny_model(preset)
    expected = [hand_logprobs(model, letters, q) for q in QUESTIONS]
    for use_cache in (True, False):
        for batch_size in (1, 5, 64):
            result = evaluate_multiple_choice(model, letters, QUESTIONS, use_cache=use_cache, batch_size=batch_size)
            got = [d["logprobs"] for d in result["details"]]
            for want, have in zip(expected, got):
                np.testing.assert_allclose(have, want, rtol=1e-10, atol=1e-10)
    assert result["truncated"] == 2 and result["questions"] == 5     # lines 3 and 5 exceed block_size=12
    assert result["chance"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 2 + 1 / 2 + 1 / 3) / 5)


def test_float32_paths_agree_with_one_question_at_a_time(letters):
    model = tiny_model("llama", dtype=np.float32)
    one_by_one = [evaluate_multiple_choice(model, letters, [q], use_cache=False)["details"][0]["logprobs"]
                  for q in QUESTIONS]
    for use_cache in (True, False):
        batched = evaluate_multiple_choice(model, letters, QUESTIONS, use_cache=use_cache, batch_size=64)
        for want, detail in zip(one_by_one, batched["details"]):
            # float32 logits of ~7 summed tokens: a few ulps of each term
            np.testing.assert_allclose(detail["logprobs"], want, rtol=1e-5, atol=1e-5)


def test_predictions_and_metrics_follow_the_logprobs(letters):
    result = evaluate_multiple_choice(tiny_model(), letters, QUESTIONS)
    for question, detail in zip(QUESTIONS, result["details"]):
        assert detail["predicted"] == int(np.argmax(detail["logprobs"]))
        per_char = np.array(detail["logprobs"]) / np.array(detail["characters"])
        assert detail["predicted_norm"] == int(np.argmax(per_char))
        assert detail["characters"] == [len(question.context) - len(question.context.rstrip()) + len(c)
                                        for c in question.choices]
    acc = np.mean([d["predicted"] == d["label"] for d in result["details"]])
    assert result["acc"] == acc
    assert result["acc_stderr"] == pytest.approx(np.std([d["predicted"] == d["label"] for d in result["details"]],
                                                        ddof=1) / np.sqrt(5))


def test_encoding_moves_trailing_space_to_the_choice(letters):
    context, choices, characters, truncated = encode_question(letters, QUESTIONS[2], block_size=32)
    assert letters.decode(context) == "the cat" and [letters.decode(c) for c in choices] == [" sat", " ran away"]
    assert characters == [4, 9] and not truncated


def test_device_path_matches_the_host(letters, gpu_device):
    host = evaluate_multiple_choice(tiny_model("llama"), letters, QUESTIONS)
    for use_cache in (True, False):
        device = evaluate_multiple_choice(tiny_model("llama").to(gpu_device), letters, QUESTIONS, use_cache=use_cache)
        for a, b in zip(host["details"], device["details"]):
            np.testing.assert_allclose(a["logprobs"], b["logprobs"], rtol=1e-9, atol=1e-9)


def test_a_choice_longer_than_the_window_is_an_error(letters):
    with pytest.raises(ValueError, match=r"line 9: field 'choices\[1\]' is 14 tokens long, more than the model's "
                                         "context of block_size=12"):
        evaluate_multiple_choice(tiny_model(), letters, [Question("ab", ("c", "d" * 14), 0, 9)])


# ---------------------------------------------------------------------------------------------
# A trained model answers far above chance
# ---------------------------------------------------------------------------------------------
def cyclic_text(start: int, length: int) -> str:
    return "".join(ALPHABET[(start + i) % 26] for i in range(length))


def pattern_questions(count: int, seed: int) -> list[dict]:
    """Context: 6 letters of the cyclic alphabet; the right choice continues it for 1-3 letters,
    the three others are random letters of the same length (never the right one)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    lines = []
    for _ in range(count):
        start, length = int(rng.integers(26)), int(rng.integers(1, 4))
        answer = cyclic_text(start + 6, length)
        wrong = set()
        while len(wrong) < 3:
            candidate = "".join(ALPHABET[i] for i in rng.integers(0, 26, size=length))
            if candidate != answer:
                wrong.add(candidate)
        choices = sorted(wrong) + [answer]
        order = rng.permutation(4)
        lines.append({"context": cyclic_text(start, 6), "choices": [choices[i] for i in order],
                      "label": int(np.flatnonzero(order == 3)[0])})
    return lines


@pytest.fixture(scope="module")
def trained(letters, tmp_path_factory):
    """A one-layer model trained for 120 steps on the cyclic alphabet (about a second)."""
    model = tiny_model(vocab_size=letters.vocab_size, block_size=16, dtype=np.float32, seed=1)
    untrained = evaluate_multiple_choice(model, letters, _questions(pattern_questions(100, seed=3)))
    model.train()
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    rng = np.random.Generator(np.random.PCG64(2))
    for _ in range(120):
        batch = np.array([letters.encode(cyclic_text(int(s), 17)) for s in rng.integers(0, 26, size=16)])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("mc") / "model.safetensors"
    save_checkpoint(path, model=model, step=120, tokenizer=letters)
    return model, path, untrained


def _questions(lines: list[dict]) -> list[Question]:
    return [Question(d["context"], tuple(d["choices"]), d["label"], i + 1) for i, d in enumerate(lines)]


def test_a_trained_model_answers_far_above_chance(letters, trained):
    model, _, untrained = trained
    result = evaluate_multiple_choice(model, letters, _questions(pattern_questions(100, seed=3)))
    assert result["chance"] == 0.25
    assert untrained["acc"] < 0.5                       # the test can fail: an untrained model guesses
    assert result["acc"] >= 0.9 and result["acc_norm"] >= 0.9   # chance is 0.25: stderr ~0.03 at 0.9


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def _write_tasks(path, lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def test_eval_tasks_prints_a_table_and_json(trained, tmp_path, capsys):
    _, checkpoint, _ = trained
    tasks = _write_tasks(tmp_path / "tasks.jsonl", pattern_questions(40, seed=5))
    assert main(["eval", "--checkpoint", str(checkpoint), "--tasks", tasks]) == 0
    table = capsys.readouterr().out
    assert "40 questions from" in table and "acc_norm" in table and "0.2500" in table
    assert main(["eval", "--checkpoint", str(checkpoint), "--tasks", tasks, "--json", "--no-kv_cache"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["questions"] == 40 and report["acc"] >= 0.85 and report["step"] == 120
    assert f"{report['acc']:.4f}" in table


GOOD = {"context": "abc", "choices": ["d", "e"], "label": 0}


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "line 3: not valid JSON"),
    ("[1, 2]", "line 3: is a JSON list; expected an object"),
    (json.dumps({"context": "a", "choices": ["b", "c"]}), "line 3: missing the field 'label'"),
    (json.dumps({**GOOD, "label": 2}), r"line 3: field 'label' is 2; expected an int in \[0, 1\]"),
    (json.dumps({**GOOD, "label": True}), "line 3: field 'label' is True"),
    (json.dumps({**GOOD, "choices": ["only"]}), "line 3: field 'choices' is \\[\"only\"\\]; expected a list of at "
                                                "least 2 strings"),
    (json.dumps({**GOOD, "choices": ["b", ""]}), r"line 3: field 'choices\[1\]' is ''"),
    (json.dumps({**GOOD, "choices": ["b", 7]}), r"line 3: field 'choices\[1\]' is 7"),
    (json.dumps({**GOOD, "context": None}), "line 3: field 'context' is NoneType"),
    (json.dumps({**GOOD, "choices": [["b"], "c"]}), "line 3: nests JSON deeper"),
    ('{"context": "a", "context": "b", "choices": ["b", "c"], "label": 0}', "line 3: not valid JSON .*duplicate"),
])
def test_bad_task_lines_exit_2_naming_the_line_and_field(trained, tmp_path, capsys, bad_line, message):
    _, checkpoint, _ = trained
    tasks = _write_tasks(tmp_path / "tasks.jsonl", [GOOD, "", bad_line, GOOD])
    assert main(["eval", "--checkpoint", str(checkpoint), "--tasks", tasks]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"tasks file {tasks!r}, " in err
    assert re.search(message, err), err


@pytest.mark.parametrize("content, extra, message", [
    ("", [], "holds no questions"),
    ("\n\n", [], "holds no questions"),
    (json.dumps(GOOD) + "\n", ["--input", "x.txt"], "--input='x.txt' is for the loss on a text; with --tasks"),
    (json.dumps(GOOD) + "\n", ["--stride", "4"], "--stride=4 is for the loss on a text"),
])
def test_bad_task_files_and_flag_mixes_exit_2(trained, tmp_path, capsys, content, extra, message):
    _, checkpoint, _ = trained
    (tmp_path / "tasks.jsonl").write_text(content)
    assert main(["eval", "--checkpoint", str(checkpoint), "--tasks", str(tmp_path / "tasks.jsonl"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_task_file_exits_2(trained, tmp_path, capsys):
    _, checkpoint, _ = trained
    assert main(["eval", "--checkpoint", str(checkpoint), "--tasks", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_read_tasks_keeps_line_numbers(tmp_path):
    tasks = _write_tasks(tmp_path / "t.jsonl", [GOOD, "", {**GOOD, "label": 1, "id": "extra keys are ignored"}])
    assert [(q.line, q.label) for q in read_tasks(tasks)] == [(1, 0), (3, 1)]


def test_the_next_line_example_writes_a_valid_deterministic_task_file(tmp_path, capsys):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "next_line_tasks.py"
    spec = importlib.util.spec_from_file_location("example_next_line_tasks", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert example.main(["--output", str(first), "--count", "20"]) == 0
    assert example.main(["--output", str(second), "--count", "20"]) == 0
    assert first.read_text() == second.read_text()
    questions = read_tasks(first)
    assert len(questions) == 20 and all(len(q.choices) == 4 and q.context.endswith("\n") for q in questions)
    with pytest.raises(ValueError, match="already exists"):
        example.main(["--output", str(first), "--count", "20"])
