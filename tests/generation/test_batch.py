"""DecodeBatch: rows at their own positions decode exactly as each sequence alone."""
import numpy as np
import pytest

from minillm.autograd import no_grad
from minillm.generation.batch import DecodeBatch
from minillm.nn import KVCache

from .helpers import CONFIGS, make_model, prompts


def alone_logits(model, prompt, continuation):
    """Logits predicting each next token of prompt + continuation, decoded alone with a KVCache:
    the prefill's last row, then one row per fed continuation token."""
    cache = KVCache.for_model(model, 1)
    rows = []
    with no_grad():
        out, _ = model(np.array([prompt]), kv_cache=cache, only_last=True)
        rows.append(out.data[0, 0])
        for token in continuation:
            out, _ = model(np.array([[token]]), kv_cache=cache, only_last=True)
            rows.append(out.data[0, 0])
    return np.stack(rows)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rows_joining_and_leaving_decode_as_alone(name):
    """Sequences join at different steps with different prompt lengths and leave at different
    steps; every logit row equals the alone decode's (float64: to rounding) and greedy tokens match."""
    model = make_model(name)
    block = model.config.block_size
    lengths = [5, 2, 9, 2, 3]
    joins = [0, 0, 2, 3, 9]                                       # step at which each sequence joins
    budgets = [8, 11, 5, 7, 6]                                    # tokens each one generates
    texts = prompts(lengths, seed=1)
    batch = DecodeBatch(model, max_rows=4)                       # rows are reused: 5 sequences, 4 rows
    got = {i: [] for i in range(len(texts))}
    logits = {i: [] for i in range(len(texts))}
    pending = {}
    step = 0
    while step < 40 and (pending or any(j >= step for j in joins)):
        new = [i for i, j in enumerate(joins) if j == step]
        if new:
            first = batch.add([(i, texts[i]) for i in new])
            for i, row in zip(new, first):
                logits[i].append(row)
                pending[i] = int(np.argmax(row))
        for i in [i for i in batch.keys if len(got[i]) + 1 >= budgets[i]]:
            got[i].append(pending.pop(i))
            batch.remove(i)
        if batch.rows:
            fed = [pending[i] for i in batch.keys]
            out = batch.step(fed)
            for i, token, row in zip(list(batch.keys), fed, out):
                got[i].append(token)
                logits[i].append(row)
                pending[i] = int(np.argmax(row))
        step += 1
    assert batch.rows == 0 and not pending
    for i, prompt in enumerate(texts):
        assert len(got[i]) == budgets[i] <= block - len(prompt)
        expected = alone_logits(model, prompt, got[i][:-1])
        np.testing.assert_allclose(np.stack(logits[i]), expected, rtol=1e-10, atol=1e-10)
        greedy = model.generate(prompt, budgets[i], temperature=0.0)[len(prompt):]
        assert got[i] == greedy


def test_float32_batched_logits_match_alone_within_rounding():
    model = make_model("llama-gqa-rope", dtype=np.float32)
    texts = prompts([3, 7, 1], seed=2)
    batch = DecodeBatch(model, max_rows=3)
    first = batch.add(list(enumerate(texts)))
    tokens = [int(np.argmax(row)) for row in first]
    second = batch.step(tokens)
    for i, prompt in enumerate(texts):
        expected = alone_logits(model, prompt, [tokens[i]])
        np.testing.assert_allclose(np.stack([first[i], second[i]]), expected, rtol=1e-4, atol=1e-5)
    assert list(batch.lengths[:3]) == [4, 8, 2]


def test_leftovers_of_a_removed_longer_row_are_never_read():
    """A short sequence moved into the row of a long one must not see the long one's old keys."""
    model = make_model("gpt2-learned")
    long_prompt, short_prompt = prompts([12, 2], seed=3)
    batch = DecodeBatch(model, max_rows=2)
    batch.add([("long", long_prompt), ("short", short_prompt)])
    batch.remove("long")                                         # "short" moves into row 0
    assert batch.keys == ["short"] and batch.length("short") == 2
    out = batch.step([4])
    np.testing.assert_allclose(out[0], alone_logits(model, short_prompt, [4])[1], rtol=1e-10, atol=1e-10)


def test_bad_use_is_refused_with_the_reason():
    model = make_model("gpt2-learned")
    batch = DecodeBatch(model, max_rows=1, capacity=4)
    with pytest.raises(ValueError, match="batch is empty"):
        batch.step([1])
    with pytest.raises(ValueError, match="expected 1..4"):
        batch.add([("a", [1, 2, 3, 4, 5])])
    with pytest.raises(ValueError, match="outside"):
        batch.add([("a", [1, 99])])
    batch.add([("a", [1, 2, 3, 4])])
    with pytest.raises(ValueError, match="rows are free"):
        batch.add([("b", [1])])
    with pytest.raises(ValueError, match="fill the capacity"):
        batch.step([1])
    with pytest.raises(ValueError, match="max_rows=0"):
        DecodeBatch(model, max_rows=0)


@pytest.mark.parametrize("temperature,top_p,top_k,penalty", [
    (1.0, None, None, None), (0.8, 0.95, None, None), (0.7, 0.5, None, None), (0.0, None, None, None),
    (1.0, 0.9, 5, None), (1.0, None, None, 1.3)])
def test_choose_rows_picks_what_each_rows_sampler_would(temperature, top_p, top_k, penalty):
    """Grouped sampling (one set of array operations for the rows that share settings) draws the
    very tokens of each row's own Sampler.choose, step after step (the generators advance alike)."""
    from minillm.generation.batch import choose_rows
    from minillm.generation.sampling import Sampler

    rng = np.random.Generator(np.random.PCG64(5))
    rows, vocab = 7, 300
    settings = dict(temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=penalty)
    grouped = [Sampler([[1, 2]], vocab, seed=s, **settings) for s in range(rows)]
    alone = [Sampler([[1, 2]], vocab, seed=s, **settings) for s in range(rows)]
    mixed = Sampler([[3]], vocab, temperature=0.9, top_p=0.8, seed=99)   # a row with other settings
    mixed_alone = Sampler([[3]], vocab, temperature=0.9, top_p=0.8, seed=99)
    for _ in range(5):
        logits = (rng.standard_normal((rows + 1, vocab)) * 3).astype(np.float32)
        got = choose_rows(grouped + [mixed], logits)
        want = [s.choose([0], logits[i:i + 1])[0] for i, s in enumerate(alone + [mixed_alone])]
        assert got == want


def test_choose_rows_reports_nan_logits_like_the_sampler():
    from minillm.errors import NumericalError
    from minillm.generation.batch import choose_rows
    from minillm.generation.sampling import Sampler

    logits = np.zeros((2, 10), dtype=np.float32)
    logits[1, 3] = np.nan
    with pytest.raises(NumericalError, match="NaN"):
        choose_rows([Sampler([[1]], 10, seed=s) for s in range(2)], logits)


@pytest.mark.parametrize("name", ["gpt2-learned", "llama-gqa-rope"])
def test_the_batched_step_runs_on_the_gpu_path(gpu_device, name):
    """On the device (strict emulation without a GPU: no implicit host conversion), the batched
    rows give the host model's logits."""
    host = make_model(name)
    model = make_model(name).to(gpu_device)
    texts = prompts([3, 6], seed=4)
    on_device, on_host = DecodeBatch(model, max_rows=2), DecodeBatch(host, max_rows=2)
    first = on_device.add(list(enumerate(texts)))
    np.testing.assert_allclose(first, on_host.add(list(enumerate(texts))), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(on_device.step([1, 2]), on_host.step([1, 2]), rtol=1e-10, atol=1e-10)
    on_device.remove(0)
    on_host.remove(0)
    np.testing.assert_allclose(on_device.step([3]), on_host.step([3]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("top_p", [0.1, 0.9, 0.999])
@pytest.mark.parametrize("kind", ["peaked", "flat", "ties"])
def test_nucleus_is_the_samplers_candidate_set(top_p, kind):
    """Partial selection gives the ids of the full stable sort (ties: smaller id first, also at
    the cut) and their probabilities to rounding; flat rows make the search grow past k = 64."""
    from minillm.generation.batch import nucleus
    from minillm.generation.sampling import candidates

    rng = np.random.Generator(np.random.PCG64(9))
    for _ in range(5):
        row = rng.standard_normal(1000) * {"peaked": 4.0, "flat": 0.05, "ties": 1.0}[kind]
        if kind == "ties":
            row = np.round(row * 2) / 2                          # many ids share each value
        ids, probs = nucleus(row / 0.7, top_p)
        want_ids, want_probs = candidates(row, 0.7, None, top_p)
        assert ids.tolist() == want_ids.tolist()
        np.testing.assert_allclose(probs, want_probs, rtol=1e-12, atol=0)
