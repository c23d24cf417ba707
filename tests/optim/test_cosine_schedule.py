"""cosine_schedule against hand-computed values; set_lr; argument validation."""
import math

import numpy as np
import pytest

import minillm as mm
from minillm.optim import SGD, cosine_schedule, set_lr


def test_warmup_rises_linearly_to_max_lr():
    # lr = max_lr (step + 1) / warmup: 0.25, 0.5, 0.75, 1.0 for warmup 4
    got = [cosine_schedule(s, max_lr=2.0, warmup_steps=4, total_steps=10) for s in range(4)]
    assert got == pytest.approx([0.5, 1.0, 1.5, 2.0], rel=1e-15)


def test_cosine_decay_without_warmup():
    # r = step / 4: lr = ½ (1 + cos(π r)) = 1, (1 + √½)/2, ½, (1 - √½)/2, 0
    half_sqrt2 = math.sqrt(0.5)
    got = [cosine_schedule(s, max_lr=1.0, warmup_steps=0, total_steps=4) for s in range(5)]
    assert got == pytest.approx([1.0, (1 + half_sqrt2) / 2, 0.5, (1 - half_sqrt2) / 2, 0.0],
                                rel=1e-15, abs=1e-16)


def test_decay_after_warmup_ends_at_min_lr_and_stays():
    kw = {"max_lr": 1.0, "warmup_steps": 2, "total_steps": 6, "min_lr": 0.1}
    assert cosine_schedule(2, **kw) == 1.0                       # r = 0: the peak
    assert cosine_schedule(4, **kw) == pytest.approx(0.55)       # r = ½: the midpoint 0.1 + 0.45
    assert cosine_schedule(6, **kw) == pytest.approx(0.1)        # r = 1
    assert cosine_schedule(10 ** 9, **kw) == 0.1
    lrs = [cosine_schedule(s, **kw) for s in range(2, 7)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_warmup_as_long_as_the_run_then_min_lr():
    assert cosine_schedule(2, 1.0, warmup_steps=3, total_steps=3, min_lr=0.2) == 1.0
    assert cosine_schedule(3, 1.0, warmup_steps=3, total_steps=3, min_lr=0.2) == 0.2


def test_numpy_integer_steps_are_accepted():
    assert cosine_schedule(np.int64(1), 1.0, np.int32(4), 8) == 0.5


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"step": -1}, ValueError, "step=-1"),
    ({"step": 1.5}, TypeError, "step=1.5"),
    ({"step": True}, TypeError, "step=True"),
    ({"max_lr": -1.0}, ValueError, "max_lr=-1.0"),
    ({"min_lr": 2.0}, ValueError, "min_lr=2.0"),
    ({"warmup_steps": -2}, ValueError, "warmup_steps=-2"),
    ({"total_steps": 5, "warmup_steps": 6}, ValueError, "total_steps=5"),
    ({"total_steps": 0, "warmup_steps": 0}, ValueError, "total_steps=0"),
    ({"max_lr": float("nan")}, ValueError, "max_lr=nan"),
])
def test_bad_arguments_raise_naming_them(kwargs, error, fragment):
    arguments = {"step": 0, "max_lr": 1.0, "warmup_steps": 2, "total_steps": 10, "min_lr": 0.0}
    arguments.update(kwargs)
    with pytest.raises(error, match="cosine_schedule") as info:
        cosine_schedule(**arguments)
    assert fragment in str(info.value)


def test_set_lr_sets_every_group():
    a, b = mm.tensor([1.0], requires_grad=True), mm.tensor([2.0], requires_grad=True)
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    set_lr(opt, 0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    a.grad, b.grad = np.array([1.0], np.float32), np.array([1.0], np.float32)
    opt.step()
    np.testing.assert_allclose([a.data[0], b.data[0]], [0.99, 1.99], rtol=1e-6)
    with pytest.raises(ValueError, match="lr=-1.0"):
        set_lr(opt, -1.0)
    with pytest.raises(TypeError, match="Optimizer"):
        set_lr([a], 0.1)
