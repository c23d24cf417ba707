"""Module, Parameter and ModuleList: the containers a model is built from.

A :class:`Module` registers what is assigned to its attributes, in assignment order:

- a :class:`Parameter` (a Tensor that requires grad) becomes one of its parameters;
- a :class:`Module` becomes a submodule (its parameters are reached recursively);
- a *buffer*, declared with :meth:`Module.register_buffer`, is an xp array that moves with the
  module (``to``/``to_dtype``) but is not trained and not saved: buffers here hold tables
  derived from the config (RoPE, sinusoidal positions), rebuilt by the constructor.

Everything else is a plain attribute. Registered things are also ordinary attributes, so
``self.weight`` is a plain attribute read in ``forward`` (and every frame of a traceback reads
like ``Linear.forward``). Names are dotted paths, as in PyTorch: ``blocks.0.attn.q_proj.weight``.
"""
from __future__ import annotations

import contextlib

import numpy as np

from minillm import autograd
from minillm.backend import check_device, device_of, to_device
from minillm.tensor import Tensor


class Parameter(Tensor):
    """A trainable Tensor: a leaf with ``requires_grad=True`` that modules register.

    Args:
        data: a floating xp array (or anything :class:`~minillm.tensor.Tensor` accepts).
        requires_grad: False freezes it (it stays a parameter, e.g. for ``state_dict``).
    """

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True, name: str | None = None):
        super().__init__(data, requires_grad=False, name=name)
        if self.data.dtype.kind != "f":
            raise TypeError(f"Parameter: data has dtype {self.data.dtype}; expected a floating "
                            "array (only floating tensors are trained)")
        self.requires_grad = bool(requires_grad)

    def __repr__(self) -> str:
        return "Parameter(" + super().__repr__() + ")"


class Module:
    """Base class of every layer and model: subclasses set attributes in ``__init__`` and
    compute in ``forward``; calling the module calls ``forward``.

    Attributes:
        training: True in training mode (dropout active), False after :meth:`eval`.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "training", True)

    # -- registration ---------------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning "
                               f"attribute {name!r}")
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif isinstance(value, Tensor) and value.requires_grad and value.is_leaf:
            raise TypeError(f"{type(self).__name__}.{name}: a leaf Tensor with requires_grad=True "
                            "is not registered; wrap it in Parameter(...) to train it")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array) -> None:
        """Attach an xp array that follows the module's device and dtype (not trained, not in
        ``state_dict``: it must be derivable from the constructor's arguments)."""
        if not hasattr(array, "dtype") or not hasattr(array, "shape"):
            raise TypeError(f"register_buffer({name!r}): expected an xp array, got "
                            f"{type(array).__name__}")
        object.__setattr__(self, name, array)
        self._buffers[name] = array

    # -- calling --------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def __call__(self, *args, **kwargs):
        profiler = autograd._profiler
        if profiler is None:                      # not profiling: this one check is the whole cost
            return self.forward(*args, **kwargs)
        profiler.enter_module(self)               # the ops inside learn their module path
        try:
            return self.forward(*args, **kwargs)
        finally:
            profiler.exit_module()

    # -- traversal ------------------------------------------------------------------------------
    def children(self):
        """The direct submodules, in registration order."""
        return iter(self._modules.values())

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for this module and every submodule, depth first."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{child_name}" if name else child_name, child)
                        for child_name, child in module._modules.items()]
            stack.extend(reversed(children))

    def modules(self):
        return (module for _, module in self.named_modules())

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) for every parameter, each once (a shared parameter under its
        first name): this module's own first, then each submodule's, in registration order."""
        seen: set[int] = set()
        for module_name, module in self.named_modules(prefix):
            for name, parameter in module._parameters.items():
                if id(parameter) in seen:
                    continue
                seen.add(id(parameter))
                yield (f"{module_name}.{name}" if module_name else name), parameter

    def parameters(self) -> list[Parameter]:
        """Every parameter once, in :meth:`named_parameters` order (for optimizers)."""
        return [parameter for _, parameter in self.named_parameters()]

    def named_buffers(self):
        for module_name, module in self.named_modules():
            for name, array in module._buffers.items():
                yield (f"{module_name}.{name}" if module_name else name), array

    def num_parameters(self, trainable_only: bool = False) -> int:
        """The number of scalar parameters (each shared parameter counted once)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (``.grad = None``)."""
        for parameter in self.parameters():
            parameter.grad = None

    # -- modes ----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Set training mode (dropout on) on this module and every submodule; returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode={mode!r}): expected a bool")
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        """Evaluation mode (dropout off); returns self."""
        return self.train(False)

    # -- device and dtype -----------------------------------------------------------------------
    def to(self, device: str) -> "Module":
        """Move every parameter (and its gradient) and buffer to ``device`` ("cpu" or "cuda"),
        in place: the Parameter objects stay the same, so optimizers keep their references."""
        check_device(device)
        for parameter in self.parameters():
            parameter.data = to_device(parameter.data, device)
            if parameter.grad is not None:
                parameter.grad = to_device(parameter.grad, device)
        for module in self.modules():
            for name, array in list(module._buffers.items()):
                module.register_buffer(name, to_device(array, device))
        return self

    def to_dtype(self, dtype) -> "Module":
        """Convert every floating parameter and buffer to ``dtype`` in place (e.g. float64 for
        gradcheck); gradients are dropped. Returns self."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"to_dtype({dtype}): expected a floating dtype")
        for parameter in self.parameters():
            parameter.data = parameter.data.astype(dtype)
            parameter.grad = None
        for module in self.modules():
            module._buffers_to_dtype(dtype)
        return self

    def _buffers_to_dtype(self, dtype) -> None:
        """Cast this module's floating buffers (modules whose buffers are computed tables
        override this to recompute them at the new precision instead)."""
        for name, array in list(self._buffers.items()):
            if array.dtype.kind == "f":
                self.register_buffer(name, array.astype(dtype))

    @property
    def device(self) -> str:
        """The device of the first parameter ("cpu" for a module without parameters)."""
        for _, parameter in self.named_parameters():   # lazy: stops at the first one
            return parameter.device
        return "cpu"

    @property
    def dtype(self):
        """The dtype of the first parameter (float32 for a module without parameters)."""
        for _, parameter in self.named_parameters():   # lazy: stops at the first one
            return parameter.dtype
        return np.dtype(np.float32)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """{dotted name: xp array} for every parameter (shared ones once, under their first
        name). The arrays are the live parameter data, not copies: copy them to keep a snapshot."""
        return {name: parameter.data for name, parameter in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays from ``state`` into the parameters (converted to each parameter's dtype
        and device). With ``strict``, missing and unexpected keys are errors; a shape mismatch
        always is, and so is a value that is not floating point (float16/32/64: an integer or
        bool array would be cast into garbage weights). Nothing is changed unless every check
        passes."""
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict: expected a dict of name -> array, got "
                            f"{type(state).__name__}")
        own = dict(self.named_parameters())
        missing = [name for name in own if name not in state]
        unexpected = [name for name in state if name not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys {unexpected} (expected keys: {list(own)})")
        for name, parameter in own.items():
            if name not in state:
                continue
            value = state[name]
            value = value.data if isinstance(value, Tensor) else value
            if not hasattr(value, "shape"):
                problems.append(f"{name!r} is a {type(value).__name__}, expected an array")
            elif tuple(value.shape) != parameter.shape:
                problems.append(f"{name!r} has shape {tuple(value.shape)}, expected {parameter.shape}")
            elif getattr(getattr(value, "dtype", None), "kind", None) != "f":
                hint = (" (raw bfloat16 bits? load them with bf16_as='float32')"
                        if getattr(value, "dtype", None) == np.uint16 else "")
                problems.append(f"{name!r} has dtype {getattr(value, 'dtype', None)}, expected a floating "
                                f"dtype (float16, float32 or float64; the parameter is {parameter.dtype}){hint}")
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for name, parameter in own.items():
            if name in state:
                value = state[name]
                value = value.data if isinstance(value, Tensor) else value
                value = to_device(value, device_of(parameter.data))
                parameter.data = value.astype(parameter.dtype, copy=True)

    # -- repr -----------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of submodules registered under the names "0", "1", ... (``blocks.3.attn``)."""

    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.append: expected a Module, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))

    def __getitem__(self, index: int) -> Module:
        items = list(self._modules.values())
        if isinstance(index, slice):
            return ModuleList(items[index])
        if not isinstance(index, int) or not -len(items) <= index < len(items):
            raise IndexError(f"ModuleList index {index!r} out of range for {len(items)} modules")
        return items[index]


@contextlib.contextmanager
def functional_call(module: Module, parameters: dict):
    """Temporarily let ``module`` compute with other tensors in place of some parameters::

        with functional_call(model, {"blocks.0.attn.q_proj.weight": w}):
            logits, loss = model(idx, targets)    # gradients flow into w

    ``parameters`` maps dotted parameter names to Tensors of the same shape (any Tensor, e.g.
    the leaves that :func:`minillm.gradcheck` builds). The originals are restored on exit.
    """
    own = dict(module.named_parameters())
    owners = {}
    for name, tensor in parameters.items():
        if name not in own:
            raise ValueError(f"functional_call: {name!r} is not a parameter; expected one of {list(own)}")
        if not isinstance(tensor, Tensor) or tensor.shape != own[name].shape:
            raise ValueError(f"functional_call: {name!r} needs a Tensor of shape {own[name].shape}, got "
                             f"{getattr(tensor, 'shape', type(tensor).__name__)}")
        path, _, attribute = name.rpartition(".")
        owner = module
        for part in path.split(".") if path else ():
            owner = owner._modules[part]
        owners[name] = (owner, attribute)
    try:
        for name, tensor in parameters.items():
            owner, attribute = owners[name]
            object.__setattr__(owner, attribute, tensor)         # bypasses registration on purpose
        yield module
    finally:
        for name in parameters:
            owner, attribute = owners[name]
            object.__setattr__(owner, attribute, owner._parameters[attribute])
