"""The CuPy code path, proven without a GPU: every op runs under the strict emulation, whose
arrays (like CuPy's) refuse implicit host conversion and mixing with host arrays."""
import numpy as np
import pytest

import minillm as mm
from minillm import backend
from minillm._strict import StrictArray, StrictDeviceError
from tests.core.op_cases import CASES


@pytest.mark.parametrize("case", [c for c in CASES if not c.host_only], ids=lambda c: c.id)
def test_every_op_runs_forward_and_backward_on_the_strict_device(case, rng, strict_device):
    tensors = [mm.tensor(a, device=strict_device, requires_grad=True) for a in case.inputs(rng)]
    out = case.fn(*tensors)
    assert type(out.data) is StrictArray and out.device == "cuda"
    upstream = backend.to_device(rng.standard_normal(out.shape), "cuda")
    out.backward(upstream)
    for t in tensors:
        assert t.grad is None or type(t.grad) is StrictArray
    # and the strict run gives the host run's numbers
    host = [mm.tensor(backend.to_numpy(t.data), requires_grad=True) for t in tensors]
    host_out = case.fn(*host)
    np.testing.assert_allclose(backend.to_numpy(out.data), host_out.numpy(), rtol=1e-12, atol=1e-12)
    host_out.backward(backend.to_numpy(upstream))
    for t, h in zip(tensors, host):
        if h.grad is not None:
            np.testing.assert_allclose(backend.to_numpy(t.grad), h.grad, rtol=1e-12, atol=1e-12)


def test_strict_arrays_refuse_implicit_host_conversion(strict_device):
    x = mm.tensor(np.ones((2, 3)), device=strict_device)
    with pytest.raises(TypeError, match="implicit conversion"):
        np.asarray(x.data)
    with pytest.raises(TypeError, match="implicit conversion"):
        np.array(x.data)
    assert x.numpy().shape == (2, 3)          # the explicit way works
    assert float(x.data.sum()) == 6.0          # so does a scalar read, as in CuPy


def test_strict_arrays_refuse_mixing_with_host_arrays(strict_device):
    x = mm.tensor(np.ones(3), device=strict_device)
    with pytest.raises(StrictDeviceError, match="host numpy array"):
        x.data + np.ones(3)
    with pytest.raises(StrictDeviceError):
        x.data[np.array([0, 1])]
    with pytest.raises(StrictDeviceError, match="scatter_add"):
        backend.get_array_module(x.data).add.at(x.data, 0, 1.0)


def test_mixing_devices_in_an_op_names_both_devices(strict_device):
    a = mm.tensor(np.ones(3), device=strict_device)
    b = mm.tensor(np.ones(3))
    with pytest.raises(RuntimeError, match=r"input 0 on 'cuda', input 1 on 'cpu'"):
        a + b


def test_scatter_add_accumulates_repeats_on_both_devices(strict_device):
    for device in ("cpu", strict_device):
        target = backend.to_device(np.zeros((4, 2)), device)
        rows = backend.to_device(np.array([1, 3, 1, 1]), device)
        values = backend.to_device(np.arange(8.0).reshape(4, 2), device)
        backend.scatter_add(target, rows, values)
        expected = np.zeros((4, 2))
        expected[1] = [0 + 4 + 6, 1 + 5 + 7]
        expected[3] = [2, 3]
        np.testing.assert_array_equal(backend.to_numpy(target), expected)


def test_tensor_to_moves_between_devices_and_keeps_requires_grad(strict_device):
    x = mm.tensor(np.arange(3.0), requires_grad=True)
    y = x.to(strict_device)
    assert y.device == "cuda" and y.requires_grad and y.is_leaf
    z = y.to("cpu")
    np.testing.assert_array_equal(z.numpy(), [0.0, 1.0, 2.0])
    assert x.to("cpu") is x


def test_cuda_without_gpu_or_emulation_is_a_clear_error():
    if backend.cuda_available():
        pytest.skip("a GPU is present")
    previous = backend.strict_device_enabled()
    backend.use_strict_device(False)
    try:
        with pytest.raises(RuntimeError, match="needs CuPy"):
            mm.tensor([1.0]).to("cuda")
    finally:
        backend.use_strict_device(previous)


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="device='tpu'"):
        mm.tensor([1.0]).to("tpu")
