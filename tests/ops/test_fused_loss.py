"""cross_entropy: gradcheck, agreement with the composed twin, ignore_index, label smoothing,
reductions, dtypes, memory, bad input."""
import math

import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from tests.ops.twins import assert_keeps_dtype, assert_twins_agree
from tests.peak_memory import traced_peak

TARGETS = np.array([[0, 4, -100], [1, 2, 3]])      # (2, 3) with one ignored position


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_gradcheck(reduction, smoothing, rng, device):
    logits = mm.tensor(rng.standard_normal((2, 3, 5)), device=device)
    targets = mm.tensor(TARGETS, device=device)
    for fn in (F.cross_entropy, F.cross_entropy_composed):
        assert mm.gradcheck(lambda z: fn(z, targets, label_smoothing=smoothing, reduction=reduction),
                            [logits])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_agrees_with_composed(reduction, smoothing, rng, device):
    def fused(z, t):
        return F.cross_entropy(z, t, label_smoothing=smoothing, reduction=reduction)

    def composed(z, t):
        return F.cross_entropy_composed(z, t, label_smoothing=smoothing, reduction=reduction)

    assert_twins_agree(fused, composed, [rng.standard_normal((2, 3, 7)) * 3, TARGETS], device)


def test_cross_entropy_values(rng):
    z = rng.standard_normal((4, 6))
    t = np.array([5, 0, -100, 2])
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    picked = -logp[[0, 1, 3], [5, 0, 2]]
    assert F.cross_entropy(mm.tensor(z), t).item() == pytest.approx(picked.mean(), rel=1e-12)
    assert F.cross_entropy(mm.tensor(z), t, reduction="sum").item() == pytest.approx(picked.sum(), rel=1e-12)
    none = F.cross_entropy(mm.tensor(z), t, reduction="none").numpy()
    np.testing.assert_allclose(none, [picked[0], picked[1], 0.0, picked[2]], rtol=1e-12)
    eps = 0.1
    smooth = (1 - eps) * picked - eps * logp[[0, 1, 3]].mean(-1)
    assert F.cross_entropy(mm.tensor(z), t, label_smoothing=eps).item() == pytest.approx(smooth.mean(), rel=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    z = mm.tensor(np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]], dtype=np.float32), requires_grad=True)
    loss = F.cross_entropy(z, np.array([0, 1]))
    loss.backward()
    assert loss.item() == 0.0 and np.isfinite(z.grad).all()


def test_uniform_logits_give_log_vocab():
    z = mm.tensor(np.zeros((3, 11)))
    assert F.cross_entropy(z, np.array([0, 5, 10])).item() == pytest.approx(math.log(11))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_keeps_dtype(dtype, reduction, rng, device):
    assert_keeps_dtype(lambda z, t: F.cross_entropy(z, t, reduction=reduction),
                       [rng.standard_normal((2, 3, 5)), TARGETS], device, dtype)


def test_all_ignored_targets_is_a_clear_error(rng):
    z = mm.tensor(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match=r"every target equals ignore_index=-100.*undefined"):
        F.cross_entropy(z, np.array([-100, -100]))
    assert F.cross_entropy(z, np.array([-100, -100]), reduction="sum").item() == 0.0
    assert F.cross_entropy(z, np.array([7, 7]), ignore_index=7, reduction="sum").item() == 0.0


def test_cross_entropy_bad_input(rng):
    z = mm.tensor(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match=r"target 4 is out of range; expected class ids in \[0, 4\)"):
        F.cross_entropy(z, np.array([0, 4]))
    with pytest.raises(ValueError, match=r"target -3 is out of range"):
        F.cross_entropy(z, np.array([0, -3]))
    with pytest.raises(ValueError, match=r"targets have shape \(3,\).*expected targets of shape \(2,\)"):
        F.cross_entropy(z, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        F.cross_entropy(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="label_smoothing=1.5"):
        F.cross_entropy(z, np.array([0, 1]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction='avg'"):
        F.cross_entropy(z, np.array([0, 1]), reduction="avg")


def _peaks(logits, targets, make_loss, retain_graph=False):
    """(what forward allocated at its peak, what backward allocated at its peak, the loss), bytes."""
    loss, forward_peak = traced_peak(lambda: make_loss(logits, targets))
    _, backward_peak = traced_peak(lambda: loss.backward(retain_graph=retain_graph))
    return forward_peak, backward_peak, loss


def _blocked_cross_entropy(logits, targets, label_smoothing=0.0):
    """The op without kept exponentials (the path ``amp.autocast`` takes), on float32 logits."""
    from minillm.backend import device_of, to_device
    from minillm.ops.loss import CrossEntropy

    targets = to_device(targets.data if isinstance(targets, mm.Tensor) else np.asarray(targets), device_of(logits.data))
    valid = targets.reshape(-1) != -100
    op = CrossEntropy(targets, -100, float(label_smoothing), "mean", valid, int(valid.sum()))
    return op.apply(logits)


def _big_logits():
    n, v = 1024, 2048
    logits = mm.tensor(np.random.default_rng(0).standard_normal((n, v)).astype(np.float32), requires_grad=True)
    return logits, np.arange(n) % v, n * v * 4


def test_cross_entropy_keeps_one_logits_sized_array_and_writes_the_gradient_into_it():
    # float32 without autocast: forward allocates E = e^{z - m} (N, V); backward turns it into the
    # gradient in place when the graph is freed, and allocates one new array when it is retained
    logits, targets, nbytes = _big_logits()

    def loss_fn(z, t):
        return F.cross_entropy(z, t, label_smoothing=0.1)

    forward_peak, backward_peak, _ = _peaks(logits, targets, loss_fn)
    assert 0.9 * nbytes < forward_peak < 1.25 * nbytes, forward_peak / nbytes
    assert backward_peak < 0.25 * nbytes, backward_peak / nbytes
    first = logits.grad.copy()
    logits.grad = None
    _, retained_peak, loss = _peaks(logits, targets, loss_fn, retain_graph=True)
    assert 0.9 * nbytes < retained_peak < 1.5 * nbytes, retained_peak / nbytes
    loss.backward()                                        # E was not overwritten by the first pass
    assert np.array_equal(logits.grad, 2 * first)


def test_cross_entropy_without_kept_exponentials_allocates_only_the_gradient():
    """The autocast path: forward allocates no (N, V) array (it works in blocks of rows); backward
    allocates one, the gradient."""
    logits, targets, nbytes = _big_logits()
    forward_peak, backward_peak, _ = _peaks(logits, targets,
                                            lambda z, t: _blocked_cross_entropy(z, t, label_smoothing=0.1))
    assert forward_peak < 0.25 * nbytes, forward_peak / nbytes
    assert backward_peak < 1.5 * nbytes, backward_peak / nbytes


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_without_kept_exponentials_agrees_with_composed(smoothing, rng, device, monkeypatch):
    from minillm.ops import loss

    monkeypatch.setattr(loss, "_BLOCK_ELEMENTS", 2 * 7)   # blocks of 2 rows, the last one partial
    arrays = [rng.standard_normal((5, 7)) * 3, np.array([0, 6, -100, 3, 3])]
    assert_twins_agree(lambda z, t: _blocked_cross_entropy(z, t, label_smoothing=smoothing),
                       lambda z, t: F.cross_entropy_composed(z, t, label_smoothing=smoothing),
                       arrays, device)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_in_row_blocks_matches_one_block(smoothing, rng, device, monkeypatch):
    """lse and the gradient are computed in blocks of rows; blocks of 2 rows (the last one
    partial) must agree with the composed twin."""
    from minillm.ops import loss

    monkeypatch.setattr(loss, "_BLOCK_ELEMENTS", 2 * 7)
    arrays = [rng.standard_normal((5, 7)) * 3, np.array([0, 6, -100, 3, 3])]
    assert_twins_agree(lambda z, t: F.cross_entropy(z, t, label_smoothing=smoothing),
                       lambda z, t: F.cross_entropy_composed(z, t, label_smoothing=smoothing),
                       arrays, device)
