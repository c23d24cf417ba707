"""The Optimizer base: param groups, zero_grad, the weight-decay split and state dicts."""
import json

import numpy as np
import pytest

import minillm as mm
from minillm.optim import SGD, AdamW, decay_groups

SHAPES = [(4, 3), (3,), (2, 2, 2)]


def make_params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [mm.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in SHAPES]


def gradient_sequence(steps, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def run_steps(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()
        opt.zero_grad()


# -- construction and groups ----------------------------------------------------------------------
def test_groups_override_defaults_and_fill_the_rest():
    a, b, c = make_params()
    opt = AdamW([{"params": [a, b], "weight_decay": 0.0}, {"params": [c], "lr": 0.5}], lr=0.1,
                weight_decay=0.2)
    first, second = opt.param_groups
    assert first["params"] == [a, b] and first["lr"] == 0.1 and first["weight_decay"] == 0.0
    assert second["params"] == [c] and second["lr"] == 0.5 and second["weight_decay"] == 0.2
    assert first["betas"] == second["betas"] == (0.9, 0.999)


def test_each_group_uses_its_own_hyperparameters():
    a, b = mm.tensor([1.0], requires_grad=True), mm.tensor([1.0], requires_grad=True)
    opt = SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.3}], lr=0.0)
    a.grad, b.grad = np.array([1.0], np.float32), np.array([1.0], np.float32)
    opt.step()
    np.testing.assert_allclose([a.data[0], b.data[0]], [0.9, 0.7], rtol=1e-6)


def test_add_param_group_appends_positions():
    a, b, c = make_params()
    opt = SGD([a, b], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": [c], "lr": 0.2})
    c.grad = np.ones(SHAPES[2], np.float32)
    opt.step()
    assert list(opt.state) == [2] and opt.param_groups[1]["momentum"] == 0.9


def test_params_may_be_a_generator():
    params = make_params()
    opt = SGD((p for p in params), lr=0.1)
    assert opt.param_groups[0]["params"] == params


@pytest.mark.parametrize("build, error, fragment", [
    (lambda ps: [], ValueError, "empty parameter list"),
    (lambda ps: ps[0], TypeError, "single Tensor"),
    (lambda ps: {"params": ps}, TypeError, "got a dict"),
    (lambda ps: [ps[0], ps[0]], ValueError, "more than once"),
    (lambda ps: [{"params": [ps[0]]}, {"params": [ps[0]]}], ValueError, "more than once"),
    (lambda ps: [np.ones(3)], TypeError, "item 0 is a ndarray"),
    (lambda ps: [{"params": [ps[0]]}, ps[1]], TypeError, "do not mix"),
    (lambda ps: [{"lr": 0.1}], ValueError, "no 'params' key"),
    (lambda ps: [{"params": set(ps)}], TypeError, "got a set"),
    (lambda ps: [mm.tensor(np.array([1, 2]))], TypeError, "dtype int64"),
])
def test_bad_params_raise(build, error, fragment):
    with pytest.raises(error, match=fragment):
        SGD(build(make_params()), lr=0.1)


def test_zero_grad_drops_grads():
    params = make_params()
    for p in params:
        p.grad = np.ones(p.shape, np.float32)
    opt = AdamW(params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_grad_with_the_wrong_shape_is_reported():
    (a, *_) = params = make_params()
    a.name = "wte"
    a.grad = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"parameter 0 \('wte', shape \(4, 3\)\).*\(3, 4\)"):
        AdamW(params).step()


# -- decay_groups ----------------------------------------------------------------------
def test_decay_groups_decay_matrices_only():
    wte = mm.tensor(np.ones((10, 4), np.float32), requires_grad=True)
    w = mm.tensor(np.ones((4, 4), np.float32), requires_grad=True)
    bias = mm.tensor(np.ones(4, np.float32), requires_grad=True)
    gain = mm.tensor(np.ones(4, np.float32), requires_grad=True)
    frozen = mm.tensor(np.ones((4, 4), np.float32), requires_grad=False)
    named = [("wte.weight", wte), ("h.0.fc.weight", w), ("h.0.fc.bias", bias),
             ("ln_f.weight", gain), ("frozen.weight", frozen), ("lm_head.weight", wte)]  # tied
    decay, no_decay = decay_groups(named, 0.1)
    assert decay["params"] == [wte, w] and decay["names"] == ["wte.weight", "h.0.fc.weight"]
    assert decay["weight_decay"] == 0.1
    assert no_decay["params"] == [bias, gain] and no_decay["names"] == ["h.0.fc.bias", "ln_f.weight"]
    assert no_decay["weight_decay"] == 0.0
    assert decay_groups(dict(named), 0.1)[0]["names"] == ["wte.weight", "h.0.fc.weight"]

    # With zero gradients AdamW's moments stay 0: decayed tensors shrink by (1 - lr wd), the
    # others stay exactly as they were.
    opt = AdamW(decay_groups(named, 0.1), lr=0.5)
    for p in (wte, w, bias, gain):
        p.grad = np.zeros(p.shape, np.float32)
    opt.step()
    np.testing.assert_allclose(w.data, 0.95, rtol=1e-7)
    np.testing.assert_allclose(wte.data, 0.95, rtol=1e-7)
    np.testing.assert_array_equal(bias.data, 1.0)
    np.testing.assert_array_equal(gain.data, 1.0)


def test_decay_groups_keep_an_empty_group_and_validate():
    w = mm.tensor(np.ones((2, 2), np.float32), requires_grad=True)
    decay, no_decay = decay_groups([("w", w)], 0.1)
    assert no_decay["params"] == [] and AdamW([decay, no_decay]).param_groups[1]["params"] == []
    with pytest.raises(ValueError, match="weight_decay=-0.1"):
        decay_groups([("w", w)], -0.1)
    with pytest.raises(TypeError, match=r"\(name, Tensor\) pair"):
        decay_groups([w], 0.1)
    with pytest.raises(TypeError, match="'w' is a ndarray"):
        decay_groups([("w", np.ones(2))], 0.1)


# -- state dicts ----------------------------------------------------------------------------
OPTIMIZERS = {
    "adamw": lambda ps, lr=1e-2: AdamW(ps, lr=lr, betas=(0.9, 0.95), weight_decay=0.1),
    "sgd_nesterov": lambda ps, lr=1e-2: SGD(ps, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd_plain": lambda ps, lr=1e-2: SGD(ps, lr=lr),
}


def split_for_checkpoint(state_dict):
    """What a checkpoint writer does: arrays to one file, the rest through JSON text."""
    arrays = state_dict.pop("state")
    return json.dumps(state_dict), arrays


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_resuming_from_a_state_dict_matches_an_uninterrupted_run(kind):
    grads = gradient_sequence(6)
    params = make_params()
    opt = OPTIMIZERS[kind](params)
    run_steps(opt, params, grads[:3])
    text, arrays = split_for_checkpoint(opt.state_dict())

    resumed_params = [mm.tensor(p.data.copy(), requires_grad=True) for p in params]
    resumed = OPTIMIZERS[kind](resumed_params, lr=123.0)   # lr comes back from the checkpoint
    resumed.load_state_dict({**json.loads(text), "state": arrays})
    assert resumed.param_groups[0]["lr"] == 1e-2

    run_steps(opt, params, grads[3:])
    run_steps(resumed, resumed_params, grads[3:])
    for p, q in zip(params, resumed_params):
        np.testing.assert_array_equal(p.data, q.data)
    assert opt.state.keys() == resumed.state.keys()
    for i in opt.state:
        for key, value in opt.state[i].items():
            np.testing.assert_array_equal(value, resumed.state[i][key])


def test_state_dict_layout_and_snapshot():
    params = make_params()
    opt = AdamW(decay_groups([("a", params[0]), ("b", params[1]), ("c", params[2])], 0.1))
    params[1].grad = np.ones(SHAPES[1], np.float32)
    params[2].grad = np.ones(SHAPES[2], np.float32)
    opt.step()
    sd = opt.state_dict()
    assert sd["optimizer"] == "AdamW"
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sd["param_groups"][0]["names"] == ["a", "c"] and sd["param_groups"][0]["betas"] == [0.9, 0.999]
    assert sd["steps"] == [0, 1, 1]        # position 0 is "a", which had no grad
    assert sorted(sd["state"]) == ["1.exp_avg", "1.exp_avg_sq", "2.exp_avg", "2.exp_avg_sq"]
    assert all(type(a) is np.ndarray for a in sd["state"].values())
    json.dumps({k: v for k, v in sd.items() if k != "state"})
    # A snapshot: later in-place updates of the state do not reach it.
    saved = sd["state"]["2.exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"]["2.exp_avg"], saved)


def test_loading_copies_to_the_parameter_dtype_and_does_not_alias():
    params = make_params()
    opt = AdamW(params)
    run_steps(opt, params, gradient_sequence(1))
    sd = opt.state_dict()
    sd["state"] = {k: v.astype(np.float64) for k, v in sd["state"].items()}
    fresh = AdamW(params)
    fresh.load_state_dict(sd)
    assert fresh.state[0]["exp_avg"].dtype == np.float32
    before = fresh.state[0]["exp_avg"].copy()
    sd["state"]["0.exp_avg"][...] = 7.0
    np.testing.assert_array_equal(fresh.state[0]["exp_avg"], before)


def _corrupt(mutate):
    params = make_params()
    opt = AdamW(params)
    run_steps(opt, params, gradient_sequence(1))
    sd = opt.state_dict()
    mutate(sd)
    return sd


@pytest.mark.parametrize("mutate, error, fragment", [
    (lambda sd: sd.update(optimizer="SGD"), ValueError, "written by 'SGD'"),
    (lambda sd: sd.pop("steps"), ValueError, r"lacks \['steps'\]"),
    (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), ValueError, "2 param groups"),
    (lambda sd: sd["param_groups"][0].update(params=[0, 1]), ValueError, "3 parameters"),
    (lambda sd: sd["param_groups"][0].pop("eps"), ValueError, r"lacks hyperparameters \['eps'\]"),
    (lambda sd: sd["param_groups"][0].update(lr=-1.0), ValueError, "lr=-1.0"),
    (lambda sd: sd["steps"].pop(), ValueError, "'steps' has 2 entries"),
    (lambda sd: sd["steps"].__setitem__(0, -1), ValueError, r"steps\[0\]=-1"),
    (lambda sd: sd["state"].update({"0.exp_avg": np.zeros((3, 4), np.float32)}), ValueError,
     r"has shape \(3, 4\), but parameter 0 \(shape \(4, 3\)\)"),
    (lambda sd: sd["state"].update({"0.momentum": np.zeros((4, 3), np.float32)}), ValueError,
     "'momentum' is not a buffer"),
    (lambda sd: sd["state"].update({"7.exp_avg": np.zeros(1, np.float32)}), ValueError,
     "does not name a parameter position"),
    (lambda sd: sd["state"].pop("1.exp_avg_sq"), ValueError, r"needs buffers \['exp_avg', 'exp_avg_sq'\]"),
    (lambda sd: sd["state"].update({"0.exp_avg": [1.0]}), TypeError, "expected an array"),
    (lambda sd: sd["state"].update({"0.exp_avg": np.zeros((4, 3), np.int8)}), ValueError,
     r"state '0.exp_avg' has dtype int8, expected a floating dtype"),
])
def test_mismatched_state_dicts_raise_and_change_nothing(mutate, error, fragment):
    sd = _corrupt(mutate)
    params = make_params()
    opt = AdamW(params, lr=0.5)
    with pytest.raises(error, match=fragment):
        opt.load_state_dict(sd)
    assert opt.state == {} and opt.param_groups[0]["lr"] == 0.5


def test_group_names_must_match_when_both_sides_have_them():
    params = make_params()
    named = [("a", params[0]), ("b", params[1]), ("c", params[2])]
    sd = AdamW(decay_groups(named, 0.1)).state_dict()
    renamed = [("x", params[0]), ("b", params[1]), ("c", params[2])]
    with pytest.raises(ValueError, match="names differ"):
        AdamW(decay_groups(renamed, 0.1)).load_state_dict(sd)

