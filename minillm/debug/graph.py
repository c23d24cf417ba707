"""Export an autograd graph as Graphviz DOT text (``dot -Tpng graph.dot -o graph.png``)."""
from __future__ import annotations

from minillm.fileio import atomic_write_text
from minillm.tensor import Tensor


def _tensor_label(t: Tensor) -> str:
    name = f"{t.name}\\n" if t.name else ""
    return f"{name}{tuple(t.shape)} {t.dtype}"


def to_dot(tensor: Tensor, path: str | None = None) -> str:
    """The graph that produced ``tensor`` as DOT text; also written to ``path`` when given.

    Ops are ellipses (class name and node name), leaves are boxes (name, shape, dtype,
    whether they require grad); each edge carries the shape and dtype of the tensor it passes.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"to_dot: expected a Tensor, got {type(tensor).__name__}")
    lines = ["digraph minillm {", '  rankdir="BT";', '  node [fontname="Helvetica"];']
    ids: dict[int, str] = {}

    def node_id(obj) -> str:
        key = id(obj)
        if key not in ids:
            ids[key] = f"n{len(ids)}"
        return ids[key]

    root = node_id(tensor)
    lines.append(f'  {root} [label="output\\n{_tensor_label(tensor)}", shape=doubleoctagon];')
    if tensor.grad_fn is None:
        lines.append("}")
        return _finish(lines, path)
    lines.append(f'  {node_id(tensor.grad_fn)} -> {root};')
    stack, seen = [tensor.grad_fn], set()
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        lines.append(f'  {node_id(fn)} [label="{fn.label()}", shape=ellipse];')
        for t in fn.inputs or ():
            if t.grad_fn is not None:
                source = node_id(t.grad_fn)
                stack.append(t.grad_fn)
            else:
                source = node_id(t)
                style = "bold" if t.requires_grad else "dashed"
                lines.append(f'  {source} [label="{_tensor_label(t)}", shape=box, style={style}];')
            lines.append(f'  {source} -> {node_id(fn)} [label="{tuple(t.shape)} {t.dtype}"];')
    lines.append("}")
    return _finish(lines, path)


def _finish(lines: list[str], path: str | None) -> str:
    text = "\n".join(dict.fromkeys(lines)) + "\n"   # leaves shared by several ops appear once
    if path is not None:
        atomic_write_text(path, text)
    return text
