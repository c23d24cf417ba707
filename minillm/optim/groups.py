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
    return assign_groups(trainable_parameters(named_parameters, "decay_groups"),
                         [{"weight_decay": weight_decay}, {"weight_decay": 0.0}],
                         lambda name, p: 0 if p.ndim >= 2 else 1)


def assign_groups(pairs, settings: list[dict], choose) -> list[dict]:
    """Param groups from ``(name, tensor)`` pairs: one group per dict of ``settings`` (its
    hyperparameters), each pair appended to group ``choose(name, tensor)`` (an index into
    ``settings``), with ``"params"`` and ``"names"`` in the pairs' order. Every group is returned,
    empty or not, so an optimizer's layout does not depend on the model's details."""
    groups = [{"params": [], **setting, "names": []} for setting in settings]
    for name, p in pairs:
        group = groups[choose(name, p)]
        group["params"].append(p)
        group["names"].append(name)
    return groups


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
