"""The decoding loop: cache vs recomputation, ragged batches vs each prompt alone, the context
overflow policy, stop ids and strings, return types, streaming, grad and training modes."""
import numpy as np
import pytest

import minillm as mm
from minillm.tokenizer import CharTokenizer
from tests.generation.helpers import make_model, prompts

SAMPLING = dict(temperature=1.0, top_k=12, top_p=0.95, repetition_penalty=1.2)


@pytest.mark.parametrize("name", ["gpt2-learned", "gpt2-sinusoidal", "llama-gqa-rope"])
def test_cache_and_recomputation_give_the_same_tokens(name):
    model = make_model(name)
    batch = prompts([4, 6, 4])
    for options in (dict(temperature=0.0), dict(SAMPLING, seed=11)):
        cached = model.generate(batch, 30, **options)            # 30 new tokens: past block_size=16
        recomputed = model.generate(batch, 30, use_cache=False, **options)
        assert cached == recomputed


def test_ragged_batch_equals_each_prompt_alone():
    model = make_model("llama-gqa-rope")
    batch = prompts([3, 7, 3, 5, 1])
    seeds = [10, 11, 12, 13, 14]
    greedy = model.generate(batch, 9, temperature=0.0)
    sampled = model.generate(batch, 9, seed=seeds, **SAMPLING)
    for row, prompt in enumerate(batch):
        assert greedy[row] == model.generate(prompt, 9, temperature=0.0)
        assert sampled[row] == model.generate(prompt, 9, seed=seeds[row], **SAMPLING)
    # logits too: the first step of a row in the batch equals the prompt alone (no padding enters)
    stop_all = list(range(model.config.vocab_size))              # every row ends after one token
    assert model.generate(batch, 5, temperature=0.0, stop=stop_all) == [g[:len(p) + 1] for g, p in zip(greedy, batch)]


def window_reference(model, prompt, steps, slide):
    """Greedy decoding written out: the window rule of the module docstring, full recomputation."""
    block = model.config.block_size
    seq, start = list(prompt), 0
    with mm.no_grad():
        for _ in range(steps):
            if len(seq) - start > block:
                start = len(seq) - (block + 1 - slide)
            window = seq[start:]
            assert 1 <= len(window) <= block
            logits, _ = model(np.array([window]))                # positions 0..len(window)-1
            seq.append(int(np.argmax(logits.data[0, -1])))
    return seq


@pytest.mark.parametrize("name", ["gpt2-learned", "llama-gqa-rope"])
@pytest.mark.parametrize("slide", [1, 3, 16])
def test_overflow_slides_the_window_with_fresh_positions(name, slide):
    model = make_model(name)
    prompt = prompts([10])[0]
    expected = window_reference(model, prompt, 25, slide)
    assert model.generate(prompt, 25, temperature=0.0, slide=slide) == expected
    assert model.generate(prompt, 25, temperature=0.0, slide=slide, use_cache=False) == expected
    if slide == 1:                                               # nanoGPT's crop: idx[:, -block_size:]
        seq = list(prompt)
        with mm.no_grad():
            for _ in range(25):
                seq.append(int(np.argmax(model(np.array([seq[-16:]]))[0].data[0, -1])))
        assert seq == expected


def test_overflow_stop_policy_never_predicts_from_a_cut_context():
    model = make_model()
    out = model.generate(prompts([10, 4]), 25, temperature=0.0, overflow="stop")
    assert [len(row) for row in out] == [17, 17]                 # block_size + 1
    assert out[0] == window_reference(model, prompts([10])[0], 7, slide=1)


def test_stop_ids_end_rows_and_arrays_are_padded():
    model = make_model()
    batch = np.array(prompts([5, 5]))
    free = model.generate(batch, 10, temperature=0.0)
    assert isinstance(free, np.ndarray) and free.shape == (2, 15) and free.dtype == np.int64
    stop = int(free[0, 7])                                       # row 0 emits it by its 3rd new token
    out = model.generate(batch, 10, temperature=0.0, stop=[stop])
    first_stop = [5 + list(row[5:]).index(stop) if stop in row[5:] else None for row in free.tolist()]
    for row in range(2):
        if first_stop[row] is None:
            np.testing.assert_array_equal(out[row], free[row])
        else:
            end = first_stop[row] + 1                            # the stop id is kept
            np.testing.assert_array_equal(out[row, :end], free[row, :end])
            assert (out[row, end:] == -1).all()
    assert first_stop[0] <= 7 and out.shape[1] <= 15
    lists = model.generate(batch.tolist(), 10, temperature=0.0, stop=stop)
    assert lists[0] == free[0, :first_stop[0] + 1].tolist()      # lists are cut, not padded


def test_stop_strings_cut_after_the_completing_token():
    tok = CharTokenizer("abcdefghijklmnopqrstuvwx")              # 24 ids = the model's vocab
    model = make_model()
    prompt = tok.encode("abc")
    free = model.generate(prompt, 12, temperature=0.0)
    text = tok.decode(free[3:])
    stop = text[4:6]                                             # appears first at the 5th-6th new chars
    first = text.find(stop)
    out = model.generate(prompt, 12, temperature=0.0, stop=[stop, "zz"], tokenizer=tok)
    assert out == free[:3 + first + len(stop)]


def test_return_types_follow_the_input():
    model = make_model()
    flat = model.generate([1, 2, 3], 4, temperature=0.0)
    assert isinstance(flat, list) and len(flat) == 7 and all(type(t) is int for t in flat)
    lists = model.generate([[1, 2, 3], [4]], 4, temperature=0.0)
    assert [len(r) for r in lists] == [7, 5] and lists[0] == flat
    array = model.generate(np.array([[1, 2, 3]]), 4, temperature=0.0)
    assert array.tolist() == [flat]
    tensor = model.generate(mm.tensor(np.array([[1, 2, 3]])), 4, temperature=0.0)
    assert tensor.tolist() == [flat]
    assert model.generate([1, 2, 3], 0) == [1, 2, 3]


def test_stream_yields_the_generated_tokens():
    model = make_model()
    expected = model.generate([5, 6, 7], 9, seed=4, **SAMPLING)[3:]
    stream = model.stream([5, 6, 7], 9, seed=4, **SAMPLING)
    first = next(stream)
    assert mm.is_grad_enabled()                                  # a paused stream leaks no grad mode
    assert [first] + list(stream) == expected
    stop = expected[2]
    assert list(model.stream(np.array([[5, 6, 7]]), 9, seed=4, stop=stop, **SAMPLING)) == \
        expected[:expected.index(stop) + 1]


def test_generation_uses_eval_mode_and_restores_training_mode():
    model = make_model(dropout=0.5).train()
    a = model.generate([1, 2], 8, seed=0)
    assert model.training and all(m.training for m in model.modules())
    assert model.generate([1, 2], 8, seed=0) == a                # dropout off while generating
    assert model.generate([1, 2], 8, seed=0, use_cache=False) == a
