"""The optimizers on the device path: the strict emulation always, CuPy with --backend cupy.

The strict backend's arrays refuse implicit conversion to and mixing with host arrays, as
CuPy's do, so these tests prove that the optimizers only use the array module of the data.
Results equal the host results bit for bit under the emulation (the same NumPy kernels run)
and closely on a real GPU.
"""
import numpy as np
import pytest

import minillm as mm
from minillm import backend
from minillm.optim import SGD, AdamW, Muon, clip_grad_norm_

SHAPES = [(6, 5), (5,), (3, 2, 2)]


@pytest.fixture(params=["strict", "backend"])
def device_under_test(request):
    """"cuda" served by the strict emulation, then (with --backend cupy) by the real GPU."""
    if request.param == "strict":
        return request.getfixturevalue("strict_device")
    device = request.getfixturevalue("device")          # follows --backend (tests/conftest.py)
    if device == "cpu" or backend.strict_device_enabled():
        pytest.skip("the device path runs on the strict emulation in the other case; "
                    "pass --backend cupy to run it on a GPU too")
    return device


def tolerance():
    exact = backend.strict_device_enabled()
    return {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-5, "atol": 1e-6}


def host_and_device_params(seed=0):
    rng = np.random.default_rng(seed)
    host = [mm.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in SHAPES]
    return host, [p.to("cuda") for p in host]


def assign_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = backend.to_device(g, p.device)


def gradients(step):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


@pytest.mark.parametrize("make", [
    lambda ps: AdamW(ps, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1),
    lambda ps: SGD(ps, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: SGD(ps, lr=1e-2, momentum=0.9, dampening=0.2),
    lambda ps: Muon([{"params": ps[:1]}, {"params": ps[1:], "orthogonalize": False}], lr=1e-2, weight_decay=0.1),
], ids=["adamw", "sgd_nesterov", "sgd_dampening", "muon"])
def test_steps_on_the_device_match_the_host(device_under_test, make):
    host, dev = host_and_device_params()
    host_opt, dev_opt = make(host), make(dev)
    for step in range(3):
        grads = gradients(step)
        assign_grads(host, grads)
        assign_grads(dev, grads)
        assert clip_grad_norm_(dev, 2.0) == pytest.approx(clip_grad_norm_(host, 2.0), rel=1e-6)
        host_opt.step()
        dev_opt.step()
    for h, d in zip(host, dev):
        assert d.device == "cuda"
        np.testing.assert_allclose(d.numpy(), h.data, **tolerance())


def test_state_dict_crosses_devices(device_under_test):
    host, dev = host_and_device_params()
    host_opt = AdamW(host, lr=1e-2)
    assign_grads(host, gradients(0))
    host_opt.step()
    # host checkpoint -> device optimizer: buffers land on the device
    dev_opt = AdamW(dev, lr=1e-2)
    for p, h in zip(dev, host):
        p.data = backend.to_device(h.data, "cuda")
    dev_opt.load_state_dict(host_opt.state_dict())
    assert backend.device_of(dev_opt.state[0]["exp_avg"]) == "cuda"
    # device optimizer -> state dict of host arrays
    sd = dev_opt.state_dict()
    assert all(type(a) is np.ndarray for a in sd["state"].values())
    np.testing.assert_array_equal(sd["state"]["0.exp_avg_sq"], host_opt.state[0]["exp_avg_sq"])
    # and the next step agrees
    grads = gradients(1)
    assign_grads(host, grads)
    assign_grads(dev, grads)
    host_opt.step()
    dev_opt.step()
    for h, d in zip(host, dev):
        np.testing.assert_allclose(d.numpy(), h.data, **tolerance())


def test_parameter_moved_after_the_state_was_made_is_reported(device_under_test):
    host, _ = host_and_device_params()
    opt = SGD(host, lr=0.1, momentum=0.9)
    assign_grads(host, gradients(0))
    opt.step()
    for p in host:
        p.data = backend.to_device(p.data, "cuda")
    assign_grads(host, gradients(1))
    with pytest.raises(RuntimeError, match="on 'cuda' but its optimizer state is not"):
        opt.step()
