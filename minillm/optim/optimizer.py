"""The optimizer base class: parameter groups, the step loop, zero_grad and state dicts.

An optimizer updates the ``.data`` of parameters (``minillm.Tensor`` with ``requires_grad``)
from their ``.grad``, in place, like PyTorch's ``torch.optim``::

    opt = AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    loss.backward()
    opt.step()          # p.data updated in place from p.grad; parameters without a grad are skipped
    opt.zero_grad()     # p.grad = None (never zeroed in place: gradient arrays may be shared)

Parameter groups
    ``params`` is an iterable of Tensors, or of dicts ``{"params": [...], "lr": ..., ...}``; a
    group's missing hyperparameters take the constructor's values. Extra keys (a ``"names"``
    list, say) are kept and travel through the state dict.

Parameter positions
    Parameters are numbered 0, 1, 2, ... in group order, then order within the group. That
    position is the key of ``optimizer.state`` and of the state dict, as in PyTorch.

State dict layout (:meth:`Optimizer.state_dict`)::

    {"optimizer": "AdamW",                                   # the class that wrote it
     "param_groups": [{"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08,
                       "weight_decay": 0.01, "params": [0, 1, 2]}, ...],
     "steps": [12, 12, 0],                                   # updates applied, per position
     "state": {"0.exp_avg": ndarray, "0.exp_avg_sq": ndarray, "1.exp_avg": ...}}

Everything but ``"state"`` is plain JSON (numbers, strings, lists); ``"state"`` maps
``"<position>.<buffer>"`` to host NumPy arrays, ready for a safetensors file. So a checkpoint
writer stores ``sd.pop("state")`` as tensors and the rest as JSON, and rebuilds the same dict to
load it. A position with no update yet (``steps`` 0) has no buffers.
"""
from __future__ import annotations

import math

from minillm.backend import device_of, get_array_module, to_device, to_numpy
from minillm.tensor import Tensor


class Optimizer:
    """Base class: holds parameter groups and per-parameter state, runs the step loop.

    Subclasses set ``defaults`` (hyperparameter name -> value) by calling ``__init__`` and
    implement:

    - ``_validate_group(group)``: check (and normalise, e.g. betas to a tuple of floats) the
      hyperparameters of one group, raising ``ValueError``/``TypeError`` naming the argument;
    - ``_buffer_names(group)``: the names of the per-parameter arrays a parameter of that group
      has once it was updated (``("exp_avg", "exp_avg_sq")`` for AdamW);
    - ``_update(param, grad, state, group, scratch)``: update ``param`` (the parameter's array)
      in place from ``grad``, which must never be written to. ``state`` holds ``"step"`` (already
      incremented for this update) and the buffers; ``scratch`` is a temporary array shaped and
      typed like ``param``, shared by all parameters, free to overwrite.

    Attributes:
        param_groups: list of group dicts, each with ``"params"`` (a list of Tensors) and the
            hyperparameters; a learning-rate schedule sets ``group["lr"]`` between steps.
        state: position -> dict with ``"step"`` (int) and the buffers (xp arrays on the
            parameter's device, in its dtype). Positions never updated have no entry.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        # One reusable temporary per (device, dtype): the update's intermediates go there, so a
        # step allocates nothing (fresh large NumPy arrays cost page faults on every step).
        self._scratch: dict[tuple[str, str], object] = {}
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params should be an iterable of Tensors or of "
                            "param-group dicts, got a single Tensor; wrap it in a list")
        if isinstance(params, dict):
            raise TypeError(f"{type(self).__name__}: params should be an iterable of Tensors or of "
                            "param-group dicts, got a dict; pass [group] or model.parameters()")
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    # -- groups ---------------------------------------------------------------------------------
    def add_param_group(self, group: dict) -> None:
        """Append a group ``{"params": [...], hyperparameter: value, ...}``.

        Missing hyperparameters take the defaults. A parameter may belong to one group only.
        The new parameters get the next positions.
        """
        name = type(self).__name__
        if not isinstance(group, dict):
            raise TypeError(f"{name}: a param group must be a dict with a 'params' key, got "
                            f"{type(group).__name__} (do not mix Tensors and group dicts)")
        if "params" not in group:
            raise ValueError(f"{name}: param group {len(self.param_groups)} has no 'params' key; "
                             f"its keys are {sorted(group)}")
        params = group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"{name}: a group's params must be an ordered sequence, got a set "
                            "(its order changes between runs, which breaks state dicts)")
        params = list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for index, p in enumerate(params):
            where = f"param group {len(self.param_groups)} item {index}"
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: {where} is a {type(p).__name__}, expected a minillm Tensor")
            if p.data.dtype.kind != "f":
                raise TypeError(f"{name}: {where} (shape {tuple(p.data.shape)}) has dtype "
                                f"{p.data.dtype}; only floating-point tensors can be optimized")
            if id(p) in seen:
                raise ValueError(f"{name}: {where} (shape {tuple(p.data.shape)}) appears more than "
                                 "once across param groups; each parameter may be listed once")
            seen.add(id(p))
        new_group = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        new_group["params"] = params
        self._validate_group(new_group)
        self.param_groups.append(new_group)

    def _validate_group(self, group: dict) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError(f"{type(self).__name__} must implement _validate_group")

    def _buffer_names(self, group: dict) -> tuple[str, ...]:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} must implement _buffer_names")

    def _update(self, param, grad, state: dict, group: dict, scratch) -> None:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement _update")

    def _buffers_complete(self, group: dict, names: set) -> bool:
        """Whether a parameter updated at least once may have exactly the buffers ``names``."""
        return names == set(self._buffer_names(group))

    # -- the step loop --------------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None (the next backward starts afresh).

        Grads are dropped, not zeroed in place: the autograd engine may hand the same array
        to several tensors, and a None grad lets ``step`` skip parameters that got none.
        """
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient (in place on ``.data``)."""
        position = -1
        updates = []
        for group in self.param_groups:
            for p in group["params"]:
                position += 1
                grad = p.grad
                if grad is None:
                    continue
                param = p.data
                if grad.shape != param.shape:
                    raise ValueError(f"{type(self).__name__}.step: parameter {_describe(p, position)} "
                                     f"has shape {tuple(param.shape)} but its grad has shape "
                                     f"{tuple(grad.shape)}")
                state = self.state.get(position)
                if state is None:
                    state = self.state[position] = {"step": 0}
                elif len(state) > 1 and type(_first_buffer(state)) is not type(param):
                    raise RuntimeError(
                        f"{type(self).__name__}.step: parameter {_describe(p, position)} is on "
                        f"{device_of(param)!r} but its optimizer state is not; move the model before "
                        "creating the optimizer, or reload the state with load_state_dict")
                state["step"] += 1
                updates.append((param, grad, state, group))
        self._apply_updates(updates)

    def _apply_updates(self, updates: list) -> None:
        """Run ``_update`` for each (param, grad, state, group) of this step, in order. An optimizer
        may override this to treat the whole step at once (AdamW splits it across host threads)."""
        for param, grad, state, group in updates:
            self._update(param, grad, state, group, self._scratch_for(param))

    def _scratch_for(self, param):
        """A temporary shaped like ``param`` (a view into a shared, grow-only buffer)."""
        key = (device_of(param), param.dtype.str)
        buffer = self._scratch.get(key)
        if buffer is None or buffer.size < param.size:
            xp = get_array_module(param)
            buffer = self._scratch[key] = xp.empty(param.size, dtype=param.dtype)
        return buffer[:param.size].reshape(param.shape)

    # -- state dicts ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A snapshot of the optimizer: JSON-friendly hyperparameters and host array buffers.

        See the module docstring for the layout. The arrays are copies: later steps do not
        change a state dict already taken.
        """
        groups = []
        position = 0
        for group in self.param_groups:
            saved = {k: _json_value(v) for k, v in group.items() if k != "params"}
            saved["params"] = list(range(position, position + len(group["params"])))
            position += len(group["params"])
            groups.append(saved)
        steps = [self.state[i]["step"] if i in self.state else 0 for i in range(position)]
        arrays = {}
        for i, state in sorted(self.state.items()):
            for buffer_name, array in state.items():
                if buffer_name != "step":
                    host = to_numpy(array)
                    # to_numpy returns host arrays as they are; copy so the snapshot stays fixed.
                    arrays[f"{i}.{buffer_name}"] = host.copy() if host is array else host
        return {"optimizer": type(self).__name__, "param_groups": groups, "steps": steps,
                "state": arrays}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and buffers saved by :meth:`state_dict`.

        Parameters are matched by position: the optimizer must have the same number of groups
        and of parameters per group, with the same shapes. Each buffer is copied to its
        parameter's device and dtype. Everything is checked before anything changes, so a
        failed load leaves the optimizer as it was.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict):
            raise TypeError(f"{name}.load_state_dict: expected a dict from state_dict(), got "
                            f"{type(state_dict).__name__}")
        missing = {"optimizer", "param_groups", "steps", "state"} - set(state_dict)
        if missing:
            raise ValueError(f"{name}.load_state_dict: the state dict lacks {sorted(missing)}; "
                             "expected the layout written by Optimizer.state_dict()")
        if state_dict["optimizer"] != name:
            raise ValueError(f"{name}.load_state_dict: the state dict was written by "
                             f"{state_dict['optimizer']!r}, not {name!r}")
        new_groups = self._groups_from_state_dict(state_dict["param_groups"])
        new_state = self._state_from_state_dict(state_dict["steps"], state_dict["state"], new_groups)
        self.param_groups = new_groups
        self.state = new_state

    def _groups_from_state_dict(self, saved_groups) -> list[dict]:
        """Saved hyperparameters joined with this optimizer's parameters, validated."""
        name = type(self).__name__
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state dict has {len(saved_groups)} param "
                             f"groups, this optimizer has {len(self.param_groups)}")
        new_groups = []
        position = 0
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            count = len(group["params"])
            expected_positions = list(range(position, position + count))
            if list(saved.get("params", ())) != expected_positions:
                raise ValueError(f"{name}.load_state_dict: param group {g} holds parameters "
                                 f"{_short(saved.get('params'))} in the state dict, but this "
                                 f"optimizer's group {g} holds {count} parameters "
                                 f"(positions {_short(expected_positions)})")
            if "names" in saved and "names" in group and list(saved["names"]) != list(group["names"]):
                raise ValueError(f"{name}.load_state_dict: param group {g} names differ: state dict "
                                 f"{_short(saved['names'])}, optimizer {_short(group['names'])}")
            absent = [k for k in self.defaults if k not in saved]
            if absent:
                raise ValueError(f"{name}.load_state_dict: param group {g} lacks hyperparameters "
                                 f"{absent}")
            new_group = {**{k: v for k, v in saved.items() if k != "params"},
                         "params": group["params"]}
            self._validate_group(new_group)
            new_groups.append(new_group)
            position += count
        return new_groups

    def _state_from_state_dict(self, steps, saved_arrays, new_groups) -> dict[int, dict]:
        """Per-position state from the saved step counts and arrays, on each parameter's device."""
        name = type(self).__name__
        params = [p for group in new_groups for p in group["params"]]
        if len(steps) != len(params):
            raise ValueError(f"{name}.load_state_dict: 'steps' has {len(steps)} entries for "
                             f"{len(params)} parameters")
        group_of = [group for group in new_groups for _ in group["params"]]
        buffers: dict[int, dict] = {}
        for key, array in saved_arrays.items():
            position_text, _, buffer_name = str(key).partition(".")
            if not position_text.isdigit() or int(position_text) >= len(params):
                raise ValueError(f"{name}.load_state_dict: state key {key!r} does not name a "
                                 f"parameter position 0..{len(params) - 1}")
            i = int(position_text)
            if not (hasattr(array, "shape") and hasattr(array, "dtype")):
                raise TypeError(f"{name}.load_state_dict: state {key!r} is a {type(array).__name__}, "
                                "expected an array")
            if getattr(array.dtype, "kind", None) != "f":
                raise ValueError(f"{name}.load_state_dict: state {key!r} has dtype {array.dtype}, expected a "
                                 "floating dtype (float16, float32 or float64)")
            if buffer_name not in self._buffer_names(group_of[i]):
                raise ValueError(f"{name}.load_state_dict: state key {key!r}: {buffer_name!r} is not "
                                 f"a buffer of this optimizer; expected one of "
                                 f"{list(self._buffer_names(group_of[i]))}")
            param = params[i].data
            if tuple(array.shape) != tuple(param.shape):
                raise ValueError(f"{name}.load_state_dict: state {key!r} has shape "
                                 f"{tuple(array.shape)}, but parameter {_describe(params[i], i)} "
                                 f"has shape {tuple(param.shape)}")
            buffers.setdefault(i, {})[buffer_name] = array
        new_state = {}
        for i, p in enumerate(params):
            step = steps[i]
            if isinstance(step, bool) or not hasattr(step, "__index__") or step < 0:
                raise ValueError(f"{name}.load_state_dict: steps[{i}]={step!r} is not a "
                                 "non-negative integer")
            step = int(step)
            have = buffers.get(i, {})
            if (step == 0 and have) or (step > 0 and not self._buffers_complete(group_of[i], set(have))):
                expected = sorted(self._buffer_names(group_of[i])) if step > 0 else []
                raise ValueError(f"{name}.load_state_dict: parameter {_describe(p, i)} after "
                                 f"{step} steps needs buffers {expected}, the state dict "
                                 f"has {sorted(have)}")
            if step == 0:
                continue
            device = device_of(p.data)
            xp = get_array_module(p.data)
            state = {"step": step}
            for buffer_name, array in have.items():
                # A fresh, writable, contiguous copy on the parameter's device and in its dtype:
                # the updates write to it in place, and the caller's arrays must stay untouched.
                state[buffer_name] = xp.array(to_device(array, device), dtype=p.data.dtype,
                                              copy=True, order="C")
            new_state[i] = state
        return new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for g, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in group.items() if k not in ("params", "names"))
            lines.append(f"  group {g}: {len(group['params'])} params, {hyper}")
        return "\n".join(lines + [")"])


def _describe(p: Tensor, position: int) -> str:
    return f"{position} ({p.name!r}, shape {tuple(p.data.shape)})" if getattr(p, "name", None) \
        else f"{position} (shape {tuple(p.data.shape)})"


def _first_buffer(state: dict):
    for key, value in state.items():
        if key != "step":
            return value
    return None


def _json_value(value):
    """Tuples to lists, NumPy scalars to Python numbers: what json.dumps accepts."""
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _short(values, limit: int = 6) -> str:
    values = list(values) if values is not None else []
    shown = ", ".join(repr(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}] ({len(values)} items)"


# ---------------------------------------------------------------------------------------------
# Hyperparameter checks shared by the optimizers
# ---------------------------------------------------------------------------------------------
def check_number(owner: str, name: str, value, minimum: float = 0.0, strictly_above: bool = False,
                 below: float | None = None, allow_infinity: bool = False) -> float:
    """``value`` as a Python float in the allowed range, else an error naming it and the range.

    Finite unless ``allow_infinity`` (then +inf passes the lower bound); NaN never passes.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_real_scalar(value):
        raise TypeError(f"{owner}: {name}={value!r} is not a real number")
    value = float(value)
    low_ok = value > minimum if strictly_above else value >= minimum
    high_ok = below is None or value < below
    finite_ok = math.isfinite(value) or (allow_infinity and value == math.inf)
    if not (finite_ok and low_ok and high_ok):
        expected = f"{'>' if strictly_above else '>='} {minimum:g}"
        if below is not None:
            expected = f"in [{minimum:g}, {below:g})"
        kind = "a number" if allow_infinity else "a finite number"
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected {kind} {expected}")
    return value


def _is_real_scalar(value) -> bool:
    """NumPy (or CuPy 0-d) real scalars: they have a dtype of kind int or float and no shape."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and getattr(value, "ndim", 1) == 0 and dtype.kind in "iuf"
