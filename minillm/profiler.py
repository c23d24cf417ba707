"""A profiler of ops and modules: where the time, memory and arithmetic of a training step go.

    import minillm as mm
    with mm.profiler.profile(model) as prof:
        logits, loss = model(idx, targets)
        loss.backward()
    print(prof.table())                          # a row per op type, like torch.profiler's table
    print(prof.table(group_by="module", depth=3, merge_indices=True))   # a row per part of a block
    prof.save_json("profile.json")               # the same numbers as JSON (no pickle)

``minillm train --profile N`` does this for N training steps (see :class:`minillm.train.Trainer`).

What is recorded, per op type (the Function's class name) and per module path:

- **calls**: forward calls (``backward_calls`` too, in the JSON).
- **forward / backward seconds**: every differentiable op runs through ``Function.apply``
  (forward) and the engine's call of its ``backward``; while a profile records, both are timed
  with ``time.perf_counter``. On a GPU the device is synchronised before and after each op
  (``sync=True``, the default), so an op's time is its own kernels' time plus its Python overhead,
  not the time of work queued before it -- which also means a profiled step runs slower than an
  unprofiled one (no overlap of Python and GPU).
- **bytes allocated**: the bytes (``nbytes``) of the arrays an op *returns* -- its output in
  forward, its input gradients in backward -- that do not share memory with what it was given:
  the forward's input arrays; in backward the incoming gradient and the leaf inputs (the graph
  keeps no other input arrays: :class:`minillm.autograd.GraphInput`). Sharing
  is judged by ``may_share_memory`` (a bounds check, NumPy's and CuPy's alike), so a view or
  reshape of an input counts 0 and a view of a fresh buffer counts its own size; an array
  returned twice counts once. It is *not* a malloc tracer: temporaries freed inside the op,
  arrays an op saves for backward (attention's weights), the engine's summing of gradients and
  the optimizer's state are not counted.
- **FLOPs**, where the op defines them (:meth:`minillm.autograd.Function.flops`): the
  floating-point operations of its matrix products (a multiply-add counts 2) -- ``Linear``,
  ``MatMul``, scaled dot-product attention and their low-precision twins, i.e. the ops whose work
  goes to BLAS (cuBLAS on a GPU). Elementwise work (bias, softmax, scaling) is not counted,
  though its time is in the op's (attention's softmax runs inside the attention op); backward
  counts only the gradients it computes.
- **module path**: while a profile records, ``Module.__call__`` pushes the module's path, so
  each op knows the module it ran in (its backward is attributed to the same path). The root,
  path ``""`` (shown as ``(root)``), is the ``model`` given to :func:`profile`, else the first
  module called; a module called outside any other is named by its name in the root's
  ``named_modules()``, or its class name when it is not in the root's tree. A module called from
  module P is named by its dotted name in P's ``named_modules()`` (``blocks.3``: the model
  iterates its ModuleList) joined to P's path. So paths are the model's ``named_modules()`` names
  (``blocks.3.attn.q_proj``), and a module shared by several parents (the rotary table of a
  Llama model) is named where it is called (``blocks.3.attn.rotary``); one that is not in its
  caller's tree goes by its class name. Ops run outside any module show as ``(no module)``.

``wall_s`` is the wall time spent inside the profile (summed over every ``with prof:`` when it
is entered more than once; ``steps`` counts the entries). The difference between the ops' time
and the wall time is time outside ops: the optimizer, data movement, Python between ops, and the
profiler's own bookkeeping (which runs between the timed intervals).

When no profile records, the cost is one check of a module variable per op and one per module
call; the profiler only reads arrays, so it changes no result.
"""
from __future__ import annotations

import json
import time

from minillm import autograd
from minillm.backend import device_of, get_array_module, synchronize
from minillm.fileio import atomic_write_text, read_text_file

SORT_KEYS = ("total", "forward", "backward", "calls", "bytes", "flops")
GROUPS = ("op", "module")
ROOT_LABEL, NO_MODULE_LABEL = "(root)", "(no module)"
_FIELDS = ("calls", "backward_calls", "forward_s", "backward_s", "forward_bytes", "backward_bytes",
           "forward_flops", "backward_flops")


def _new_entry() -> dict:
    return {"calls": 0, "backward_calls": 0, "forward_s": 0.0, "backward_s": 0.0, "forward_bytes": 0,
            "backward_bytes": 0, "forward_flops": None, "backward_flops": None}


def _add_into(total: dict, entry: dict) -> None:
    for key in _FIELDS:
        if entry[key] is not None:
            total[key] = entry[key] if total[key] is None else total[key] + entry[key]


def _seconds(entry: dict) -> float:
    return entry["forward_s"] + entry["backward_s"]


def _flops(entry: dict) -> int | None:
    """Forward plus backward FLOPs, or None where no op of the row defines them."""
    if entry["forward_flops"] is None and entry["backward_flops"] is None:
        return None
    return (entry["forward_flops"] or 0) + (entry["backward_flops"] or 0)


_SORTERS = {
    "total": _seconds,
    "forward": lambda e: e["forward_s"],
    "backward": lambda e: e["backward_s"],
    "calls": lambda e: e["calls"],
    "bytes": lambda e: e["forward_bytes"] + e["backward_bytes"],
    "flops": lambda e: _flops(e) or 0,
}


def _new_bytes(outputs: tuple, given) -> int:
    """The bytes of the arrays in ``outputs`` that share no memory with any array in ``given``
    (see the module docstring); each array object counted once."""
    total, seen = 0, []
    for out in outputs:
        if out is None or not hasattr(out, "nbytes") or any(out is other for other in seen):
            continue
        seen.append(out)
        share = get_array_module(out).may_share_memory
        if not any(a is not None and type(a) is type(out) and share(out, a) for a in given):
            total += int(out.nbytes)
    return total


def _label(path: str | None) -> str:
    """A module path as the table shows it."""
    if path is None:
        return NO_MODULE_LABEL
    return path or ROOT_LABEL


def _coarsen(path: str | None, depth: int | None, merge_indices: bool) -> str | None:
    """``path`` cut to its first ``depth`` names, with numeric names as ``*`` if ``merge_indices``."""
    if not path:
        return path
    parts = path.split(".")
    if depth is not None:
        parts = parts[:depth]
    if merge_indices:
        parts = ["*" if part.isdigit() else part for part in parts]
    return ".".join(parts)


class Profile:
    """What the ops ran inside the profile cost, per (op type, module path) (see the module docstring).

    Enter it with ``with prof:`` (:func:`profile` returns one); it may be entered again, adding up.

    Attributes:
        model: the module whose ``named_modules()`` names paths (None: the first module called).
        sync: synchronise the GPU around every op (True) for per-op device times.
        synchronized: whether it did (an op ran on the GPU with ``sync`` on).
        wall_s: wall seconds spent inside the profile, over every entry.
        steps: how many times it was entered (one per training step under ``minillm train --profile``).
    """

    def __init__(self, model=None, sync: bool = True):
        if model is not None and not callable(getattr(model, "named_modules", None)):
            raise TypeError(f"profile: model={type(model).__name__} has no named_modules(); expected a "
                            "minillm.nn.Module or None")
        if not isinstance(sync, bool):
            raise TypeError(f"profile: sync={sync!r}; expected True or False")
        self.model, self.sync = model, sync
        self.wall_s, self.steps = 0.0, 0
        self.synchronized = False         # whether a GPU op was seen (and synchronised around)
        self._entries: dict[tuple[str, str | None], dict] = {}
        self._started: float | None = None
        self._previous = None
        self._stack: list = []           # (module, path) of the modules running now, innermost last
        self._root = model               # the root while recording: the model, else the first module called
        self._names: dict[int, dict] = {}  # id(module) -> {id(submodule): dotted name under it}
        self._named: list = []           # those modules, kept alive so their ids stay theirs

    # -- recording ------------------------------------------------------------------------------
    def __enter__(self) -> "Profile":
        if self._started is not None:
            raise RuntimeError("Profile: this profile is recording already; enter it once at a time")
        self._previous = autograd.set_profiler(self)
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s += time.perf_counter() - self._started
        self.steps += 1
        self._started = None
        autograd.set_profiler(self._previous)
        self._previous = None
        self._stack.clear()
        self._root = self.model           # drop the references to modules that were not given
        self._names.clear()
        self._named.clear()

    def _relative_name(self, parent, module) -> str | None:
        """``module``'s dotted name in ``parent.named_modules()``, or None when it is not there."""
        names = self._names.get(id(parent))
        if names is None:
            names = {id(m): name for name, m in parent.named_modules()}
            self._names[id(parent)] = names
            self._named.append(parent)
        return names.get(id(module))

    def enter_module(self, module) -> None:
        """Called by ``Module.__call__`` before ``forward``: push the module's path."""
        if self._stack:
            parent, parent_path = self._stack[-1]
            name = self._relative_name(parent, module) or type(module).__name__
            path = f"{parent_path}.{name}" if parent_path else name
        else:
            if self._root is None:
                self._root = module                  # the first module called names the others
            name = self._relative_name(self._root, module)
            path = type(module).__name__ if name is None else name
        self._stack.append((module, path))

    def exit_module(self) -> None:
        """Called by ``Module.__call__`` after ``forward`` (also when it raised)."""
        if self._stack:                              # empty when the profile stopped inside forward
            self._stack.pop()

    def _synchronize(self, arrays) -> None:
        if self.sync:
            for a in arrays:
                if a is not None and hasattr(a, "dtype") and device_of(a) == "cuda":
                    synchronize("cuda")
                    self.synchronized = True
                    return

    def start(self, arrays) -> tuple:
        """Called before an op's forward (``arrays``: its inputs) or backward (the incoming
        gradient); returns the token :meth:`stop` takes."""
        self._synchronize(arrays)
        return arrays, time.perf_counter()

    def stop(self, fn, phase: str, token: tuple, outputs) -> None:
        """Called after the op ran: record its time, then (untimed) its bytes and FLOPs."""
        given, started = token
        outputs = outputs if type(outputs) is tuple else (outputs,)
        self._synchronize(outputs)
        elapsed = time.perf_counter() - started
        if phase == "forward":
            path = self._stack[-1][1] if self._stack else None
            fn._profile_module = path                # its backward is attributed to the same module
        else:
            path = fn.__dict__.get("_profile_module")   # None when its forward ran unprofiled
            given = tuple(given) + tuple(t.data for t in fn.inputs or () if t.grad_fn is None)   # leaves
        key = (fn.op_type(), path)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _new_entry()
        entry["calls" if phase == "forward" else "backward_calls"] += 1
        entry[phase + "_s"] += elapsed
        entry[phase + "_bytes"] += _new_bytes(outputs, given)
        counts = fn.flops()
        if counts is not None:
            if entry["forward_flops"] is None:       # an op with FLOPs: both counts are numbers
                entry["forward_flops"] = entry["backward_flops"] = 0
            entry[phase + "_flops"] += int(counts[0] if phase == "forward" else counts[1])

    # -- results --------------------------------------------------------------------------------
    def total_s(self) -> float:
        """Seconds inside ops (forward and backward), over all rows."""
        return sum(_seconds(e) for e in self._entries.values())

    def grouped(self, group_by: str = "op", depth: int | None = None, merge_indices: bool = False) -> dict:
        """{row name: summed entry}: by op type, or by module path (cut to ``depth`` names, with
        a ModuleList's indices merged into ``*`` if ``merge_indices``), as the table shows them."""
        if group_by not in GROUPS:
            raise ValueError(f"Profile: group_by={group_by!r} is not valid; expected one of {list(GROUPS)}")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise ValueError(f"Profile: depth={depth!r} is not valid; expected a positive int or None "
                             "(full module paths)")
        if group_by == "op" and (depth is not None or merge_indices):
            raise ValueError(f"Profile: depth={depth!r} and merge_indices={merge_indices!r} apply to "
                             "group_by='module'; expected depth=None and merge_indices=False with group_by='op'")
        rows: dict[str, dict] = {}
        for (op, path), entry in self._entries.items():
            name = op if group_by == "op" else _label(_coarsen(path, depth, merge_indices))
            _add_into(rows.setdefault(name, _new_entry()), entry)
        return rows

    def table(self, sort_by: str = "total", group_by: str = "op", depth: int | None = None,
              merge_indices: bool = False, limit: int | None = None) -> str:
        """A Markdown table in the spirit of ``torch.profiler``'s ``key_averages().table()``.

        One row per op type (``group_by="op"``) or module path (``"module"``; ``depth`` cuts paths
        to their first names, e.g. 2 -> ``blocks.3``; ``merge_indices`` adds up the layers of a
        ModuleList, ``blocks.*.attn``), sorted by ``sort_by`` (one of :data:`SORT_KEYS`), the
        first ``limit`` rows. Columns: calls (forward calls of the op; of the ops in the module),
        forward / backward / total ms, % of wall (the row's share of the profiled step), MiB
        allocated (see the module docstring), GFLOP and the GFLOP/s achieved by the row's matrix
        products (rows with FLOPs); "BLAS": for an op, "yes" if its work is matrix products (it
        defines FLOPs), for a module, the share of its time spent in such ops. The footer
        compares the ops' time with the wall time and sums up the matrix products.
        """
        if sort_by not in SORT_KEYS:
            raise ValueError(f"Profile.table: sort_by={sort_by!r} is not valid; expected one of {list(SORT_KEYS)}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"Profile.table: limit={limit!r} is not valid; expected a positive int or None")
        rows = self.grouped(group_by, depth, merge_indices)
        blas_s = self._blas_seconds(group_by, depth, merge_indices)
        ordered = sorted(rows.items(), key=lambda item: (-_SORTERS[sort_by](item[1]), item[0]))[:limit]
        wall = self.wall_s or 1.0
        by_module = group_by == "module"
        lines = [f"| {'module | op calls' if by_module else 'op | calls'} | forward ms | backward ms | total ms | "
                 f"% of wall | MiB allocated | GFLOP | GFLOP/s | {'BLAS share' if by_module else 'BLAS'} |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, e in ordered:
            seconds, flops = _seconds(e), _flops(e)
            gflop = "" if flops is None else f"{flops / 1e9:.3f}"
            rate = "" if flops is None or not blas_s.get(name) else f"{flops / 1e9 / blas_s[name]:.1f}"
            if by_module:
                blas = f"{100 * blas_s.get(name, 0.0) / seconds:.0f}%" if seconds else ""
            else:
                blas = "yes" if flops is not None else ""
            lines.append(f"| {name} | {e['calls']} | {1e3 * e['forward_s']:.2f} | {1e3 * e['backward_s']:.2f} | "
                         f"{1e3 * seconds:.2f} | {100 * seconds / wall:.1f}% | "
                         f"{(e['forward_bytes'] + e['backward_bytes']) / 2**20:.2f} | {gflop} | {rate} | {blas} |")
        total, products = self.total_s(), sum(blas_s.values())
        flops = sum(_flops(e) or 0 for e in rows.values())
        steps = f" over {self.steps} steps (totals)" if self.steps > 1 else ""
        lines.append(f"\nop time {1e3 * total:.1f} ms of {1e3 * self.wall_s:.1f} ms wall "
                     f"({100 * total / wall:.0f}%){steps}; the rest is outside ops (optimizer, data, Python "
                     "between ops, the profiler's bookkeeping)"
                     f"{'; the GPU synchronised around every op' if self.synchronized else ''}")
        lines.append(f"matrix products (BLAS): {1e3 * products:.1f} ms, {100 * products / (total or 1.0):.0f}% of "
                     f"op time, {flops / 1e9:.3f} GFLOP at {flops / 1e9 / products if products else 0.0:.1f} GFLOP/s")
        return "\n".join(lines)

    def _blas_seconds(self, group_by: str, depth: int | None, merge_indices: bool) -> dict:
        """{row name: seconds spent in ops that define FLOPs} for the rows of :meth:`grouped`."""
        seconds: dict[str, float] = {}
        for (op, path), entry in self._entries.items():
            if _flops(entry) is not None:
                name = op if group_by == "op" else _label(_coarsen(path, depth, merge_indices))
                seconds[name] = seconds.get(name, 0.0) + _seconds(entry)
        return seconds

    def to_dict(self) -> dict:
        """The profile as JSON-ready data: ``wall_s``, ``ops_s`` (time inside ops), ``steps``,
        ``sync``, ``synchronized`` (a GPU was synchronised around the ops); ``ops`` {op type: totals} and ``modules`` {module path as the table labels it:
        totals}; ``records``, one per (op type, module path) -- ``module`` is the path, ``""`` for
        the root, null outside modules -- from which :meth:`from_dict` rebuilds the profile.
        Totals hold calls, backward_calls, forward_s, backward_s, forward_bytes, backward_bytes,
        forward_flops and backward_flops (null where the op defines no FLOPs)."""
        return {"wall_s": self.wall_s, "ops_s": self.total_s(), "steps": self.steps, "sync": self.sync,
                "synchronized": self.synchronized,
                "ops": self.grouped("op"), "modules": self.grouped("module"),
                "records": [{"op": op, "module": path, **entry} for (op, path), entry in self._entries.items()]}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        """A profile rebuilt from :meth:`to_dict`'s data (to print a saved profile's tables)."""
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise ValueError(f"Profile.from_dict: expected the dict of Profile.to_dict() with a 'records' list, "
                             f"got {type(data).__name__} with keys {sorted(data) if isinstance(data, dict) else []}")
        prof = cls(sync=bool(data.get("sync", True)))
        prof.wall_s, prof.steps = float(data.get("wall_s", 0.0)), int(data.get("steps", 0))
        prof.synchronized = bool(data.get("synchronized", False))
        for record in data["records"]:
            missing = [key for key in ("op", "module", *_FIELDS) if key not in record]
            if missing:
                raise ValueError(f"Profile.from_dict: record {record!r} lacks {missing}")
            prof._entries[(record["op"], record["module"])] = {key: record[key] for key in _FIELDS}
        return prof

    def save_json(self, path) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON, atomically (the old file or the whole new one)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


def load_json(path) -> Profile:
    """The profile that :meth:`Profile.save_json` wrote to ``path``."""
    return Profile.from_dict(json.loads(read_text_file(path, what="profile JSON file")))


def profile(model=None, sync: bool = True) -> Profile:
    """A :class:`Profile` to enter with ``with``: it records every op inside the block (see the
    module docstring). ``model`` (a Module, optional) is the root whose ``named_modules()`` names
    module paths; without one the first module called is. ``sync``: synchronise the GPU around
    every op (per-op device times; no effect on the host)."""
    return Profile(model, sync)
