"""Choosing tokens: seeds, temperature 0, top-k, top-p, the repetition penalty, bad arguments."""
import numpy as np
import pytest

import minillm as mm
from minillm.generation import Sampler, apply_repetition_penalty, candidates
from tests.generation.helpers import make_model, prompts


def draws(logits, n=3000, **options):
    """n tokens drawn from one row of logits (V,) with a seeded sampler."""
    sampler = Sampler([[0]], logits.shape[0], seed=7, **options)
    return np.array([sampler.choose([0], logits[None, :])[0] for _ in range(n)])


def test_fixed_seed_gives_fixed_output_whatever_the_global_state():
    model = make_model()
    mm.manual_seed(1)
    first = model.generate(prompts([4]), 12, temperature=1.0, seed=123)
    mm.manual_seed(2)
    mm.backend.generator().random(10)
    assert model.generate(prompts([4]), 12, temperature=1.0, seed=123) == first
    assert model.generate(prompts([4]), 12, temperature=1.0, seed=124) != first
    # seed=None follows minillm.manual_seed
    mm.manual_seed(5)
    a = model.generate(prompts([4]), 12)
    mm.manual_seed(5)
    assert model.generate(prompts([4]), 12) == a


def test_temperature_zero_is_argmax():
    model = make_model()
    ids = prompts([5])[0]
    out = model.generate(ids, 6, temperature=0.0, top_k=3, top_p=0.5, seed=0)
    seq = list(ids)
    with mm.no_grad():
        for _ in range(6):
            logits, _ = model(np.array([seq]))
            seq.append(int(np.argmax(logits.data[0, -1])))
    assert out == seq
    rng = np.random.Generator(np.random.PCG64(0))
    logits = rng.normal(size=(4, 50))
    assert Sampler([[0]] * 4, 50, temperature=0.0).choose([0, 1, 2, 3], logits) == list(np.argmax(logits, -1))


def test_top_k_never_leaves_the_k_most_likely():
    logits = np.random.Generator(np.random.PCG64(3)).normal(size=40) * 0.3   # flat: every id is likely
    top = set(np.argsort(-logits)[:5].tolist())
    got = draws(logits, top_k=5)
    assert set(got.tolist()) == top                              # all five appear, nothing else
    assert set(draws(logits, n=200, top_k=1).tolist()) == {int(np.argmax(logits))}
    assert len(set(draws(logits, n=3000, top_k=100).tolist())) > 30   # k >= V keeps every id


def test_top_p_never_leaves_the_nucleus():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = np.log(probs)
    got = draws(logits, top_p=0.75)                              # 0.5 + 0.3 = 0.8 >= 0.75
    assert set(got.tolist()) == {1, 3}
    assert abs(np.mean(got == 1) - 0.5 / 0.8) < 0.03             # renormalised within the nucleus
    assert set(draws(logits, top_p=0.85).tolist()) == {1, 3, 2}
    assert set(draws(logits, n=100, top_p=0.2).tolist()) == {1}  # the most likely id always stays
    ids, p = candidates(logits, 1.0, None, 1.0)
    assert sorted(ids.tolist()) == [0, 1, 2, 3] and abs(p.sum() - 1) < 1e-12
    # temperature changes the distribution before the nucleus is taken
    assert set(draws(logits, n=500, temperature=0.2, top_p=0.9).tolist()) == {1}


def test_top_k_and_top_p_combine():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    assert set(draws(logits, top_k=3, top_p=0.6).tolist()) == {0, 1}   # top-3 renormalised: 0.44, 0.33


def test_repetition_penalty_follows_ctrl():
    logits = np.array([[2.0, -1.0, 0.5, -3.0]])
    seen = np.array([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    np.testing.assert_array_equal(out, [[1.0, -2.0, 0.5, -3.0]])  # positive / θ, negative · θ, unseen kept
    # greedy: the seen favourite loses once penalised; prompt tokens count as seen
    logits = np.array([[3.0, 2.0, 0.0]])
    assert Sampler([[0]], 3, temperature=0.0, repetition_penalty=1.6).choose([0], logits) == [1]
    assert Sampler([[2]], 3, temperature=0.0, repetition_penalty=1.6).choose([0], logits) == [0]
    # generated tokens become seen too
    sampler = Sampler([[2]], 3, temperature=0.0, repetition_penalty=1.6)
    assert [sampler.choose([0], logits)[0] for _ in range(2)] == [0, 1]
    # penalty 1 (or None) changes nothing
    model = make_model()
    assert model.generate(prompts([3]), 6, seed=3, repetition_penalty=1.0) == model.generate(prompts([3]), 6, seed=3)


@pytest.mark.parametrize("options, message", [
    (dict(temperature=-0.5), r"temperature=-0.5; expected a finite number >= 0"),
    (dict(temperature=float("nan")), r"temperature=nan"),
    (dict(top_p=0.0), r"top_p=0.0; expected None or a probability in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p=1.5; expected None or a probability in \(0, 1\]"),
    (dict(top_k=0), r"top_k=0; expected None or an int >= 1"),
    (dict(top_k=2.5), r"top_k=2.5; expected None or an int >= 1"),
    (dict(repetition_penalty=0.0), r"repetition_penalty=0.0; expected None or a finite number > 0"),
    (dict(seed=-1), r"seed=-1; expected None, an int >= 0"),
    (dict(seed=[1, 2]), r"seed=\[1, 2\]; expected None, an int >= 0, or a list of 1 ints"),
    (dict(max_new_tokens=-1), r"max_new_tokens=-1; expected an int >= 0"),
    (dict(overflow="wrap"), r"overflow='wrap'; expected one of \('slide', 'stop'\)"),
    (dict(slide=0), r"slide=0; expected an int in \[1, block_size=16\]"),
    (dict(stop=[99]), r"stop holds token id 99, out of range; expected ids in \[0, vocab_size=24\)"),
    (dict(stop=["\n"]), r"stop=\['\\n'\] holds stop strings but tokenizer=None"),
])
def test_bad_arguments_are_rejected_clearly(options, message):
    model = make_model()
    options = {"max_new_tokens": 4, **options}
    with pytest.raises(ValueError, match=message):
        model.generate(prompts([3]), **options)
    with pytest.raises(ValueError, match=message):   # stream checks when called, not at next()
        model.stream(prompts([3])[0], **options)


@pytest.mark.parametrize("idx, message", [
    ([[1, 2], []], r"idx\[1\] is an empty prompt; expected at least one token id"),
    (np.zeros((1, 0), dtype=np.int64), r"idx\[0\] is an empty prompt"),
    ([], r"idx=\[\] is empty"),
    ([[1, 2, 24]], r"idx\[0\] holds token id 24, out of range; expected ids in \[0, vocab_size=24\)"),
    ([3, -1], r"idx holds token id -1, out of range"),
    ([list(range(17))], r"idx\[0\] has 17 tokens, longer than the context block_size=16; expected at most 16"),
])
def test_bad_prompts_are_rejected_clearly(idx, message):
    with pytest.raises(ValueError, match=message):
        make_model().generate(idx, 3)


def test_bad_prompt_types_are_rejected():
    model = make_model()
    with pytest.raises(TypeError, match="idx has dtype float64; expected integer token ids"):
        model.generate(np.zeros((1, 3)), 2)
    with pytest.raises(TypeError, match=r"idx\[1\]='a' has type str; expected an int token id"):
        model.generate([1, "a"], 2)
    with pytest.raises(ValueError, match="stream: idx holds 2 prompts; expected exactly one"):
        model.stream([[1], [2]], 2)
