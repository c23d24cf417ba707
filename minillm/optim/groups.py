"""Splitting parameters into the weight-decay group and the no-decay group."""
from __future__ import annotations

from minillm.optim.optimizer import check_number
from minillm.tensor import Tensor


def decay_groups(named_parameters, weight_decay: float) -> list[dict]:
    """Two param groups: matrices and embeddings decay, vectors (biases, norm gains) do not.

    Weight decay pulls weights towards 0. That regularises the matrices of linear layers and
    embedding tables (ndim >= 2); pulling a bias or a LayerNorm/RMSNorm gain (ndim 1) towards 0
    only shifts or shrinks activations, so those are exempt (as in GPT-2/nanoGPT).

    Args:
        named_parameters: ``(name, tensor)`` pairs (``model.named_parameters()``) or a dict.
            Tensors with ``requires_grad=False`` (frozen) are left out; a tensor listed twice
            under two names (tied weights) is kept once, under its first name.
        weight_decay: the decay of the first group, >= 0.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay, "names": [...]},
        {"params": [...], "weight_decay": 0.0, "names": [...]}]``: always both groups (one may
        be empty), so the optimizer's layout does not depend on the model's details. ``names``
        lists the parameters of each group: it shows what decays, and load_state_dict checks it.
    """
    weight_decay = check_number("decay_groups", "weight_decay", weight_decay)
    decay, decay_names, no_decay, no_decay_names = [], [], [], []
    for name, p in trainable_parameters(named_parameters, "decay_groups"):
        if p.ndim >= 2:
            decay.append(p)
            decay_names.append(name)
        else:
            no_decay.append(p)
            no_decay_names.append(name)
    return [{"params": decay, "weight_decay": weight_decay, "names": decay_names},
            {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names}]


def trainable_parameters(named_parameters, owner: str):
    """The ``(name, tensor)`` pairs an optimizer's groups are made of: each checked to be a
    (str, Tensor) pair (a TypeError naming ``owner`` otherwise), frozen tensors
    (``requires_grad=False``) left out, and a tensor listed twice (tied weights) kept once, under
    its first name. ``named_parameters``: ``model.named_parameters()`` or a dict."""
    if hasattr(named_parameters, "items"):
        named_parameters = named_parameters.items()
    seen = set()
    for index, pair in enumerate(named_parameters):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise TypeError(f"{owner}: item {index} is {pair!r:.80}, expected a "
                            "(name, Tensor) pair as model.named_parameters() yields")
        name, p = pair
        if not isinstance(p, Tensor):
            raise TypeError(f"{owner}: {name!r} is a {type(p).__name__}, expected a "
                            "minillm Tensor")
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        yield name, p
