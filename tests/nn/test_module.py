"""Module, Parameter, ModuleList: registration, traversal, state_dict, modes, device, dtype."""
import numpy as np
import pytest

import minillm as mm
from minillm import backend
from minillm.nn import Linear, Module, ModuleList, Parameter, functional_call


class Pair(Module):
    def __init__(self):
        super().__init__()
        self.scale = Parameter(np.ones(3, dtype=np.float32))
        self.first = Linear(3, 4)
        self.second = Linear(4, 2, bias=False)
        self.register_buffer("table", np.arange(3, dtype=np.float32))
        self.note = "not registered"

    def forward(self, x):
        return self.second(self.first(x * self.scale))


def test_parameters_in_registration_order():
    names = [name for name, _ in Pair().named_parameters()]
    assert names == ["scale", "first.weight", "first.bias", "second.weight"]
    model = Pair()
    assert all(p is q for p, q in zip(model.parameters(), dict(model.named_parameters()).values()))
    assert model.num_parameters() == 3 + 12 + 4 + 8


def test_shared_parameters_are_listed_once():
    model = Pair()
    model.extra = Linear(3, 4)
    model.extra.weight = model.first.weight                  # shared
    assert sum(p is model.first.weight for p in model.parameters()) == 1
    assert "extra.weight" not in model.state_dict()


def test_parameter_is_a_trainable_leaf():
    p = Parameter(np.zeros((2, 2), dtype=np.float32))
    assert isinstance(p, mm.Tensor) and p.requires_grad and p.is_leaf
    assert not Parameter(np.zeros(2), requires_grad=False).requires_grad
    with pytest.raises(TypeError, match="floating"):
        Parameter(np.zeros(2, dtype=np.int64))


def test_reassigning_replaces_registration():
    model = Pair()
    model.first = None
    assert "first.weight" not in dict(model.named_parameters())
    with pytest.raises(TypeError, match="wrap it in Parameter"):
        model.loose = mm.tensor(np.ones(2), requires_grad=True)


def test_state_dict_round_trip_and_errors():
    a, b = Pair(), Pair()
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    state = a.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['second.weight'\]"):
        b.load_state_dict({k: v for k, v in state.items() if k != "second.weight"})
    with pytest.raises(ValueError, match=r"unexpected keys \['bogus'\].*expected keys"):
        b.load_state_dict({**state, "bogus": np.ones(1)})
    with pytest.raises(ValueError, match=r"'first.weight' has shape \(3, 4\), expected \(4, 3\)"):
        b.load_state_dict({**state, "first.weight": np.ones((3, 4))})
    b.load_state_dict({"scale": np.full(3, 2.0)}, strict=False)          # converted to float32
    assert b.scale.dtype == np.float32 and (b.scale.data == 2).all()


@pytest.mark.parametrize("value, words", [
    (np.ones((4, 3), np.int8), "dtype int8, expected a floating dtype"),
    (np.ones((4, 3), bool), "dtype bool, expected a floating dtype"),
    (np.ones((4, 3), np.int64), "dtype int64, expected a floating dtype"),
    (np.ones((4, 3), np.uint16), r"dtype uint16, .*raw bfloat16 bits\? load them with bf16_as='float32'"),
])
def test_load_state_dict_accepts_only_floating_arrays(value, words):
    # Before, any dtype was cast silently: an int8 or bool embedding loaded as garbage weights.
    model = Pair()
    state = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"'first.weight' has {words}"):
        model.load_state_dict({**state, "first.weight": value})
    for dtype in (np.float16, np.float32, np.float64):                   # floating: converted
        model.load_state_dict({**state, "first.weight": np.ones((4, 3), dtype)})
        assert model.first.weight.dtype == np.float32


def test_load_state_dict_changes_nothing_on_error():
    model = Pair()
    before = model.first.weight.data.copy()
    with pytest.raises(ValueError):
        model.load_state_dict({"first.weight": np.zeros((4, 3)), "bogus": np.ones(1)})
    np.testing.assert_array_equal(model.first.weight.data, before)


def test_train_eval_reach_every_submodule():
    model = Pair()
    assert model.training and model.first.training
    assert model.eval() is model
    assert not model.training and not model.first.training and not model.second.training
    model.train()
    assert model.first.training


def test_to_moves_parameters_and_buffers_in_place(gpu_device):
    model = Pair()
    params = model.parameters()
    model.first.weight.grad = np.ones((4, 3), dtype=np.float32)
    model.to(gpu_device)
    assert model.parameters() == params                        # the same objects
    assert all(p.device == "cuda" for p in params) and model.device == "cuda"
    assert backend.device_of(model.table) == "cuda" and backend.device_of(model.first.weight.grad) == "cuda"
    out = model(mm.tensor(np.ones((2, 3), dtype=np.float32), device="cuda"))
    assert out.device == "cuda"
    model.to("cpu")
    assert model.device == "cpu" and backend.device_of(model.table) == "cpu"
    with pytest.raises(ValueError, match="device='tpu'"):
        model.to("tpu")


def test_to_dtype_converts_parameters_and_buffers():
    model = Pair().to_dtype(np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters()) and model.table.dtype == np.float64
    assert model(mm.tensor(np.ones((1, 3)))).dtype == np.float64
    with pytest.raises(TypeError, match="floating"):
        model.to_dtype(np.int32)


def test_module_list():
    layers = ModuleList([Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and layers[-1] is list(layers)[2]
    assert [n for n, _ in layers.named_parameters()][:2] == ["0.weight", "0.bias"]
    with pytest.raises(IndexError):
        layers[3]
    with pytest.raises(TypeError, match="expected a Module"):
        layers.append("not a module")


def test_functional_call_routes_gradients_to_given_tensors():
    model = Pair()
    w = mm.tensor(np.ones((4, 3), dtype=np.float32), requires_grad=True)
    with functional_call(model, {"first.weight": w}):
        model(mm.tensor(np.ones((2, 3), dtype=np.float32))).sum().backward()
    assert w.grad is not None and model.first.weight.grad is None
    assert model.first.weight is model._modules["first"]._parameters["weight"]      # restored
    with pytest.raises(ValueError, match="not a parameter"):
        with functional_call(model, {"nope": w}):
            pass


def test_setattr_before_init_is_a_clear_error():
    class Broken(Module):
        def __init__(self):
            self.x = 1

    with pytest.raises(RuntimeError, match="super"):
        Broken()
