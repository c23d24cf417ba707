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

The memory ledger (:func:`memory_ledger`, ``minillm memory``) accounts for the bytes of one
training step instead -- parameters, gradients, optimizer state, and the arrays each op keeps for
backward per module path and op type, each buffer once -- against the live bytes measured at the
step's peak (tracemalloc on the host)::

    ledger = mm.profiler.memory_ledger(model, lambda: model(idx, targets)[1], optimizer)
    print(ledger.table())                         # categories vs the measured peak; by module; by op
    ledger.save_json("ledger.json")
"""
from __future__ import annotations

import json
import time

from minillm import autograd
from minillm.backend import cupy_module, device_of, get_array_module, synchronize
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
        if fn.nests_ops:                             # a Recompute: the ops inside were recorded themselves
            elapsed, outputs = 0.0, ()
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


# ---------------------------------------------------------------------------------------------
# The memory ledger: where the bytes of one training step go
# ---------------------------------------------------------------------------------------------
MIB = 2 ** 20
CATEGORIES = {                # the ledger's rows, in order, and what each holds
    "parameters": "the weights (under fp16/bf16 these are the float32 master weights: no "
                  "low-precision copy outlives an op)",
    "gradients": "one per trainable parameter, as backward leaves them",
    "optimizer_state": "per parameter (AdamW: exp_avg m and exp_avg_sq v; Muon: a momentum_buffer per "
                       "orthogonalised matrix, AdamW's two for the rest)",
    "optimizer_scratch": "the optimizer's reusable temporary",
    "buffers": "the modules' tables (RoPE, sinusoidal positions)",
    "saved_activations": "what the graph keeps for backward, at the start of backward",
    "recomputed_activations": "recompute: the largest block's graph, rebuilt in backward one block at a time",
}


def _is_array(value) -> bool:
    return hasattr(value, "nbytes") and hasattr(value, "dtype") and hasattr(value, "shape")


def _owner(array):
    """The array whose memory ``array`` views (itself when it owns its memory): NumPy and CuPy
    keep the owner in ``.base``. An owner that is not an array (a memory map, a bytes object)
    ends the chain: then ``array`` is its own unit, counted by its own size."""
    root = array
    base = getattr(root, "base", None)
    while base is not None and _is_array(base):
        root = base
        base = getattr(root, "base", None)
    return root


def _arrays_in(value, depth: int = 0):
    """The arrays in an attribute an op saved: an array, a Tensor's array, those inside a list,
    tuple or dict (two levels: attention keeps a list of per-chunk weights), or what a wrapped
    op saved (mixed precision's InFloat32 runs the float32 op it holds)."""
    if _is_array(value):
        yield value
    elif isinstance(value, autograd.Function) and depth < 2:
        for name, item in value.__dict__.items():
            if name not in _NOT_SAVED:
                yield from _arrays_in(item, depth + 1)
    elif hasattr(value, "data") and _is_array(getattr(value, "data", None)) and hasattr(value, "grad_fn"):
        yield value.data
    elif depth < 2 and isinstance(value, (list, tuple)):
        for item in value:
            yield from _arrays_in(item, depth + 1)
    elif depth < 2 and isinstance(value, dict):
        for item in value.values():
            yield from _arrays_in(item, depth + 1)


_NOT_SAVED = frozenset({"inputs", "needs_input_grad", "output_hooks", "retained_output", "created_at", "module",
                        "bindings", "_profile_module", "_ledger_order"})   # links, labels; a Recompute's parameters


def saved_arrays(fn) -> list:
    """The arrays a recorded op keeps for its backward: every array among its attributes (the
    graph's links, ``inputs``, are not: the graph keeps leaves, never an intermediate's array)."""
    found = []
    for name, value in fn.__dict__.items():
        if name not in _NOT_SAVED:
            found.extend(_arrays_in(value))
    return found


def graph_nodes(root) -> list:
    """Every recorded op behind ``root`` (a Tensor or a Function), each once, in the order the
    forward pass created them where a ledger recorded it (else by generation)."""
    start = root.grad_fn if hasattr(root, "grad_fn") else root
    if start is None:
        return []
    nodes, seen, stack = [], {id(start)}, [start]
    while stack:
        fn = stack.pop()
        nodes.append(fn)
        for item in fn.inputs or ():
            producer = getattr(item, "grad_fn", None)
            if producer is not None and id(producer) not in seen:
                seen.add(id(producer))
                stack.append(producer)
    nodes.sort(key=lambda fn: (fn.__dict__.get("_ledger_order", float("inf")), fn.generation))
    return nodes


class _Accounts:
    """Unique buffers by owner: each owner's bytes go to the first (category, module, op) that
    claims it; later claims (a view of it, the same array saved by another op) add nothing."""

    def __init__(self):
        self.owners: dict[int, tuple] = {}        # id(owner) -> (owner, category, module, op)
        self.bytes: dict[tuple, int] = {}         # (category, module, op) -> bytes

    def claim(self, array, category: str, module: str | None = None, op: str | None = None) -> int:
        owner = _owner(array)
        if getattr(getattr(owner, "flags", None), "owndata", True) is False:   # memory that is not an array's
            owner = array
        key = id(owner)
        if key in self.owners:
            return 0
        self.owners[key] = (owner, category, module, op)
        size = int(owner.nbytes)
        self.bytes[(category, module, op)] = self.bytes.get((category, module, op), 0) + size
        return size

    def forget(self, category: str) -> None:
        """Drop the references to ``category``'s buffers (their bytes stay counted), so the ledger
        does not keep them alive: backward frees the saved activations as it goes."""
        self.owners = {key: entry for key, entry in self.owners.items() if entry[1] != category}

    def total(self, category: str) -> int:
        return sum(v for (c, _, _), v in self.bytes.items() if c == category)


def _status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (Linux), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_resident_peak() -> bool:
    """Reset the process's resident high-water mark (Linux: ``5`` into /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class _HostMeter:
    """Live bytes allocated on the host, as ``tracemalloc`` traces them (NumPy reports its array
    memory to it; Python objects count too), and the resident set's high-water mark."""

    kind = "tracemalloc"

    def __enter__(self):
        import tracemalloc  # noqa: PLC0415  (only the ledger needs it)

        self.tracemalloc = tracemalloc
        self.started_here = not tracemalloc.is_tracing()
        if self.started_here:
            tracemalloc.start()
        self.rss_reset = _reset_resident_peak()
        self.rss_start_kib = _status_kib("VmRSS")
        tracemalloc.reset_peak()
        return self

    def current(self) -> int:
        return self.tracemalloc.get_traced_memory()[0]

    def peak(self) -> int:
        return self.tracemalloc.get_traced_memory()[1]

    def __exit__(self, *exc):
        self.rss_peak_kib = _status_kib("VmHWM") if self.rss_reset else None
        if self.started_here:
            self.tracemalloc.stop()


class _CupyMeter:
    """Live bytes of CuPy's default memory pool (a ``cupy.cuda.MemoryHook`` follows every
    allocation and free; sizes as the pool rounds them)."""

    kind = "cupy memory pool"

    def __enter__(self):
        cupy = cupy_module()
        meter = self
        self.now = self.top = cupy.get_default_memory_pool().used_bytes()

        class Hook(cupy.cuda.MemoryHook):
            name = "minillm_memory_ledger"

            def malloc_postprocess(self, **kwargs):
                meter.now += kwargs["mem_size"]
                meter.top = max(meter.top, meter.now)

            def free_postprocess(self, **kwargs):
                meter.now -= kwargs["mem_size"]

        self.hook = Hook()
        self.hook.__enter__()
        return self

    def current(self) -> int:
        return self.now

    def peak(self) -> int:
        return self.top

    def __exit__(self, *exc):
        self.hook.__exit__(*exc)
        self.rss_reset, self.rss_start_kib, self.rss_peak_kib = False, None, None


class _LedgerRecorder(Profile):
    """A :class:`Profile` that also numbers the ops in the order they run (the ledger attributes
    an array saved by several ops to the first), notes the op during which the measured peak
    grew last, and weighs the graphs that recomputation rebuilds in backward."""

    def __init__(self, model, meter, names: dict):
        super().__init__(model, sync=False)
        self.meter, self.names = meter, names
        self.order = 0
        self.peak_seen, self.peak_at = 0, None
        self.recomputed_bytes: dict[str, int] = {}   # block path -> bytes of its rebuilt graph
        self.known = None                            # _Accounts of the step, once forward is walked

    def stop(self, fn, phase: str, token: tuple, outputs) -> None:
        super().stop(fn, phase, token, outputs)
        if phase == "forward":
            fn._ledger_order = self.order
            self.order += 1
        peak = self.meter.peak()
        if peak > self.peak_seen:
            self.peak_seen = peak
            self.peak_at = (fn.op_type(), _label(fn.__dict__.get("_profile_module")), phase)

    def recomputed(self, fn, output) -> None:
        """Called by :class:`minillm.nn.recompute.Recompute` before it back-propagates through
        the graph it rebuilt: the bytes that graph keeps, other than the parameters, buffers and
        the block's input (counted already); everything else in it is new, made by the rebuild."""
        accounts = _Accounts()
        if self.known is not None:
            for owner, *_ in self.known.owners.values():
                accounts.claim(owner, "known")
        accounts.claim(fn.x, "known")
        total = 0
        for node in graph_nodes(output):
            for array in saved_arrays(node):
                total += accounts.claim(array, "recomputed")
        path = self.names.get(id(fn.module), type(fn.module).__name__)
        self.recomputed_bytes[path] = max(self.recomputed_bytes.get(path, 0), total)


class MemoryLedger:
    """Where the bytes of one training step go (:func:`memory_ledger` builds it).

    Attributes:
        categories: {category of :data:`CATEGORIES`: bytes}.
        by_module: {module path: bytes of saved activations} (``(root)``, ``(no module)`` as in
            the profile's tables); ``recompute`` nodes are named by their block.
        by_op: {op type: bytes of saved activations}.
        recomputed_by_block: {block path: bytes its rebuilt graph kept in backward} (recompute only).
        measured: what was measured (see :meth:`to_dict`), device, precision, notes.
        profile: the step's :class:`Profile` (times are slowed by the measuring: read the shares).
    """

    def __init__(self, categories: dict, by_module: dict, by_op: dict, recomputed_by_block: dict,
                 measured: dict, info: dict, profile: Profile | None = None):
        self.categories, self.by_module, self.by_op = categories, by_module, by_op
        self.recomputed_by_block, self.measured, self.info, self.profile = recomputed_by_block, measured, info, profile

    @property
    def accounted_total(self) -> int:
        """Every category at once: the hand computation (more than is ever alive together:
        backward frees activations as it builds gradients)."""
        return sum(self.categories.values())

    def to_dict(self) -> dict:
        """JSON-ready: ``categories`` (bytes), ``accounted_total``, ``by_module``, ``by_op``,
        ``recomputed_by_block``, ``measured`` -- ``meter`` (tracemalloc or the CuPy pool),
        ``live_at_start`` (live bytes when the step began), ``peak_increase`` (the peak over the
        step minus that), ``peak`` (= the accounted state at the start + peak_increase),
        ``live_before_backward`` (measured) and ``accounted_before_backward`` (the categories
        alive then: everything but gradients and recomputed activations), ``unexplained`` (peak
        minus accounted_total), ``peak_during`` (op, module, phase during which the peak last
        grew), ``rss_at_start`` and ``rss_peak`` (the whole process's resident set at the step's
        start and its high-water mark during the step; host, Linux) -- and ``info`` (device,
        recompute, parameters, and the caller's labels)."""
        return {"categories": dict(self.categories), "accounted_total": self.accounted_total,
                "by_module": dict(self.by_module), "by_op": dict(self.by_op),
                "recomputed_by_block": dict(self.recomputed_by_block), "measured": dict(self.measured),
                "info": dict(self.info)}

    @classmethod
    def from_dict(cls, data: dict) -> "MemoryLedger":
        """A ledger rebuilt from :meth:`to_dict` (to print a saved one)."""
        missing = [k for k in ("categories", "by_module", "by_op", "measured") if k not in (data or {})]
        if not isinstance(data, dict) or missing:
            raise ValueError(f"MemoryLedger.from_dict: expected the dict of MemoryLedger.to_dict(); missing {missing}")
        return cls(data["categories"], data["by_module"], data["by_op"], data.get("recomputed_by_block", {}),
                   data["measured"], data.get("info", {}))

    def save_json(self, path) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    def table(self, depth: int | None = 3, merge_indices: bool = True, limit: int | None = 12) -> str:
        """Three Markdown tables: the categories against the measured peak; saved activations by
        module (paths cut to ``depth`` names, a ModuleList's layers added up with
        ``merge_indices``: ``blocks.*.attn``) and by op type, largest first (``limit`` rows)."""
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise ValueError(f"MemoryLedger.table: depth={depth!r}; expected a positive int or None")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"MemoryLedger.table: limit={limit!r}; expected a positive int or None")
        m = self.measured
        total = self.accounted_total
        lines = ["| category | MiB | share | what |", "|---|---:|---:|---|"]
        for name, what in CATEGORIES.items():
            size = self.categories.get(name, 0)
            if name == "recomputed_activations" and not self.info.get("recompute"):
                continue
            lines.append(f"| {name.replace('_', ' ')} | {size / MIB:.2f} | {100 * size / (total or 1):.1f}% | {what} |")
        lines.append(f"| **accounted total** | **{total / MIB:.2f}** | 100% | every row at once (the hand count) |")
        if m.get("peak") is not None:
            lines.append(f"| **measured peak** | **{m['peak'] / MIB:.2f}** | | the state at the step's start "
                         f"+ the {m['meter']} peak above it |")
            lines.append(f"| unexplained remainder | {m['unexplained'] / MIB:+.2f} | "
                         f"{100 * m['unexplained'] / (total or 1):+.1f}% | measured peak - accounted total |")
        notes = []
        if m.get("live_before_backward") is not None:
            notes.append(f"at the start of backward: measured {m['live_before_backward'] / MIB:.2f} MiB live, accounted "
                         f"{m['accounted_before_backward'] / MIB:.2f} MiB (everything but the gradients"
                         f"{' and recomputed activations' if self.info.get('recompute') else ''})")
        if m.get("peak_during"):
            op, module, phase = m["peak_during"]
            notes.append(f"the peak last grew during {op} {phase} in {module}")
        if m.get("rss_peak") is not None:
            notes.append(f"the process's resident set: {m['rss_at_start'] / MIB:.1f} MiB at the step's start, high-water "
                         f"mark {m['rss_peak'] / MIB:.1f} MiB during it (the library, the interpreter and the pages "
                         f"the allocator keeps for reuse included)")
        out = ["\n".join(lines)]
        if notes:
            out.append("; ".join(notes))
        saved = self.categories.get("saved_activations", 0) or 1
        rows: dict[str, int] = {}
        for path, size in self.by_module.items():
            name = path if path.startswith("(") else _coarsen(path, depth, merge_indices)
            rows[name or ROOT_LABEL] = rows.get(name or ROOT_LABEL, 0) + size
        out.append(self._rows("module", rows, saved, limit))
        out.append(self._rows("op", self.by_op, saved, limit))
        if self.recomputed_by_block:
            largest = max(self.recomputed_by_block.items(), key=lambda item: item[1])
            out.append(f"recompute: each block keeps only its input; backward rebuilt one block's graph at a time, "
                       f"the largest {largest[1] / MIB:.2f} MiB ({largest[0]})")
        return "\n\n".join(out)

    @staticmethod
    def _rows(kind: str, rows: dict, saved: int, limit: int | None) -> str:
        ordered = sorted(rows.items(), key=lambda item: (-item[1], item[0]))
        shown = ordered[:limit]
        lines = [f"| saved activations by {kind} | MiB | share |", "|---|---:|---:|"]
        lines += [f"| {name} | {size / MIB:.2f} | {100 * size / saved:.1f}% |" for name, size in shown]
        if len(ordered) > len(shown):
            rest = sum(size for _, size in ordered[len(shown):])
            lines.append(f"| ({len(ordered) - len(shown)} more) | {rest / MIB:.2f} | {100 * rest / saved:.1f}% |")
        return "\n".join(lines)


def _meter_for(model):
    """The CuPy pool's meter for a model on a real GPU, else tracemalloc's."""
    for parameter in model.parameters():
        if type(parameter.data).__module__.startswith("cupy"):
            return _CupyMeter()
        break
    return _HostMeter()


def memory_ledger(model, forward, optimizer=None, backward=None, update=None,
                  labels: dict | None = None) -> MemoryLedger:
    """Run one training step and account for its memory (see :class:`MemoryLedger`)::

        ledger = mm.profiler.memory_ledger(model, lambda: model(idx, targets)[1], optimizer)
        print(ledger.table())

    ``forward()`` runs the forward pass and returns the loss (a Tensor); then ``backward(loss)``
    (default ``loss.backward()``; e.g. ``lambda l: scaler.scale(l).backward()``), and with an
    ``optimizer`` ``update()`` (default ``optimizer.step()``; the loss scaler's unscale, step and
    update for fp16) and ``optimizer.zero_grad()``. Run a step first so the optimizer's state
    exists (the ledger counts what exists). ``labels`` (e.g. ``{"precision": "fp16"}``) are
    added to the ledger's ``info``.

    Accounting: every array is counted once, by the buffer that owns its memory (a view counts
    against its base; an array kept by two ops counts once, for the first op that ran): the
    parameters, then the buffers, the optimizer's state and scratch, then the arrays each
    recorded op keeps for backward (walked from the loss just before backward; the parameters
    and buffers they hold are not counted again), per module path and op type; the gradients
    after backward. Measuring: on the host ``tracemalloc`` (started for the step if it is not
    tracing; NumPy reports its arrays to it) gives the live bytes at the step's start, before
    backward and at the peak; on a GPU a CuPy memory hook does (that path has not been run on
    a GPU yet). The measured peak is the accounted state at the start plus the measured peak
    above it, so the remainder is what the categories do not explain: temporaries inside ops,
    gradients of activations in flight, Python objects -- less what backward freed before the
    peak.
    """
    if not callable(getattr(model, "named_modules", None)):
        raise TypeError(f"memory_ledger: model={type(model).__name__} has no named_modules(); expected a Module")
    if not callable(forward):
        raise TypeError(f"memory_ledger: forward={forward!r} is not callable; expected a function returning the loss")
    backward = backward or (lambda loss: loss.backward())
    import gc  # noqa: PLC0415

    gc.collect()
    names = {id(module): name for name, module in model.named_modules()}
    accounts = _Accounts()
    parameters = model.parameters()
    for p in parameters:
        accounts.claim(p.data, "parameters")
    for _, array in model.named_buffers():
        accounts.claim(array, "buffers")
    if optimizer is not None:
        for state in optimizer.state.values():
            for value in state.values():
                if _is_array(value):
                    accounts.claim(value, "optimizer_state")
        for array in getattr(optimizer, "_scratch", {}).values():
            accounts.claim(array, "optimizer_scratch")
    for p in parameters:                         # gradients left from before (accumulation)
        if p.grad is not None:
            accounts.claim(p.grad, "gradients")
    at_start = sum(accounts.bytes.values())
    meter = _meter_for(model)
    with meter:
        recorder = _LedgerRecorder(model, meter, names)
        live_at_start = meter.current()
        with recorder:
            loss = forward()
        if not hasattr(loss, "grad_fn"):
            raise TypeError(f"memory_ledger: forward() returned {type(loss).__name__}; expected the loss Tensor")
        live_before_backward = meter.current()
        by_module: dict[str, int] = {}
        by_op: dict[str, int] = {}
        for fn in graph_nodes(loss):
            module = getattr(fn, "module", None)
            path = names.get(id(module)) if module is not None else fn.__dict__.get("_profile_module")
            label = _label(path)
            for array in saved_arrays(fn):
                size = accounts.claim(array, "saved_activations", label, fn.op_type())
                if size:
                    by_module[label] = by_module.get(label, 0) + size
                    by_op[fn.op_type()] = by_op.get(fn.op_type(), 0) + size
        if getattr(loss, "data", None) is not None:
            accounts.claim(loss.data, "saved_activations", ROOT_LABEL, "(loss)")
        before_backward = sum(accounts.bytes.values())
        accounts.forget("saved_activations")     # backward must be free to release them
        recorder.known = accounts
        with recorder:
            backward(loss)
        del loss
        for p in parameters:
            if p.grad is not None:
                accounts.claim(p.grad, "gradients")
        if optimizer is not None:
            (update or optimizer.step)()
            for state in optimizer.state.values():  # created by this step (a first step)
                for value in state.values():
                    if _is_array(value):
                        accounts.claim(value, "optimizer_state")
            for array in getattr(optimizer, "_scratch", {}).values():
                accounts.claim(array, "optimizer_scratch")
            optimizer.zero_grad()
        peak_increase = meter.peak() - live_at_start
    categories = {name: accounts.total(name) for name in CATEGORIES}
    categories["recomputed_activations"] = max(recorder.recomputed_bytes.values(), default=0)
    total = sum(categories.values())
    peak = at_start + peak_increase
    measured = {"meter": meter.kind, "live_at_start": live_at_start, "accounted_at_start": at_start,
                "peak_increase": peak_increase, "peak": peak, "unexplained": peak - total,
                "live_before_backward": at_start + live_before_backward - live_at_start,
                "accounted_before_backward": before_backward, "peak_during": recorder.peak_at,
                "rss_at_start": None, "rss_peak": None}
    if meter.rss_peak_kib is not None and meter.rss_start_kib is not None:
        measured["rss_at_start"], measured["rss_peak"] = meter.rss_start_kib * 1024, meter.rss_peak_kib * 1024
    info = {"device": model.device if hasattr(model, "device") else "cpu",
            "recompute": bool(getattr(model, "recompute", False)),
            "parameters": sum(int(p.size) for p in parameters)}
    info.update(labels or {})
    return MemoryLedger(categories, by_module, by_op, dict(recorder.recomputed_bytes), measured, info, recorder)
