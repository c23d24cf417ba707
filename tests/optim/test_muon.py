"""Muon: the Newton–Schulz orthogonalisation, the update against a hand-written reference, the
AdamW groups against AdamW, state dicts, grouping a GPT's parameters, validation."""
import math

import numpy as np
import pytest

import minillm as mm
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW, Muon, muon_groups, orthogonalize
from minillm.optim.muon import NS_COEFFICIENTS


@pytest.mark.parametrize("shape", [(8, 8), (5, 12), (12, 5), (192, 512)])
def test_orthogonalize_keeps_the_singular_vectors_and_pushes_the_values_near_one(shape):
    rng = np.random.default_rng(0)
    g = rng.standard_normal(shape)
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    o = orthogonalize(g)
    assert o.shape == g.shape and o.dtype == g.dtype
    # The iteration is an odd polynomial in G, so O = U·f(S)·Vᵀ: Uᵀ·O·V is diagonal ...
    core = u.T @ o @ vt.T
    off_diagonal = core - np.diag(np.diag(core))
    assert np.abs(off_diagonal).max() < 1e-10
    # ... and f(S) is what NS_COEFFICIENTS do to S/‖G‖_F, five times, in about [0.6, 1.2].
    x = s / (np.linalg.norm(g) + 1e-7)
    a, b, c = NS_COEFFICIENTS
    for _ in range(5):
        x = a * x + b * x ** 3 + c * x ** 5
    np.testing.assert_allclose(np.diag(core), x, rtol=1e-9)
    assert 0.6 < x.min() and x.max() < 1.2


def test_orthogonalize_of_zero_is_zero_and_float32_stays_float32():
    assert not orthogonalize(np.zeros((3, 4), dtype=np.float32)).any()
    assert orthogonalize(np.ones((3, 4), dtype=np.float32)).dtype == np.float32


@pytest.mark.parametrize("bad, message", [(np.zeros(3), "expected a 2-D array"), (np.zeros((2, 2, 2)), "2-D")])
def test_orthogonalize_refuses_other_shapes(bad, message):
    with pytest.raises(ValueError, match=message):
        orthogonalize(bad)
    with pytest.raises(ValueError, match="steps=0"):
        orthogonalize(np.eye(2), steps=0)


def reference_muon(w, grads, lr, momentum, nesterov, weight_decay, update_rms, ns_steps=5):
    """The docstring's update, written out in NumPy (float64)."""
    buffer = np.zeros_like(w)
    for g in grads:
        buffer = momentum * buffer + (1 - momentum) * g
        direction = (1 - momentum) * g + momentum * buffer if nesterov else buffer
        o = orthogonalize(direction, ns_steps)
        w = w * (1 - lr * weight_decay) - lr * update_rms * math.sqrt(max(w.shape)) * o
    return w


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_the_written_out_update(nesterov):
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((6, 10))
    grads = [rng.standard_normal((6, 10)) for _ in range(3)]
    p = mm.tensor(w0.copy(), requires_grad=True)
    opt = Muon([p], lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.1, update_rms=0.3)
    for g in grads:
        p.grad = g.copy()
        opt.step()
    expected = reference_muon(w0, grads, 0.05, 0.9, nesterov, 0.1, 0.3)
    np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-14)
    assert opt.state[0]["step"] == 3 and set(opt.state[0]) == {"step", "momentum_buffer"}


def test_update_has_the_requested_rms_whatever_the_shape():
    # One step from w = 0 with no decay: the update is lr·update_rms·√max(m, n)·O, whose RMS is
    # about lr·update_rms (the singular values of O are near, not at, 1).
    rng = np.random.default_rng(2)
    for shape in [(16, 16), (8, 64), (64, 8)]:
        p = mm.tensor(np.zeros(shape), requires_grad=True)
        p.grad = rng.standard_normal(shape)
        Muon([p], lr=1.0, update_rms=0.2).step()
        rms = np.sqrt(np.mean(p.data ** 2))
        assert 0.2 * 0.7 < rms < 0.2 * 1.2, (shape, rms)


def test_adamw_groups_get_adamw_exactly():
    rng = np.random.default_rng(3)
    values = [rng.standard_normal(s) for s in [(4, 3), (5,), (2, 2, 2)]]
    muon_params = [mm.tensor(v.copy(), requires_grad=True) for v in values]
    adamw_params = [mm.tensor(v.copy(), requires_grad=True) for v in values]
    muon = Muon([{"params": muon_params, "orthogonalize": False}], lr=1e-2, betas=(0.8, 0.95), eps=1e-6,
                weight_decay=0.1)
    adamw = AdamW(adamw_params, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    for step in range(3):
        for a, b in zip(muon_params, adamw_params):
            a.grad = rng.standard_normal(a.shape)
            b.grad = a.grad.copy()
        muon.step()
        adamw.step()
    for a, b in zip(muon_params, adamw_params):     # the same arithmetic on the same arrays: bit for bit
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_round_trip_resumes_exactly():
    rng = np.random.default_rng(4)
    values = [rng.standard_normal((6, 4)), rng.standard_normal((4,))]
    grads = [[rng.standard_normal(v.shape) for v in values] for _ in range(4)]

    def make():
        params = [mm.tensor(v.copy(), requires_grad=True) for v in values]
        opt = Muon([{"params": params[:1]}, {"params": params[1:], "orthogonalize": False}], lr=0.02,
                   weight_decay=0.01)
        return params, opt

    def run(params, opt, steps):
        for step in steps:
            for p, g in zip(params, grads[step]):
                p.grad = g.copy()
            opt.step()

    straight, straight_opt = make()
    run(straight, straight_opt, range(4))
    first, first_opt = make()
    run(first, first_opt, range(2))
    saved = first_opt.state_dict()
    assert saved["optimizer"] == "Muon" and sorted(saved["state"]) == ["0.momentum_buffer", "1.exp_avg",
                                                                        "1.exp_avg_sq"]
    resumed, resumed_opt = make()
    for p, q in zip(resumed, first):
        p.data = q.data.copy()
    resumed_opt.load_state_dict(saved)
    run(resumed, resumed_opt, range(2, 4))
    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(a.data, b.data)


def test_muon_groups_split_a_gpt():
    config = GPTConfig.llama(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_kv_head=1, n_embd=16)
    model = GPT(config)
    hidden, other, vectors = muon_groups(model.named_parameters(), 0.1)
    assert [g["orthogonalize"] for g in (hidden, other, vectors)] == [True, False, False]
    assert [g["weight_decay"] for g in (hidden, other, vectors)] == [0.1, 0.1, 0.0]
    assert all(name.startswith("blocks.") and name.endswith("_proj.weight") for name in hidden["names"])
    assert len(hidden["names"]) == 2 * 7                 # q, k, v, o, gate, up, down per block
    assert other["names"] == ["tok_emb.weight", "lm_head.weight"]
    assert all(p.ndim == 1 for p in vectors["params"])
    named = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in (hidden, other, vectors)) == len(named)
    # tied weights are listed once; a custom rule chooses the orthogonalized matrices
    tied = GPT(GPTConfig.gpt2(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16, tie_weights=True))
    groups = muon_groups(tied.named_parameters(), 0.0, hidden=lambda name, p: name.endswith("up_proj.weight"))
    assert sum(len(g["params"]) for g in groups) == len({id(p) for p in tied.parameters()})
    assert groups[0]["names"] == ["blocks.0.mlp.up_proj.weight"]


def test_muon_trains_a_small_model():
    config = GPTConfig.llama(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)
    mm.manual_seed(0)
    model = GPT(config)
    opt = Muon(muon_groups(model.named_parameters(), 0.0), lr=0.02)
    ids = np.random.default_rng(0).integers(0, 32, size=(4, 9))
    losses = []
    for _ in range(30):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.item()))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"momentum": 1.0}, ValueError, "momentum=1.0"),
    ({"ns_steps": 0}, ValueError, "ns_steps=0"),
    ({"update_rms": 0.0}, ValueError, "update_rms=0.0"),
    ({"nesterov": 1}, TypeError, "nesterov=1"),
    ({"lr": -1.0}, ValueError, "lr=-1.0"),
])
def test_bad_hyperparameters_are_named(kwargs, error, message):
    p = mm.tensor(np.zeros((2, 2)), requires_grad=True)
    with pytest.raises(error, match=message):
        Muon([p], **kwargs)


def test_a_vector_in_an_orthogonalized_group_is_refused_with_the_fix():
    vector = mm.tensor(np.zeros(3), requires_grad=True)
    with pytest.raises(ValueError, match=r"shape \(3,\).*'orthogonalize': False"):
        Muon([vector])
